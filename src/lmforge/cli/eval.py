"""`lmforge eval`: perplexity / bits per byte of a checkpoint, n-gram vs LSTM vs Transformer (`--compare`), or a
classifier's accuracy / macro-F1 on a labelled file (`--task classification`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from lmforge.cli.common import add_no_verify, add_verb, verify_wanted
from lmforge.config import field, resolve
from lmforge.errors import UserError
from lmforge.recipes.compare import CompareConfig

ORDER = 35

DESCRIPTION = """\
Score language models on a split of prepared data: perplexity, loss (nats/token) and bits per byte.

With --checkpoint alone: one checkpoint (or a run directory, which uses its best checkpoint) on --split, every
window of it (the exact token-weighted mean). The data must be encoded by the checkpoint's own tokenizer.

With --compare: a Kneser-Ney n-gram model, an LSTM and a Transformer side by side on the same split, as a table,
OUT/compare.png (bar chart) and OUT/compare.json. Models not given as checkpoints are trained here, briefly
(--steps, CPU-friendly), into OUT/lstm and OUT/transformer; a re-run reuses them (delete them to retrain).

With --task classification: a classifier checkpoint (any family with a classify head) on a labelled --file (.tsv
with a header row, or .jsonl), its columns named by --text-column / --label-column, texts framed and padded as in
training. Writes OUT/metrics.json (accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, counts),
OUT/predictions.jsonl (text, gold, predicted, probability) and OUT/confusion.png. A label the checkpoint does not
know is an error; --skip-bad-rows leaves such rows out and counts them.

examples:
  lmforge eval --checkpoint runs/train --data runs/data                     # val perplexity of the best checkpoint
  lmforge eval --checkpoint runs/train/checkpoints/step_001000 --data runs/data --split test
  lmforge eval --checkpoint runs/train --data runs/data --max-batches 20    # a quick estimate
  lmforge eval --compare --data runs/data                                   # train all three briefly, compare
  lmforge eval --compare --data runs/data --checkpoint runs/train --ngram-order 4
  lmforge eval --compare --data runs/data --lstm-checkpoint runs/lstm --checkpoint runs/train --out runs/cmp
  lmforge eval --task classification --checkpoint runs/sst2 --file dev.tsv --text-column content --out runs/dev
"""

TASKS = ("perplexity", "classification")
COMPARE_OUT, CLASSIFY_OUT = "runs/compare", "runs/eval"


@dataclass
class EvalConfig(CompareConfig):
    compare: bool = field(False, "compare an n-gram model, an LSTM and a Transformer (trained here unless given)")
    task: str = field("perplexity", "what to score: perplexity (a language model on --data), classification (a "
                                    "classifier on a labelled --file)", choices=TASKS)
    out: str | None = field(None, f"with --compare: models trained here go to OUT/lstm and OUT/transformer, the "
                                  f"results to OUT/compare.json and OUT/compare.png (default {COMPARE_OUT}); with "
                                  f"--task classification: OUT/metrics.json, OUT/predictions.jsonl and "
                                  f"OUT/confusion.png (default {CLASSIFY_OUT})")
    file: str | None = field(None, "with --task classification: the labelled file (.tsv with a header row, or "
                                   ".jsonl; may be gzipped)")
    text_column: str = field("text", "with --task classification: column (TSV header / JSON key) of the text")
    label_column: str = field("label", "with --task classification: column of the gold label")
    max_source_len: int | None = field(None, "with --task classification: truncate texts to N tokens (default: a "
                                             "text longer than the model's max_seq_len is an error)", min=1)
    skip_bad_rows: bool = field(False, "with --task classification: leave out rows whose label the checkpoint does "
                                       "not know, and count them (default: an error)")

    def __post_init__(self) -> None:
        if self.task != "classification":  # it reads a file, not prepared data
            CompareConfig.__post_init__(self)


def run_eval(cfg: EvalConfig, verify: bool = True) -> int:
    from rich.console import Console

    out = Console(file=sys.stdout, soft_wrap=True)
    if cfg.compare:
        from lmforge.recipes.compare import compare, comparison_table

        if cfg.task != "perplexity":
            raise UserError(f"--compare compares language models, not --task {cfg.task}",
                            fix="leave out --compare, or --task")
        _refuse_flags(cfg, CLASSIFY_ONLY, "--task classification")
        result = compare(dataclasses.replace(cfg, out=cfg.out or COMPARE_OUT))
        out.print(comparison_table(result))
        out.print(f"results: {result.json}" + (f"\nchart:   {result.plot}" if result.plot else ""))
        return 0

    if cfg.task == "classification":
        return _run_classification(cfg, out, verify)

    from lmforge.eval.perplexity import evaluate_checkpoint

    _refuse_flags(cfg, (*COMPARE_ONLY, "out"), "--compare")
    _refuse_flags(cfg, CLASSIFY_ONLY, "--task classification")
    if cfg.checkpoint is None:
        raise UserError("no checkpoint given", fix="pass --checkpoint DIR (a checkpoint or a run directory), or "
                                                   "--compare to compare baselines")
    r = evaluate_checkpoint(cfg.checkpoint, cfg.data, cfg.split, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                            max_batches=cfg.max_batches, device=cfg.device, precision=cfg.precision, verify=verify)
    s = r.score
    bpb = "" if s.bpb is None else f" | {s.bpb:.4f} bits/byte"
    out.print(f"{r.checkpoint} on {cfg.split} ({s.tokens:,} tokens, windows of {r.seq_len}): "
              f"loss {s.loss:.4f} | ppl {s.ppl:,.2f}{bpb}", highlight=False)
    return 0


def _run_classification(cfg: EvalConfig, out, verify: bool) -> int:
    from lmforge.eval.classification import evaluate_classifier

    _refuse_flags(cfg, (*COMPARE_ONLY, "data", "split", "seq_len", "max_batches"), "the perplexity task",
                  fix="leave them out: --task classification scores --file")
    if cfg.checkpoint is None or cfg.file is None:
        raise UserError(f"--task classification needs {'--checkpoint' if cfg.checkpoint is None else '--file'}",
                        fix="pass --checkpoint DIR (a classifier's checkpoint or run directory) and --file FILE "
                            "(.tsv or .jsonl with a text and a label column)")
    r = evaluate_classifier(cfg.checkpoint, cfg.file, out=cfg.out or CLASSIFY_OUT, text_column=cfg.text_column,
                            label_column=cfg.label_column, batch_size=cfg.batch_size,
                            max_source_len=cfg.max_source_len, skip_bad_rows=cfg.skip_bad_rows, device=cfg.device,
                            precision=cfg.precision, verify=verify)
    s = r.scores
    skipped = f", {r.skipped:,} skipped (unknown label)" if r.skipped else ""
    worst = min(s.per_class, key=lambda c: s.per_class[c].f1)
    lines = [f"{r.checkpoint} on {Path(r.file).name} ({s.examples:,} examples{skipped}): accuracy {s.accuracy:.4f} | "
             f"macro-F1 {s.macro_f1:.4f}",
             "  per class F1: " + ", ".join(f"{c} {p.f1:.3f}" for c, p in s.per_class.items())
             + (f" (lowest: {worst})" if len(s.per_class) > 2 else ""),
             f"  metrics:     {r.metrics}", f"  predictions: {r.predictions}"]
    if r.plot is not None:
        lines.append(f"  confusion:   {r.plot}")
    out.print("\n".join(lines), highlight=False)
    return 0


# Settings only --compare reads: given without it, they would be silently ignored.
COMPARE_ONLY = ("compare", "lstm_checkpoint", "ngram_order", "steps", "lr", "transformer_preset", "lstm_preset",
                "seed")
CLASSIFY_ONLY = ("file", "text_column", "label_column", "max_source_len", "skip_bad_rows")


def _refuse_flags(cfg: EvalConfig, names, needed: str, fix: str | None = None) -> None:
    """One line for settings that only apply with `needed` (they would be silently ignored)."""
    defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
    given = [f"--{name.replace('_', '-')}" for name in names if getattr(cfg, name) != defaults[name]]
    if given:
        one = len(given) == 1
        raise UserError(f"{', '.join(given)} only appl{'ies' if one else 'y'} with {needed}",
                        fix=fix or f"add {needed}, or leave {'it' if one else 'them'} out")


def _main(args: argparse.Namespace) -> int:
    verify = verify_wanted(args)
    return run_eval(resolve(EvalConfig, args), verify=verify)


def register(sub) -> None:
    parser = add_verb(sub, "eval", EvalConfig, _main,
                      help="perplexity of a checkpoint; n-gram vs LSTM vs Transformer; a classifier on a labelled "
                           "file", description=DESCRIPTION)
    add_no_verify(parser)
