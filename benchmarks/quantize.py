"""Weight-only int8 / int4 against fp32 lmforge, measured in one run: size on disk, perplexity on the quickstart
validation split, batch-1 greedy decode speed.

Two parts:
1. quality: the quickstart's data (the built-in corpus, a 4,096-token byte-level BPE) and a `tiny` GPT trained on
   it here for --steps (or --checkpoint/--data of an earlier `lmforge quickstart`), quantised to int8 and int4,
   each saved and reloaded through `lmforge.checkpoints.load_model`, scored on the whole val split;
2. speed at the GPT-2 124M shape with the quickstart's vocabulary (12 x 768, vocab 4,096: 89M parameters), random
   weights (speed does not depend on them): decode tokens/s and bytes, fp32 vs int8 vs int4.

    PYTHONPATH=src python benchmarks/quantize.py                      # trains its own tiny model (~2 minutes)
    PYTHONPATH=src python benchmarks/quantize.py --checkpoint runs/quickstart/train --data runs/quickstart/data

The peer is fp32 lmforge on the same weights in the same process. llama.cpp is not measured here: its Python
binding compiles from source (see docs/compression.md for what ran).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

from lmforge.checkpoints import load_model, resolve_checkpoint
from lmforge.compress.quantize import QuantizationSpec, quantize_model, quantized_bytes, save_quantized
from lmforge.eval.perplexity import evaluate_checkpoint
from lmforge.models import build_model, get_preset
from lmforge.models.io import WEIGHTS
from lmforge.recipes.compress import decode_tokens_per_second

VARIANTS = (("int8", 8, None), ("int4 g64", 4, 64), ("int4 g32", 4, 32))


def prepare_and_train(work: Path, steps: int) -> tuple[Path, Path]:
    from lmforge.config import resolve
    from lmforge.data.prepare import PrepareConfig, prepare
    from lmforge.train import TrainConfig, train

    data = prepare(resolve(PrepareConfig, inputs=["builtin:python-docs"], out=str(work / "data"),
                           tokenizer__vocab_size=4096)).out
    run = train(resolve(TrainConfig, data=str(data), out=str(work / "train"), preset="tiny", steps=steps,
                        batch_size=16, seq_len=128, optim__lr=3e-3, eval_every=0, eval_batches=20,
                        checkpoint_every=steps, keep_last=1, log_every=max(steps // 5, 1), tensorboard=False,
                        device="cpu"))
    return run.best_checkpoint or run.checkpoint, data


def quality(checkpoint: Path, data: Path, work: Path, new_tokens: int) -> list[dict]:
    ckpt = resolve_checkpoint(checkpoint)
    model, cfg = load_model(ckpt)
    base = evaluate_checkpoint(ckpt, data).score
    rows = [{"model": "fp32", "bytes": (ckpt / WEIGHTS).stat().st_size, "ppl": base.ppl, "bpb": base.bpb,
             "tok_s": decode_tokens_per_second(model, new_tokens, [3])}]
    for name, bits, group in VARIANTS:
        q = copy.deepcopy(model)
        spec = quantize_model(q, QuantizationSpec(bits=bits, group_size=group))
        out = save_quantized(work / name.replace(" ", "_"), q, cfg, spec, ckpt)
        score = evaluate_checkpoint(out, data).score  # through the one loader, as every verb reads it
        rows.append({"model": name, "bytes": (out / WEIGHTS).stat().st_size, "ppl": score.ppl, "bpb": score.bpb,
                     "tok_s": decode_tokens_per_second(load_model(out)[0], new_tokens, [3])})
    return rows


def speed_124m(new_tokens: int) -> list[dict]:
    cfg = get_preset("gpt2-124m")
    cfg.vocab_size, cfg.max_seq_len = 4096, 256
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rows = [{"model": "fp32", "bytes": quantized_bytes(model), "tok_s": decode_tokens_per_second(model, new_tokens)}]
    for name, bits, group in VARIANTS[:2]:
        q = copy.deepcopy(model)
        quantize_model(q, QuantizationSpec(bits=bits, group_size=group))
        rows.append({"model": name, "bytes": quantized_bytes(q), "tok_s": decode_tokens_per_second(q, new_tokens)})
        del q
    return rows


def table(rows: list[dict], title: str) -> str:
    base = rows[0]
    lines = [f"\n{title}",
             "| model | size on disk | vs fp32 | perplexity | Δ perplexity | bits/byte | tok/s | vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ppl = f"{r['ppl']:.2f}" if "ppl" in r else "—"
        delta = f"{(r['ppl'] / base['ppl'] - 1) * 100:+.2f}%" if "ppl" in r else "—"
        bpb = f"{r['bpb']:.4f}" if r.get("bpb") else "—"
        lines.append(f"| {r['model']} | {r['bytes'] / 2**20:.2f} MiB | {base['bytes'] / r['bytes']:.2f}× smaller | "
                     f"{ppl} | {delta} | {bpb} | {r['tok_s']:.1f} | {r['tok_s'] / base['tok_s']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a quickstart checkpoint or run directory (default: train one here)")
    ap.add_argument("--data", help="its prepared data (default: prepare the quickstart's here)")
    ap.add_argument("--steps", type=int, default=300, help="training steps when no --checkpoint is given")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-124m", action="store_true", help="leave out part 2")
    ap.add_argument("--skip-quality", action="store_true", help="leave out part 1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="lmforge-quantize-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_quality:
            if args.checkpoint:
                ckpt, data = Path(args.checkpoint), Path(args.data)
            else:
                t0 = time.perf_counter()
                ckpt, data = prepare_and_train(work, args.steps)
                print(f"prepared and trained in {time.perf_counter() - t0:.0f} s")
            print(table(quality(ckpt, data, work, args.new_tokens),
                        f"quickstart data, `tiny` GPT ({ckpt}), whole val split; decode: batch 1, greedy, "
                        f"{args.new_tokens} new tokens"), flush=True)
    if not args.skip_124m:
        print(table(speed_124m(args.new_tokens), "GPT-2 124M shape, vocab 4,096 (89M parameters), random weights: "
                                                 f"batch 1, greedy, {args.new_tokens} new tokens"), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
