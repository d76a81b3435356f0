"""CPU time of one training step of the `tiny` decoder, on one thread: a before/after check for a code change.

It counts process CPU time (`time.process_time`), not wall time, so other jobs on a shared machine barely move
it. Compare two commits in the same session by running it alternately from each checkout:

    for i in 1 2 3 4; do for tree in ../before .; do
        (cd $tree && PYTHONPATH=src python3 benchmarks/step_cpu_time.py); done; done
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lmforge.models import DecoderLM, get_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = get_preset("tiny")
    cfg.vocab_size = args.vocab
    torch.manual_seed(0)
    model = DecoderLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))

    def step() -> None:
        logits = model(x[:, :-1])
        F.cross_entropy(logits.view(-1, logits.size(-1)), x[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    t = time.process_time()
    for _ in range(args.steps):
        step()
    print(f"tiny B{args.batch} x T{args.seq}, 1 thread: {(time.process_time() - t) / args.steps * 1000:.1f} ms CPU "
          "per training step")


if __name__ == "__main__":
    main()
