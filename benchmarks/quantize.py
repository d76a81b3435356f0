"""Weight-only int8 / int4 against fp32 lmforge, measured in one run: size on disk, perplexity on the quickstart
validation split, batch-1 greedy decode speed.

Two parts:
1. quality: the quickstart's data (the built-in corpus, a 4,096-token byte-level BPE) and a `tiny` GPT trained on
   it here for --steps (or --checkpoint/--data of an earlier `lmforge quickstart`), quantised to int8 and int4,
   each saved and reloaded through `lmforge.checkpoints.load_model`, scored on the whole val split;
2. speed at the GPT-2 124M shape (or --presets) with the quickstart's vocabulary (12 x 768, vocab 4,096: 89M
   parameters), random weights (speed does not depend on them): decode tokens/s (wall clock and per CPU-second) and
   bytes, fp32 vs int8 vs int4, each quantised model on the CPU kernels and on the portable path, interleaved.

    PYTHONPATH=src python benchmarks/quantize.py                      # trains its own tiny model (~2 minutes)
    PYTHONPATH=src python benchmarks/quantize.py --checkpoint runs/quickstart/train --data runs/quickstart/data
    PYTHONPATH=src python benchmarks/quantize.py --skip-quality --presets tiny small gpt2-124m --batches 1 8
    PYTHONPATH=src python benchmarks/quantize.py --skip-quality --batches 1 --prompt-len 64 --new-tokens 1  # prefill

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
from lmforge.compress.quantize import (
    QuantizationSpec,
    _QuantizedLinear,
    quantize_model,
    quantized_bytes,
    save_quantized,
)
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


def portable(model: torch.nn.Module) -> torch.nn.Module:
    """The same quantised model on the portable path (cast / dequantise, then F.linear), for the A/B."""
    for m in model.modules():
        if isinstance(m, _QuantizedLinear):
            m.exact_output = True
    return model


def decode_rate(model: torch.nn.Module, new_tokens: int, batch: int, prompt_len: int) -> tuple[float, float]:
    """(new tokens/s wall clock, new tokens per CPU-second of this process) of one greedy run with the KV cache:
    `batch` prompts of `prompt_len` tokens (the prefill) then `new_tokens` decode steps each."""
    from lmforge.infer.generate import GenerationConfig, generate_ids

    prompts = [[3 + i] * prompt_len for i in range(batch)]
    cfg = GenerationConfig(temperature=0.0, max_new_tokens=new_tokens)
    t0, c0 = time.perf_counter(), time.process_time()
    generate_ids(model, prompts, cfg)
    return batch * new_tokens / (time.perf_counter() - t0), batch * new_tokens / (time.process_time() - c0)


def speed(preset: str, new_tokens: int, batches: list[int], prompt_len: int, rounds: int) -> list[dict]:
    """fp32, int8 and int4 (kernel and portable paths) of one preset with the quickstart's vocabulary, random
    weights (speed does not depend on them), timed in interleaved rounds (best of `rounds` each)."""
    cfg = get_preset(preset)
    cfg.vocab_size, cfg.max_seq_len = 4096, max(256, prompt_len + new_tokens)
    torch.manual_seed(0)
    models = {"fp32": build_model(cfg).eval()}
    for name, bits, group in VARIANTS[:2]:
        q = copy.deepcopy(models["fp32"])
        quantize_model(q, QuantizationSpec(bits=bits, group_size=group))
        models[name] = q
        models[f"{name} portable"] = portable(copy.deepcopy(q))
    rows = []
    for batch in batches:
        for m in models.values():
            decode_rate(m, 2, batch, prompt_len)  # warm-up (and the int4 kernel layout)
        best = {name: (0.0, 0.0) for name in models}
        for _ in range(rounds):
            for name, m in models.items():
                wall, cpu = decode_rate(m, new_tokens, batch, prompt_len)
                best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
        for name, (wall, cpu) in best.items():
            rows.append({"model": f"{name}, batch {batch}", "bytes": quantized_bytes(models[name]), "tok_s": wall,
                         "cpu_tok_s": cpu})
    return rows


def table(rows: list[dict], title: str) -> str:
    base = rows[0]
    lines = [f"\n{title}",
             "| model | size on disk | vs fp32 | perplexity | Δ perplexity | bits/byte | tok/s | vs fp32 | tok/CPU-s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = next((b for b in rows if b["model"].startswith("fp32") and b["model"].split(",")[1:] ==
                    r["model"].split(",")[1:]), base)  # fp32 at the same batch
        ppl = f"{r['ppl']:.2f}" if "ppl" in r else "—"
        delta = f"{(r['ppl'] / base['ppl'] - 1) * 100:+.2f}%" if "ppl" in r else "—"
        bpb = f"{r['bpb']:.4f}" if r.get("bpb") else "—"
        lines.append(f"| {r['model']} | {r['bytes'] / 2**20:.2f} MiB | {base['bytes'] / r['bytes']:.2f}× smaller | "
                     f"{ppl} | {delta} | {bpb} | {r['tok_s']:.1f} | {r['tok_s'] / ref['tok_s']:.2f}× | "
                     f"{r.get('cpu_tok_s', 0):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a quickstart checkpoint or run directory (default: train one here)")
    ap.add_argument("--data", help="its prepared data (default: prepare the quickstart's here)")
    ap.add_argument("--steps", type=int, default=300, help="training steps when no --checkpoint is given")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-124m", action="store_true", help="leave out part 2")
    ap.add_argument("--presets", nargs="+", default=["gpt2-124m"], help="part 2: model shapes to time")
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="part 2: batch sizes to time")
    ap.add_argument("--prompt-len", type=int, default=1, help="part 2: prompt tokens (the prefill) per sequence")
    ap.add_argument("--rounds", type=int, default=2, help="part 2: interleaved timing rounds (best of)")
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
        for preset in args.presets:
            print(table(speed(preset, args.new_tokens, args.batches, args.prompt_len, args.rounds),
                        f"`{preset}` shape, vocab 4,096, random weights: greedy, {args.new_tokens} new tokens after "
                        f"{args.prompt_len}-token prompts; portable = cast / dequantise then F.linear, interleaved, "
                        f"best of {args.rounds}"), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
