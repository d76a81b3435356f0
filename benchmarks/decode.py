"""Decode speed: lmforge's inference engine against Hugging Face `transformers` `generate` in the same run.

Same weights on both sides: a random-init lmforge model (seed 0, vocabulary 4,096) is saved and exported with
`lmforge export` (`interop.export_hf`), and `transformers` loads the export. Greedy, fp32, the same threads.
Suites, per preset:

- batch 1: a 16-token prompt, 128 new tokens; again with n-gram prompt lookup on both sides (speculative
  decoding without a draft: lmforge's `prompt_lookup=True`, HF's `prompt_lookup_num_tokens=4`), same output;
- static batch 8: eight 16-token prompts, 128 new tokens each;
- 32 mixed requests (prompts of 4-64 tokens, 16-128 new tokens each, fixed by a seed) through the continuous
  engine (32 slots, so no request waits; each retires at its own length), against one HF padded batch
  `generate` of the same 32 prompts (left padding, max_new_tokens = the longest request; only the tokens each
  request asked for count as useful).

Each measurement is the best of `--repeats` runs, the two sides alternating, so a burst of other work on a shared
machine hurts both alike. The bandwidth limit is weight bytes / a measured memory-copy bandwidth: the batch-1
speed no implementation can beat when every token reads every weight once.

    PYTHONPATH=src python3 benchmarks/decode.py                          # tiny, small
    PYTHONPATH=src python3 benchmarks/decode.py --presets tiny small gpt2-124m --repeats 2
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.infer.engine import Engine, SamplingParams
from lmforge.interop import export_hf
from lmforge.models import DecoderLM, get_preset
from lmforge.models.io import save_model

VOCAB, PROMPT, NEW = 4096, 16, 128


def copy_bandwidth(n_bytes: int = 256 * 2**20, iters: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (read + write counted)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * n_bytes / best


def best_of(repeats: int, runs: dict[str, Callable[[], object]]) -> dict[str, tuple[float, object]]:
    """{name: (best seconds, last result)}, the runs interleaved."""
    out: dict[str, tuple[float, object]] = {name: (float("inf"), None) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            result = fn()
            dt = time.perf_counter() - t
            out[name] = (min(out[name][0], dt), result)
    return out


def hf_generate(hf, prompts: list[list[int]], new: int, lookup: bool = False) -> list[list[int]]:
    """Greedy HF generate of left-padded prompts (pad id 0, masked), exactly `new` tokens each."""
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                          eos_token_id=None, pad_token_id=0, **({"prompt_lookup_num_tokens": 4} if lookup else {}))
    return out[:, longest:].tolist()


def lmforge_generate(model: DecoderLM, prompts: list[list[int]], news: list[int], slots: int,
                     lookup: bool = False) -> list[list[int]]:
    engine = Engine(model, None, max_batch=slots, stop_token_ids=[], cache_len=max(map(len, prompts)) + max(news),
                    prompt_lookup=lookup, num_speculative=4)
    try:
        done = engine.generate(prompts, [SamplingParams(max_tokens=n, temperature=0.0) for n in news])
    finally:
        engine.close()
    return [c.token_ids for c in done]


def bench_preset(name: str, repeats: int, bandwidth: float, workdir: Path, only: list[str]) -> list[list[str]]:
    import transformers

    torch.manual_seed(0)
    cfg = get_preset(name)
    cfg.vocab_size = VOCAB
    model = DecoderLM(cfg).eval()
    hf_dir = export_hf(save_model(workdir / name / "ckpt", model, cfg, None), workdir / name / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    limit = bandwidth / weight_bytes
    rng = random.Random(0)
    one = [[rng.randrange(3, VOCAB) for _ in range(PROMPT)]]
    eight = [[rng.randrange(3, VOCAB) for _ in range(PROMPT)] for _ in range(8)]
    mixed = [[rng.randrange(3, VOCAB) for _ in range(rng.randint(4, 64))] for _ in range(32)]
    mixed_new = [rng.randint(16, NEW) for _ in mixed]
    rows = []
    suites = (("batch 1", one, [NEW], 1, False), ("batch 1, prompt lookup (both sides)", one, [NEW], 1, True),
              ("static batch 8", eight, [NEW] * 8, 8, False), ("32 mixed requests", mixed, mixed_new, 32, False))
    for suite, prompts, news, slots, lookup in suites:
        if only and not any(suite.startswith(o) for o in only):
            continue
        lmforge_generate(model, prompts[:1], [4], 1)  # warm-up
        hf_generate(hf, prompts[:1], 4)
        got = best_of(repeats, {
            "lmforge": lambda p=prompts, n=news, s=slots, k=lookup: lmforge_generate(model, p, n, s, k),
            "hf": lambda p=prompts, n=news, k=lookup: hf_generate(hf, p, max(n), k),
        })
        useful = sum(news)
        ours, theirs = useful / got["lmforge"][0], useful / got["hf"][0]
        same = sum(a == b[:len(a)] for a, b in zip(got["lmforge"][1], got["hf"][1]))
        rows.append([f"`{name}` ({params / 1e6:.1f}M)", suite, f"{ours:,.0f}", f"{theirs:,.0f}",
                     f"{ours / theirs:.2f}x", f"{same}/{len(prompts)}",
                     f"{limit:,.0f}" if suite == "batch 1" else ""])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--suites", nargs="*", default=[], help="run only the suites whose names start so "
                                                            "(e.g. 'batch 1, prompt')")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    bandwidth = copy_bandwidth()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    header = ["model", "suite", "lmforge tok/s", "HF generate tok/s", "vs HF", "same greedy tokens",
              "bandwidth limit tok/s"]
    print(" | ".join(header))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            rows += bench_preset(name, args.repeats, bandwidth, Path(tmp), args.suites)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
