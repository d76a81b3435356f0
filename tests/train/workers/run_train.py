"""`lmforge train ARGS...` in a process the resume tests kill with SIGKILL.

    python run_train.py --pause-at-step K ARGS...   # after logging step K: print "paused" and hang (to be killed)
    python run_train.py --die-in-save K ARGS...     # the K-th step checkpoint's train_state.pt is half written,
                                                    # then the process SIGKILLs itself (mid-save)

The hooks only decide *when* the process dies; everything else is the real command line, loop and checkpointer.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

from lmforge.cli.main import main
from lmforge.train import logging as train_logging


def pause_after(step: int) -> None:
    log_train = train_logging.RunLogger.train

    def train(self, record, busy_s):
        log_train(self, record, busy_s)
        if record["step"] >= step:
            print("paused", flush=True)
            time.sleep(600)  # the test kills us long before

    train_logging.RunLogger.train = train


def die_in_save(nth: int) -> None:
    real_save, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] < nth:
            return real_save(obj, f, *args, **kwargs)
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # keep half the file, as a kill during the write would
            fh.truncate(os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


if __name__ == "__main__":
    mode, value, *argv = sys.argv[1:]
    {"--pause-at-step": pause_after, "--die-in-save": die_in_save}[mode](int(value))
    sys.exit(main(argv))
