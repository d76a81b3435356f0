"""`lmforge predict`: a task checkpoint's predictions for a file of the user's (the library is
`lmforge.eval.predict.predict_file`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lmforge.cli.common import add_no_verify, add_verb, verify_wanted
from lmforge.config import field, resolve
from lmforge.device import DEVICES
from lmforge.errors import UserError
from lmforge.infer.generate import BeamSearchConfig
from lmforge.runtime import PRECISIONS

ORDER = 37

DESCRIPTION = """\
Predict with a task checkpoint on every row of a file (.tsv or .csv with a header row, or .jsonl; may be
gzipped), as JSON lines: the row's input columns plus the prediction, in file order. What is predicted follows what the
checkpoint's model can do:

  classifier (--objective classification)       "predicted" label and its "probability" (multi-label: the
                                                labels over 0.5 and every label's probability); --text-column
  extractive QA (--objective extractive_qa)     "predicted" answer ("" for no answer past --no-answer-threshold)
                                                in the context; --question-column, --context-column
  seq2seq (--objective seq2seq, t5 or decoder)  "generated" target, greedy or with --num-beams N (and
                                                --length-penalty, --no-repeat-ngram-size, --early-stopping,
                                                as in `lmforge generate`); --source-column

examples:
  lmforge predict runs/sst2 --file reviews.tsv --text-column sentence --out reviews.predictions.jsonl
  lmforge predict runs/bert-squad --file questions.jsonl --out answers.jsonl
  lmforge predict runs/mt --file english.tsv --source-column en --num-beams 4 --out german.jsonl
  lmforge predict runs/sum --file articles.jsonl --source-column article --num-beams 4 --no-repeat-ngram-size 3 \\
      --length-penalty 2.0 --early-stopping --out summaries.jsonl
"""


@dataclass
class PredictOptions(BeamSearchConfig):
    # num_beams, length_penalty, no_repeat_ngram_size, early_stopping: `lmforge generate`'s (BeamSearchConfig),
    # read for a seq2seq checkpoint.
    file: str | None = field(None, "the input file (.tsv or .csv with a header row, or .jsonl)")
    out: str = field("predictions.jsonl", "output JSONL file (written whole or not at all)")
    text_column: str = field("text", "classifier: column of the text")
    question_column: str = field("question", "extractive QA: column of the question")
    context_column: str = field("context", "extractive QA: column of the context")
    source_column: str = field("source", "seq2seq: column of the source text")
    batch_size: int = field(16, "rows per forward pass", min=1)
    max_source_len: int | None = field(None, "truncate texts / sources to N tokens (default: too long is an error)",
                                       min=1)
    max_new_tokens: int = field(128, "seq2seq: longest generated target", min=1)
    no_answer_threshold: float = field(0.0, "extractive QA: answer \"\" when the no-answer score beats the best "
                                            "span's by more than this", finite=True)
    skip_bad_rows: bool = field(False, "leave out (no output line) and count rows with an empty text, or a text / "
                                       "source longer than the model's context without --max-source-len (default: "
                                       "an error)")
    device: str = field("auto", "device to run on", choices=DEVICES)
    precision: str = field("auto", "auto = bf16 autocast on CUDA, fp32 elsewhere", choices=PRECISIONS)


def run(args: argparse.Namespace) -> int:
    from lmforge.data.examples import BadRows
    from lmforge.eval.predict import predict_file

    verify = verify_wanted(args)
    checkpoint = args.checkpoint
    o = resolve(PredictOptions, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "checkpoint"}))
    if not o.file:
        raise UserError("no input file given", fix="pass --file FILE (.tsv or .csv with a header row, or .jsonl)")
    bad_rows = BadRows(o.file, skip=o.skip_bad_rows, flag="--skip-bad-rows")
    out, n, what = predict_file(checkpoint, o.file, out=o.out, text_column=o.text_column,
                                question_column=o.question_column, context_column=o.context_column,
                                source_column=o.source_column, batch_size=o.batch_size,
                                max_source_len=o.max_source_len, max_new_tokens=o.max_new_tokens,
                                beams=o.beam_options(), no_answer_threshold=o.no_answer_threshold,
                                bad_rows=bad_rows, device=o.device, precision=o.precision, verify=verify)
    if bad_rows.skipped:
        print(bad_rows.summary())
    print(f"wrote {what} for {n:,} rows to {out}")
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "predict", PredictOptions, run, help="a task checkpoint's predictions for a file (JSONL)",
                      description=DESCRIPTION)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="task checkpoint, or a run directory (its best)")
    add_no_verify(parser)
