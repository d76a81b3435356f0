"""Where does a GPT-2 124M training step spend its time? Variants of the same step on one GPU, same run.

    PYTHONPATH=src python3 benchmarks/step_ablation.py [--variants base chunked-ce ...] [--profile]

Each variant trains the lmforge decoder for a few steps (bf16 autocast, fused AdamW, compiled) and prints
tokens/s and MFU; `--profile` prints the top CUDA kernels of the base variant.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lmforge.models import DecoderLM, get_preset


def hidden(model: DecoderLM, x: torch.Tensor) -> torch.Tensor:
    h, _ = model.embed(x, torch.arange(x.shape[1], device=x.device)[None])
    for block in model.blocks:
        h = block(h)
    return model.norm_f(h)


def chunked_ce(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, chunks: int = 4) -> torch.Tensor:
    """Cross-entropy of the output projection computed chunk by chunk, so fp32 logits never exist all at once."""
    h, y = h.reshape(-1, h.shape[-1]), y.reshape(-1)
    total = h.new_zeros((), dtype=torch.float32)
    for hc, yc in zip(h.chunk(chunks), y.chunk(chunks)):
        total = total + torch.utils.checkpoint.checkpoint(
            lambda a, b: F.cross_entropy((a @ weight.t()).float(), b, reduction="sum"), hc, yc, use_reentrant=False)
    return total / y.numel()


def run(variant: str, steps: int, warmup: int, peak: float, profile: bool) -> None:
    import torch._inductor.config as ic

    ic.coordinate_descent_tuning = variant == "cdt"
    torch.manual_seed(0)
    cfg = get_preset("gpt2-124m")
    B, T = (32 if variant == "bs32" else 16), 1024
    model = DecoderLM(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if variant == "chunked-ce":
                return chunked_ce(hidden(model, x), model.lm_head.weight, y)
            logits = model(x)
            if variant == "bf16-ce":
                return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    mode = "max-autotune-no-cudagraphs" if variant == "max-autotune" else None
    step = torch.compile(loss_fn, mode=mode)
    data = torch.randint(0, cfg.vocab_size, (steps + warmup, B, T + 1), device="cuda")
    t0 = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss = step(data[i, :, :-1], data[i, :, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    tps = steps * B * T / (time.perf_counter() - t0)
    mfu = cfg.flops_per_token(T) * tps / (peak * 1e12)
    mem = torch.cuda.max_memory_allocated() / 1e9
    print(f"{variant:14s} {tps:12,.0f} tok/s  MFU {100 * mfu:5.1f}%  peak mem {mem:5.1f} GB", flush=True)
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                loss = step(data[i, :, :-1], data[i, :, 1:])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    torch.cuda.reset_peak_memory_stats()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["base", "bf16-ce", "chunked-ce", "cdt", "bs32"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    peak = 2 * 8192**3 * 20 / (time.perf_counter() - t) / 1e12
    print(f"peak {peak:.0f} TFLOP/s")
    for v in args.variants:
        run(v, args.steps, 8, peak, args.profile and v == "base")


if __name__ == "__main__":
    main()
