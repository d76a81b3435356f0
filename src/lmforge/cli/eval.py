"""`lmforge eval`: perplexity / bits per byte of a checkpoint, n-gram vs LSTM vs Transformer (`--compare`), or a
task checkpoint on a file of its own (`--task classification|qa|translation|summarisation`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from lmforge.cli.common import add_no_verify, add_verb, verify_wanted
from lmforge.config import field, resolve
from lmforge.errors import UserError
from lmforge.infer.generate import BeamSearchConfig
from lmforge.recipes.compare import CompareConfig

ORDER = 35

DESCRIPTION = """\
Score language models on a split of prepared data: perplexity, loss (nats/token) and bits per byte.

With --checkpoint alone: one checkpoint (or a run directory, which uses its best checkpoint) on --split, every
window of it (the exact token-weighted mean). The data must be encoded by the checkpoint's own tokenizer.

With --compare: a Kneser-Ney n-gram model, an LSTM and a Transformer side by side on the same split, as a table,
OUT/compare.png (bar chart) and OUT/compare.json. Models not given as checkpoints are trained here, briefly
(--steps, CPU-friendly), into OUT/lstm and OUT/transformer; a re-run reuses them (delete them to retrain).

With --task classification: a classifier checkpoint (any family with a classify head) on a labelled --file
(.tsv or .csv with a header row, or .jsonl), its columns named by --text-column / --label-column, texts framed and
padded as in training. Writes OUT/metrics.json (accuracy, macro-F1, per-class precision/recall/F1, confusion
matrix, counts), OUT/predictions.jsonl (text, gold, predicted, probability) and OUT/confusion.png. A label the
checkpoint does not know, an empty text or label, or a text longer than the model's context (without
--max-source-len) is an error; --skip-bad-rows leaves such rows out and counts them.

With --task qa: an extractive-QA checkpoint (--objective extractive_qa) on a SQuAD v1.1 or v2.0 JSON --file:
exact match and F1 (official normalisation; v2.0 with --no-answer-threshold and the best threshold's scores).
Every question needs its answers (or is_impossible); --skip-bad-rows skips those whose answer is not in the
context. Writes OUT/metrics.json and OUT/predictions.jsonl (id, question, gold, predicted, no-answer margin).

With --task translation / summarisation: a seq2seq checkpoint (an encoder-decoder, or a decoder fine-tuned with
--objective seq2seq) generates a target for every pair of --file (--source-column / --target-column), greedy or
with --num-beams N, where --length-penalty, --no-repeat-ngram-size and --early-stopping shape the search as they
do in `lmforge generate` (the same options; refused without --num-beams N > 1); translation prints BLEU and chrF
(sacrebleu, with its signature), summarisation ROUGE-1/2/L (rouge-score). Writes OUT/metrics.json (all five
scores and the generation settings) and OUT/predictions.jsonl (source, reference, generated). An empty source or
reference, or a source longer than the model's context (without --max-source-len), is an error; --skip-bad-rows
leaves such pairs out and counts them.

examples:
  lmforge eval --checkpoint runs/train --data runs/data                     # val perplexity of the best checkpoint
  lmforge eval --checkpoint runs/train/checkpoints/step_001000 --data runs/data --split test
  lmforge eval --checkpoint runs/train --data runs/data --max-batches 20    # a quick estimate
  lmforge eval --compare --data runs/data                                   # train all three briefly, compare
  lmforge eval --compare --data runs/data --checkpoint runs/train --ngram-order 4
  lmforge eval --compare --data runs/data --lstm-checkpoint runs/lstm --checkpoint runs/train --out runs/cmp
  lmforge eval --task classification --checkpoint runs/sst2 --file dev.tsv --text-column content --out runs/dev
  lmforge eval --task qa --checkpoint runs/bert-squad --file squad-v2.0-dev.json --out runs/squad-dev
  lmforge eval --task translation --checkpoint runs/mt --file test.tsv --source-column en --target-column de \\
      --num-beams 4 --out runs/mt-test
  lmforge eval --task summarisation --checkpoint runs/sum --file test.jsonl --source-column article \\
      --target-column highlights --max-source-len 400 --max-new-tokens 80 --num-beams 4 --no-repeat-ngram-size 3 \\
      --length-penalty 2.0 --early-stopping
"""

TASKS = ("perplexity", "classification", "qa", "translation", "summarisation")
FILE_TASKS = TASKS[1:]
COMPARE_OUT, CLASSIFY_OUT = "runs/compare", "runs/eval"


@dataclass
class EvalConfig(BeamSearchConfig, CompareConfig):
    # num_beams, length_penalty, no_repeat_ngram_size, early_stopping: `lmforge generate`'s (BeamSearchConfig),
    # read with --task translation / summarisation.
    compare: bool = field(False, "compare an n-gram model, an LSTM and a Transformer (trained here unless given)")
    task: str = field("perplexity", "what to score: perplexity (a language model on --data), classification (a "
                                    "classifier on a labelled --file), qa (SQuAD EM/F1), translation (BLEU, "
                                    "chrF) or summarisation (ROUGE) of a seq2seq model on a --file of pairs",
                      choices=TASKS)
    out: str | None = field(None, f"with --compare: models trained here go to OUT/lstm and OUT/transformer, the "
                                  f"results to OUT/compare.json and OUT/compare.png (default {COMPARE_OUT}); with "
                                  f"a --task on a file: OUT/metrics.json, OUT/predictions.jsonl (classification: "
                                  f"and OUT/confusion.png) (default {CLASSIFY_OUT})")
    file: str | None = field(None, "with a --task on a file: the labelled file or file of pairs (.tsv or .csv with a "
                                   "header row, or .jsonl; may be gzipped), or for qa a SQuAD JSON file")
    text_column: str = field("text", "with --task classification: column (TSV/CSV header / JSON key) of the text")
    label_column: str = field("label", "with --task classification: column of the gold label")
    label_separator: str = field(",", "with --task classification of a multi-label checkpoint: what separates a "
                                      "row's labels")
    source_column: str = field("source", "with --task translation / summarisation: column of the source text")
    target_column: str = field("target", "with --task translation / summarisation: column of the reference")
    max_source_len: int | None = field(None, "with --task classification / translation / summarisation: truncate "
                                             "texts to N tokens (default: a text longer than the model's "
                                             "max_seq_len is an error)", min=1)
    skip_bad_rows: bool = field(False, "leave out and count bad rows instead of stopping at the first (default: an "
                                       "error): with --task classification rows whose label the checkpoint does not "
                                       "know; classification / translation / summarisation rows with an empty text "
                                       "or target, or a text longer than the model's context (without "
                                       "--max-source-len); qa questions whose answer is not in the context")
    max_new_tokens: int = field(128, "with --task translation / summarisation: longest generated target", min=1)
    max_len: int | None = field(None, "with --task qa: tokens per window (default: the model's max_seq_len)", min=8)
    doc_stride: int = field(128, "with --task qa: context tokens between the starts of consecutive windows", min=1)
    max_query_len: int = field(64, "with --task qa: truncate questions to this many tokens", min=1)
    max_answer_len: int = field(30, "with --task qa: longest answer predicted, in tokens", min=1)
    no_answer_threshold: float = field(0.0, "with --task qa on SQuAD v2.0: answer \"\" when the no-answer score "
                                            "beats the best span's by more than this", finite=True)

    def __post_init__(self) -> None:
        if self.task not in FILE_TASKS:  # they read a file, not prepared data
            CompareConfig.__post_init__(self)


def run_eval(cfg: EvalConfig, verify: bool = True) -> int:
    from rich.console import Console

    out = Console(file=sys.stdout, soft_wrap=True)
    if cfg.compare:
        from lmforge.recipes.compare import compare, comparison_table

        if cfg.task != "perplexity":
            raise UserError(f"--compare compares language models, not --task {cfg.task}",
                            fix="leave out --compare, or --task")
        _refuse_task_flags(cfg)
        result = compare(dataclasses.replace(cfg, out=cfg.out or COMPARE_OUT))
        out.print(comparison_table(result))
        out.print(f"results: {result.json}" + (f"\nchart:   {result.plot}" if result.plot else ""))
        return 0

    if cfg.task in FILE_TASKS:
        _refuse_flags(cfg, (*COMPARE_ONLY, "data", "split", "seq_len", "max_batches"), "the perplexity task",
                      fix=f"leave them out: --task {cfg.task} scores --file")
        _refuse_task_flags(cfg)
        if cfg.checkpoint is None or cfg.file is None:
            raise UserError(f"--task {cfg.task} needs {'--checkpoint' if cfg.checkpoint is None else '--file'}",
                            fix=f"pass --checkpoint DIR (a {cfg.task} checkpoint or run directory) and --file FILE "
                                f"({FILE_KINDS[cfg.task]})")
        run = {"classification": _run_classification, "qa": _run_qa}.get(cfg.task, _run_seq2seq)
        return run(cfg, out, verify)

    from lmforge.eval.perplexity import evaluate_checkpoint

    _refuse_flags(cfg, (*COMPARE_ONLY, "out"), "--compare")
    _refuse_task_flags(cfg)
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

    r = evaluate_classifier(cfg.checkpoint, cfg.file, out=cfg.out or CLASSIFY_OUT, text_column=cfg.text_column,
                            label_column=cfg.label_column, batch_size=cfg.batch_size,
                            max_source_len=cfg.max_source_len, skip_bad_rows=cfg.skip_bad_rows,
                            label_separator=cfg.label_separator, device=cfg.device,
                            precision=cfg.precision, verify=verify)
    s = r.scores
    skipped = f", {r.skipped:,} skipped" if r.skipped else ""
    worst = min(s.per_class, key=lambda c: s.per_class[c].f1)
    lines = [f"{r.checkpoint} on {Path(r.file).name} ({s.examples:,} examples{skipped}): accuracy {s.accuracy:.4f} | "
             f"macro-F1 {s.macro_f1:.4f}",
             "  per class F1: " + ", ".join(f"{c} {p.f1:.3f}" for c, p in s.per_class.items())
             + (f" (lowest: {worst})" if len(s.per_class) > 2 else ""),
             f"  metrics:     {r.metrics}", f"  predictions: {r.predictions}"]
    if r.bad_rows is not None and r.bad_rows.skipped:
        lines.insert(1, f"  {r.bad_rows.summary()}")
    if r.plot is not None:
        lines.append(f"  confusion:   {r.plot}")
    out.print("\n".join(lines), highlight=False)
    return 0


def _run_qa(cfg: EvalConfig, out, verify: bool) -> int:
    from lmforge.eval.qa import evaluate_qa

    r = evaluate_qa(cfg.checkpoint, cfg.file, out=cfg.out or CLASSIFY_OUT, max_len=cfg.max_len,
                    doc_stride=cfg.doc_stride, max_query_len=cfg.max_query_len, max_answer_len=cfg.max_answer_len,
                    no_answer_threshold=cfg.no_answer_threshold, batch_size=cfg.batch_size,
                    skip_bad_rows=cfg.skip_bad_rows, device=cfg.device, precision=cfg.precision, verify=verify)
    s = r.scores
    skipped = f", {r.skipped:,} skipped (answer not in its context)" if r.skipped else ""
    lines = [f"{r.checkpoint} on {Path(r.file).name} ({int(s['questions']):,} questions{skipped}): exact match "
             f"{s['exact_match']:.4f} | F1 {s['f1']:.4f}"]
    if "best_f1" in s:
        lines.append(f"  v2.0 best threshold {s['best_f1_threshold']:.4f}: exact match {s['best_exact_match']:.4f} "
                     f"| F1 {s['best_f1']:.4f}")
    lines += [f"  metrics:     {r.metrics}", f"  predictions: {r.predictions}"]
    out.print("\n".join(lines), highlight=False)
    return 0


def _run_seq2seq(cfg: EvalConfig, out, verify: bool) -> int:
    from lmforge.eval.seq2seq import GENERATION_TASKS, evaluate_seq2seq

    r = evaluate_seq2seq(cfg.checkpoint, cfg.file, task=cfg.task, out=cfg.out or CLASSIFY_OUT,
                         source_column=cfg.source_column, target_column=cfg.target_column,
                         batch_size=cfg.batch_size, max_source_len=cfg.max_source_len,
                         max_new_tokens=cfg.max_new_tokens, beams=cfg.beam_options(),
                         skip_bad_rows=cfg.skip_bad_rows, device=cfg.device, precision=cfg.precision, verify=verify)
    names = {"bleu": "BLEU", "chrf": "chrF", "rouge_1": "ROUGE-1", "rouge_2": "ROUGE-2", "rouge_l": "ROUGE-L"}
    shown = " | ".join(f"{names[k]} {r.scores[k]:.2f}" if k in r.signatures else f"{names[k]} {r.scores[k]:.4f}"
                       for k in GENERATION_TASKS[cfg.task])
    skipped = f", {r.bad_rows.skipped:,} skipped" if r.bad_rows is not None and r.bad_rows.skipped else ""
    lines = [f"{r.checkpoint} on {Path(r.file).name} ({r.pairs:,} pairs{skipped}, "
             f"{'greedy' if cfg.num_beams == 1 else f'{cfg.num_beams} beams'}): {shown}"]
    if skipped:
        lines.append(f"  {r.bad_rows.summary()}")
    lines += [f"  {names[k]} signature: {r.signatures[k]}" for k in GENERATION_TASKS[cfg.task] if k in r.signatures]
    lines += [f"  metrics:     {r.metrics}", f"  predictions: {r.predictions}"]
    out.print("\n".join(lines), highlight=False)
    return 0


# Settings only --compare reads: given without it, they would be silently ignored.
COMPARE_ONLY = ("compare", "lstm_checkpoint", "ngram_order", "steps", "lr", "transformer_preset", "lstm_preset",
                "seed")
GENERATION_FLAGS = ("source_column", "target_column", "max_source_len", "max_new_tokens", "num_beams",
                    "length_penalty", "no_repeat_ngram_size", "early_stopping", "skip_bad_rows")
# The settings each task on a file reads; given with another task, they would be silently ignored.
TASK_FLAGS = {"classification": ("file", "text_column", "label_column", "label_separator", "max_source_len",
                                  "skip_bad_rows"),
              "qa": ("file", "skip_bad_rows", "max_len", "doc_stride", "max_query_len", "max_answer_len",
                     "no_answer_threshold"),
              "translation": ("file", *GENERATION_FLAGS), "summarisation": ("file", *GENERATION_FLAGS)}
FILE_KINDS = {"classification": ".tsv, .csv or .jsonl with a text and a label column",
              "qa": "SQuAD v1.1 or v2.0 JSON",
              "translation": ".tsv, .csv or .jsonl with a source and a target column",
              "summarisation": ".tsv, .csv or .jsonl with a source and a target column"}


def _refuse_task_flags(cfg: EvalConfig) -> None:
    """One line for a task's settings given without that task."""
    mine = set(TASK_FLAGS.get(cfg.task, ()))
    defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
    for name in dict.fromkeys(n for flags in TASK_FLAGS.values() for n in flags):
        if name not in mine and getattr(cfg, name) != defaults[name]:
            tasks = [t for t, flags in TASK_FLAGS.items() if name in flags]
            spelled = ", ".join(tasks[:-1]) + (" or " if len(tasks) > 1 else "") + tasks[-1]
            raise UserError(f"--{name.replace('_', '-')} only applies with --task {spelled}",
                            fix=f"add --task {tasks[0]}, or leave it out")


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
                      help="perplexity of a checkpoint; n-gram vs LSTM vs Transformer; a classifier, QA, "
                           "translation or summarisation model on a file", description=DESCRIPTION)
    add_no_verify(parser)
