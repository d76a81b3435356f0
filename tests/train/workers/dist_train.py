"""`lmforge train ARGS...` as one rank of a torchrun job, for the distributed trainer tests.

    torchrun --nproc_per_node 2 dist_train.py --die RANK STEP ARGS...   # RANK SIGKILLs itself as step STEP starts

Before it dies, the rank writes the time to `$LMFORGE_TEST_DIED`, so the test can tell how long the job took to
fail after it. The hook only decides *when* the rank dies; everything else is the real command line and loop.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from lmforge.cli.main import main
from lmforge.train import trainer


def die_at(rank: int, step: int) -> None:
    real_step, calls = trainer._train_step, [0]

    def train_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step and int(os.environ["RANK"]) == rank:
            Path(os.environ["LMFORGE_TEST_DIED"]).write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)  # as a crash or an out-of-memory kill would: no clean-up at all
        return real_step(*args, **kwargs)

    trainer._train_step = train_step


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--die"]:
        die_at(int(args[1]), int(args[2]))
        args = args[3:]
    sys.exit(main(args))
