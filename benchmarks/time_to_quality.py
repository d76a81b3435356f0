"""Time to quality: the validation loss a training recipe reaches in a wall-clock budget, on this machine.

For each corpus, recipe and budget (30 s, 60 s, 110 s by default) one run is sized to the budget the way
`lmforge quickstart` sizes its own: a 16-step probe of the same configuration measures tokens/s here, and the run
gets the steps that fit (so its schedule ends inside the budget, as a user's would: a 30-s run is not the first
30 s of a 110-s one, whose learning rate would still be high). One probe per row (and per compile setting) sizes
all its budgets. What is reported is the run's final validation loss, on the whole val split (the same tokens for
every row, in windows of the row's own training length; the splits are small: 49,665 characters, 27,136 tokens),
and the wall time `train()` actually took, model build, compilation, evaluation and checkpoint included. All
rows of a table come from the same invocation, the same prepared data and split.

Corpora: Tiny Shakespeare by character (`builtin:tinyshakespeare`, val loss in nats per character, as nanoGPT's
README reports it) and the quickstart corpus (`builtin:python-docs`, BPE 4,096, in bits per byte beside the
bigram and trigram Kneser-Ney models fitted on the same training tokens). Rows:

    default      `lmforge train` defaults (tiny GPT-2-style preset, AdamW, cosine)
    fast         `--recipe fast` (Muon + AdamW, QK-norm, ReLU², RoPE, untied head, logit soft-cap, WSD), compiled
                 for budgets of a minute or more (as quickstart decides)
    nanogpt-cpu  `--recipe nanogpt-cpu`: nanoGPT's README CPU run (4 x 128, batch 12 x 64, lr 1e-3, AdamW, cosine)
    lstm         the `lstm-tiny` preset (1 layer x 256), lmforge train defaults

On Tiny Shakespeare all four rows run; on the quickstart corpus the quickstart's own recipe (fast) and the LSTM
beside the n-grams (`--rows` picks the rows of every corpus). In all (4 + 2) rows x 200 s of budgets, plus 8
probes: about 23 minutes on a quiet 2-core machine.

    PYTHONPATH=src python3 benchmarks/time_to_quality.py                       # the whole table
    PYTHONPATH=src python3 benchmarks/time_to_quality.py --corpora shakespeare --budgets 60 --rows fast nanogpt-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.config import resolve
from lmforge.data.prepare import PrepareConfig, prepare
from lmforge.eval.perplexity import ngram_baseline
from lmforge.recipes.quickstart import COMPILE_PAYS_S, PROBE_STEPS, fit_steps, probe_speed
from lmforge.train import TrainConfig, train

ROWS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"recipe": "fast"},
    "nanogpt-cpu": {"recipe": "nanogpt-cpu"},
    "lstm": {"preset": "lstm-tiny"},
}
DEFAULT_ROWS = {"shakespeare": list(ROWS), "quickstart": ["fast", "lstm"]}
CORPORA = {
    "shakespeare": dict(inputs=["builtin:tinyshakespeare"], tokenizer__kind="char"),
    "quickstart": dict(inputs=["builtin:python-docs"], tokenizer__vocab_size=4096),
}
# The quickstart's own batch shape on its corpus; on Tiny Shakespeare each row keeps its recipe's (or the default).
QUICKSTART_SHAPE = {"batch_size": 16, "seq_len": 128}


def run_config(data: Path, out: Path, row: dict[str, Any], steps: int, seed: int, **kw: Any) -> TrainConfig:
    options = dict(eval_every=0, eval_batches=0, checkpoint_every=steps, keep_last=1, log_every=max(steps // 10, 1),
                   tensorboard=False)
    return resolve(TrainConfig, data=str(data), out=str(out), steps=steps, seed=seed, device="cpu",
                   **{**options, **row, **kw})


def probe(data: Path, work: Path, row: dict[str, Any], seed: int, **kw: Any) -> tuple[float, float, int]:
    """(tokens/s, seconds of overhead, tokens per step) of this row's configuration, measured as quickstart does."""
    run = train(run_config(data, work, row, PROBE_STEPS, seed, **{**kw, "log_every": PROBE_STEPS // 2}))
    cfg = run_config(data, work / "unused", row, PROBE_STEPS, seed, **kw)
    return *probe_speed(run.metrics), cfg.batch_size * cfg.seq_len


def measure(corpus: str, rows: list[str], budgets: list[float], work: Path, seed: int) -> dict[str, Any]:
    data = prepare(resolve(PrepareConfig, out=str(work / corpus / "data"), seed=seed, **CORPORA[corpus])).out
    shape = QUICKSTART_SHAPE if corpus == "quickstart" else {}
    result: dict[str, Any] = {"corpus": corpus, "rows": []}
    for name in rows:
        probes: dict[bool, tuple[float, float, int]] = {}  # compile -> the probe's figures
        for budget in budgets:
            tmp = work / corpus / f"{name}-{budget:g}"
            # The fast recipe compiles where compiling pays (quickstart's rule); the others run as published.
            kw = {**shape, "compile": name == "fast" and budget >= COMPILE_PAYS_S}
            if kw["compile"] not in probes:
                probes[kw["compile"]] = probe(data, work / corpus / f"{name}-probe-{kw['compile']}", ROWS[name], seed,
                                              **kw)
            speed, overhead, tokens_per_step = probes[kw["compile"]]
            steps = max(PROBE_STEPS, fit_steps(budget, speed, overhead, tokens_per_step))
            t0 = time.perf_counter()
            r = train(run_config(data, tmp / "run", ROWS[name], steps, seed, **kw))
            wall = time.perf_counter() - t0
            row = {"row": name, "budget_s": budget, "wall_s": round(wall, 1), "steps": steps, "compile": kw["compile"],
                   "probe_tokens_per_s": round(speed), "val_loss": r.val["val_loss"], "val_bpb": r.val["val_bpb"]}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    if corpus == "quickstart":
        result["ngram"] = [{"order": n, **ngram_baseline(data, order=n, split="val")} for n in (2, 3)]
    return result


def table(result: dict[str, Any], budgets: list[float]) -> str:
    bpb = result["corpus"] == "quickstart"
    unit = "val bits/byte" if bpb else "val loss (nats/char)"
    lines = [f"{result['corpus']}: {unit} at " + ", ".join(f"{b:g} s" for b in budgets),
             "| row | " + " | ".join(f"{b:g} s budget" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for name in dict.fromkeys(r["row"] for r in result["rows"]):
        cells = []
        for b in budgets:
            r = next(x for x in result["rows"] if x["row"] == name and x["budget_s"] == b)
            value = r["val_bpb"] if bpb else r["val_loss"]
            cells.append(f"{value:.3f} ({r['steps']} steps, {r['wall_s']:.0f} s)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for n in result.get("ngram", []):
        lines.append(f"| {n['order']}-gram Kneser-Ney | " + " | ".join(f"{n['bpb']:.3f}" for _ in budgets) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="default: all on shakespeare, fast and lstm "
                        "on quickstart")
    parser.add_argument("--budgets", nargs="+", type=float, default=[30.0, 60.0, 110.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("LMFORGE_QUIET", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="lmforge-ttq-") as tmp:
        for corpus in args.corpora:
            results.append(measure(corpus, args.rows or DEFAULT_ROWS[corpus], args.budgets, Path(tmp), args.seed))
    print(f"torch {torch.__version__}, {args.threads} threads")
    for result in results:
        print("\n" + table(result, args.budgets))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
