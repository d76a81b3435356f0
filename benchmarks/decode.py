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

- precision (batch 1): the batch-1 suite again, by weight precision, against llama.cpp (`llama-cpp-python`) on the
  same weights: lmforge fp32, int8 (per channel) and int4 (groups of 64) (`compress.quantize.quantize_model` on a
  copy of the model, the size that of its `save_quantized` checkpoint), and llama.cpp f32 / q8_0 / q4_0 (lmforge's
  own GGUF export of the checkpoint, `interop.gguf.export_gguf`, the size that of the .gguf file), token ids in and
  out, `n_threads` = torch's threads. llama.cpp serves one sequence, so it has no batched rows. The same greedy
  tokens are counted position by position against lmforge fp32. Without `llama_cpp` importable its rows are left
  out with a note. Perplexity of the quantised models is `benchmarks/quantize.py`'s.

Each measurement is the best of `--repeats` runs, the sides alternating, so a burst of other work on a shared
machine hurts all alike. The bandwidth limit is weight bytes / a measured memory-copy bandwidth: the batch-1
speed no implementation can beat when every token reads every weight once.

    PYTHONPATH=src python3 benchmarks/decode.py                          # tiny, small
    PYTHONPATH=src python3 benchmarks/decode.py --presets tiny small gpt2-124m --repeats 2
    PYTHONPATH=src python3 benchmarks/decode.py --presets gpt2-124m --suites precision \
        --precisions lmforge-int8 llama.cpp-q8_0                        # int8 against llama.cpp q8_0 only
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import random
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import torch

from lmforge.compress.quantize import QuantizationSpec, quantize_model, save_quantized
from lmforge.infer.engine import Engine, SamplingParams
from lmforge.interop import export_hf
from lmforge.interop.gguf import export_gguf
from lmforge.models import DecoderLM, get_preset
from lmforge.models.io import WEIGHTS, save_model

VOCAB, PROMPT, NEW = 4096, 16, 128
# Batch-1 rows by precision: lmforge's (its quantisation, None for fp32), llama.cpp's (the GGUF type), paired by bits
LMFORGE_PRECISIONS = {"lmforge-fp32": None, "lmforge-int8": QuantizationSpec(bits=8),
                      "lmforge-int4": QuantizationSpec(bits=4, group_size=64)}
LLAMACPP_PRECISIONS = {"llama.cpp-f32": "f32", "llama.cpp-q8_0": "q8_0", "llama.cpp-q4_0": "q4_0"}
PEER_OF = {"lmforge-fp32": "llama.cpp-f32", "lmforge-int8": "llama.cpp-q8_0", "lmforge-int4": "llama.cpp-q4_0"}
PRECISION_SUITE = "precision (batch 1)"


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


def llamacpp_generate(llm, prompt: list[int], new: int) -> list[list[int]]:
    """Greedy llama.cpp decode of token ids, exactly `new` tokens (no EOS stop, as the lmforge side)."""
    llm.reset()  # no reuse of the previous run's prompt cache: every run prefills its prompt
    out: list[int] = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(t)
        if len(out) == new:
            break
    return [out]


def byte_level_tokenizer(workdir: Path) -> Path:
    """A 4,096-token byte-level BPE of the built-in corpus: GGUF export needs a tokenizer llama.cpp reads (the
    benchmark feeds token ids, so which one does not matter to speed)."""
    from lmforge.data.builtin import python_docs
    from lmforge.data.tokenizer import TokenizerOptions, save_tokenizer, train_tokenizer

    out = workdir / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        save_tokenizer(train_tokenizer(islice(python_docs(), 800), TokenizerOptions(kind="bpe", vocab_size=VOCAB)),
                       out)
    return out


def precision_rows(name: str, model: DecoderLM, ckpt: Path, prompt: list[int], repeats: int, bandwidth: float,
                   workdir: Path, precisions: list[str], threads: int) -> list[list[str]]:
    """Batch-1 speed and size by weight precision: lmforge fp32 / int8 / int4 against llama.cpp f32 / q8_0 / q4_0
    on the same weights, each timed in the same interleaved rounds."""
    runs: dict[str, Callable[[], list[list[int]]]] = {}
    sizes: dict[str, int] = {}
    keep: list[object] = []
    for row, spec in LMFORGE_PRECISIONS.items():
        if row != "lmforge-fp32" and row not in precisions:
            continue  # fp32 always runs: the reference of the greedy-token and speed ratios
        if spec is None:
            m, sizes[row] = model, (ckpt / WEIGHTS).stat().st_size
        else:
            m = copy.deepcopy(model)
            spec = quantize_model(m, QuantizationSpec(bits=spec.bits, group_size=spec.group_size))
            sizes[row] = (save_quantized(workdir / row, m, m.cfg, spec) / WEIGHTS).stat().st_size
        lmforge_generate(m, [prompt], [4], 1)  # warm-up
        runs[row] = lambda m=m: lmforge_generate(m, [prompt], [NEW], 1)
    wanted = [row for row in LLAMACPP_PRECISIONS if row in precisions]
    if wanted and importlib.util.find_spec("llama_cpp") is None:
        print(f"note: llama_cpp is not importable, so the {', '.join(wanted)} rows are left out "
              f"(pip install llama-cpp-python; it compiles llama.cpp, ~10 minutes on 2 cores)", flush=True)
        wanted = []
    for row in wanted:
        from llama_cpp import Llama

        path = export_gguf(ckpt, workdir / f"{name}-{LLAMACPP_PRECISIONS[row]}.gguf", LLAMACPP_PRECISIONS[row])
        sizes[row] = path.stat().st_size
        llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=model.cfg.max_seq_len,
                    verbose=False)
        keep.append(llm)
        llamacpp_generate(llm, prompt, 4)  # warm-up
        runs[row] = lambda llm=llm: llamacpp_generate(llm, prompt, NEW)
    got = best_of(repeats, runs)
    reference = got["lmforge-fp32"][1][0]
    speed = {row: NEW / seconds for row, (seconds, _) in got.items()}
    rows = []
    for row, (_, result) in got.items():
        if row not in precisions:
            continue
        same = sum(a == b for a, b in zip(result[0], reference))
        peer = PEER_OF.get(row)
        rows.append([f"`{name}`", row, f"{sizes[row] / 2**20:,.1f} MiB", f"{speed[row]:,.0f}",
                     f"{speed[row] / speed['lmforge-fp32']:.2f}x",
                     f"{speed[row] / speed[peer]:.2f}x" if peer in speed else "", f"{same}/{NEW}",
                     f"{bandwidth / sizes[row]:,.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def bench_preset(name: str, repeats: int, bandwidth: float, workdir: Path, only: list[str],
                 precisions: list[str], threads: int, precision_repeats: int
                 ) -> tuple[list[list[str]], list[list[str]]]:
    import transformers

    torch.manual_seed(0)
    cfg = get_preset(name)
    cfg.vocab_size = VOCAB
    model = DecoderLM(cfg).eval()
    ckpt = save_model(workdir / name / "ckpt", model, cfg, byte_level_tokenizer(workdir))
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
    selected = [s for s in suites if not only or any(s[0].startswith(o) for o in only)]
    hf = None
    if selected:  # transformers loads the export only for the suites that run it
        hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ckpt, workdir / name / "hf"),
                                                               dtype=torch.float32).eval()
    for suite, prompts, news, slots, lookup in selected:
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
    precision = []
    if not only or any(PRECISION_SUITE.startswith(o) for o in only):
        hf = None  # its copy of the weights goes before the quantised copies and llama.cpp's
        precision = precision_rows(name, model, ckpt, one[0], precision_repeats, bandwidth, workdir / name,
                                   precisions, threads)
    return rows, precision


def markdown(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision-repeats", type=int, default=2,
                    help=f"repeats of the '{PRECISION_SUITE}' suite (six engines: kept short by default)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--suites", nargs="*", default=[], help="run only the suites whose names start so "
                                                            f"(e.g. 'batch 1, prompt', '{PRECISION_SUITE}')")
    choices = [*LMFORGE_PRECISIONS, *LLAMACPP_PRECISIONS]
    ap.add_argument("--precisions", nargs="+", default=choices, choices=choices,
                    help=f"rows of the '{PRECISION_SUITE}' suite (lmforge-fp32 always runs, as the reference)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    bandwidth = copy_bandwidth()
    peer = "not importable"
    if importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        peer = llama_cpp.__version__
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, llama-cpp-python {peer}, "
          f"{torch.get_num_threads()} threads, copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"load average {os.getloadavg()[0]:.1f}")
    header = ["model", "suite", "lmforge tok/s", "HF generate tok/s", "vs HF", "same greedy tokens",
              "bandwidth limit tok/s"]
    precision_header = ["model", "weights", "size on disk", "tok/s", "vs lmforge fp32", "vs llama.cpp same bits",
                        "same greedy tokens as lmforge fp32", "bandwidth limit tok/s"]
    print(" | ".join(header))
    rows, precision = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            suite_rows, by_precision = bench_preset(name, args.repeats, bandwidth, Path(tmp), args.suites,
                                                         args.precisions, torch.get_num_threads(),
                                                         args.precision_repeats)
            rows += suite_rows
            precision += by_precision
    print(f"\n{time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f} at the end\n")
    if rows:
        markdown(header, rows)
    if precision:
        print(f"\n{PRECISION_SUITE}: {PROMPT}-token prompt, {NEW} new tokens, greedy")
        markdown(precision_header, precision)


if __name__ == "__main__":
    main()
