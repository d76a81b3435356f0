"""CPU time of a training step with the plain head + cross-entropy against the chunked head loss, beside
`transformers`' GPT-2, interleaved in one process on one thread (process CPU time: other jobs barely move it).

Three sides, the harness of `benchmarks/train_throughput.py` (AdamW, grad-norm clipping, float32 loss):
`plain` is lmforge's `DecoderLM` giving logits to `F.cross_entropy`; `chunked` is the same model (same weights)
asked for its loss (`model(x, targets=y)`, `lmforge.models.lm_loss`); `hf` is `GPT2LMHeadModel` (sdpa) with the
plain loss. The sides take turns, a few steps each, for `--rounds` rounds; the median per-step time is reported.

    PYTHONPATH=src python3 benchmarks/head_loss_cpu.py                      # the three shapes
    PYTHONPATH=src python3 benchmarks/head_loss_cpu.py --shapes 4x256-T256-V8192 --rounds 3 --sides plain chunked
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from lmforge.models import DecoderLM, get_preset
from train_throughput import hf_gpt2

# layers x width, sequence, vocabulary, batch: nanoGPT's README CPU run (char vocab), the tiny preset at 8k BPE,
# nanoGPT's shakespeare_char model (6 x 384, char vocab).
SHAPES = {"4x128-T64-V65": (4, 128, 64, 65, 12), "4x256-T256-V8192": (4, 256, 256, 8192, 8),
          "6x384-T256-V65": (6, 384, 256, 65, 8)}


def step_fn(side: str, model: torch.nn.Module) -> Callable[[torch.Tensor], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(xy: torch.Tensor) -> None:
        x, y = xy[:, :-1], xy[:, 1:]
        if side == "chunked":
            loss_sum, count = model(x, targets=y)
            loss = loss_sum / count
        else:
            logits = model(x) if side == "plain" else model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(shape: str, sides: list[str], rounds: int, steps: int) -> dict[str, float]:
    n_layer, d_model, seq, vocab, batch = SHAPES[shape]
    cfg = get_preset("tiny")
    cfg.n_layer, cfg.d_model, cfg.vocab_size, cfg.max_seq_len, cfg.dropout = n_layer, d_model, vocab, seq, 0.0
    cfg.n_head = cfg.n_kv_head = d_model // 64
    cfg.d_ff = 4 * d_model  # as GPT2Config's default n_inner
    torch.manual_seed(0)
    models = {"plain": DecoderLM(cfg), "hf": hf_gpt2(cfg)}
    models["chunked"] = DecoderLM(cfg)
    models["chunked"].load_state_dict(models["plain"].state_dict())
    steps_of = {s: step_fn(s, models[s].train()) for s in sides}
    data = torch.randint(0, vocab, (steps, batch, seq + 1), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(rounds + 1):  # round 0 warms up
        for s in sides:
            t = time.process_time()
            for i in range(steps):
                steps_of[s](data[i])
            if r:
                times[s].append((time.process_time() - t) / steps * 1000)
    return {s: statistics.median(v) for s, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--sides", nargs="+", default=["plain", "chunked", "hf"], choices=["plain", "chunked", "hf"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per side per round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, ms of process CPU time per training step (median of "
          f"{args.rounds} rounds x {args.steps} steps)")
    print(f"{'shape':18s} " + " ".join(f"{s:>9s}" for s in args.sides) + "  ratios vs hf")
    for shape in args.shapes:
        ms = measure(shape, args.sides, args.rounds, args.steps)
        ratios = "  ".join(f"{s} {ms['hf'] / ms[s]:.2f}x" for s in args.sides if s != "hf" and "hf" in ms)
        print(f"{shape:18s} " + " ".join(f"{ms[s]:9.1f}" for s in args.sides) + f"  {ratios}", flush=True)


if __name__ == "__main__":
    main()
