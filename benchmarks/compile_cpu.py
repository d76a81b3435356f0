"""Does `torch.compile` pay on the CPU within a short budget? Eager against compiled training steps of the fast
recipe's model, in process CPU time on one thread (other jobs on a shared machine barely move it), compile time
counted: the first compiled steps pay for it.

    PYTHONPATH=src python3 benchmarks/compile_cpu.py                     # quickstart shape (BPE 4,096, 16 x 128)
    PYTHONPATH=src python3 benchmarks/compile_cpu.py --vocab 65 --seq 256  # Tiny Shakespeare by character
    PYTHONPATH=src python3 benchmarks/compile_cpu.py --head-loss plain     # logits + F.cross_entropy instead

It prints the CPU seconds of the compiled run's first 3 steps (compilation), the steady step times of both, and
the budget past which compiling pays: compile_s / (1 - compiled_step / eager_step) seconds of eager training.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from lmforge.config import resolve
from lmforge.models import DecoderLM, ModelConfig
from lmforge.train.recipe import load_recipe


def fast_model(vocab: int) -> DecoderLM:
    from lmforge.models.config import get_preset

    base = get_preset(load_recipe("fast").get("preset", "tiny")).to_dict()
    model = {**base, **load_recipe("fast")["model"], "vocab_size": vocab}
    return DecoderLM(resolve(ModelConfig, **model))


def steps(model: torch.nn.Module, step_fn, n: int, batch: int, seq: int, vocab: int) -> list[float]:
    times = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        t = time.process_time()
        step_fn(x[:, :-1], x[:, 1:])
        times.append(time.process_time() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--head-loss", choices=["model", "plain"], default="model",
                    help="the model's own loss (the trainer's; chunked from vocab 2,048) or logits + cross-entropy")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = fast_model(args.vocab).train()
        fwd = torch.compile(model) if mode == "compiled" else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(x, y, fwd=fwd, opt=opt):
            if args.head_loss == "model":
                loss_sum, count = fwd(x, targets=y)
                loss = loss_sum / count
            else:
                loss = F.cross_entropy(fwd(x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = steps(model, step, args.steps + 3, args.batch, args.seq, args.vocab)
        steady = sorted(t[3:])[len(t[3:]) // 2]
        out[mode] = {"first_3_s": round(sum(t[:3]), 2), "median_step_s": round(steady, 4)}
    eager, comp = out["eager"]["median_step_s"], out["compiled"]["median_step_s"]
    compile_s = out["compiled"]["first_3_s"] - 3 * comp
    gain = 1 - comp / eager
    out["speedup"] = round(eager / comp, 3)
    out["compile_s"] = round(compile_s, 1)
    out["pays_after_s"] = round(compile_s / gain, 1) if gain > 0 else None
    print(json.dumps({**vars(args), "torch": torch.__version__, **out}))


if __name__ == "__main__":
    main()
