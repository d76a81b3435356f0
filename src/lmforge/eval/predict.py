"""Predictions of a task checkpoint for a user's own file, through the code that scores it (`lmforge predict`).

    from lmforge.eval.predict import predict_file

    rows = predict_file("runs/sst2", "reviews.tsv", out="predictions.jsonl", text_column="sentence")

What the checkpoint's model can do decides what is predicted (`models.registry.can`):

- classify: each text's label and probability (`eval.classification.class_probabilities`); a multi-label model
  the labels over probability 0.5 and every label's probability. Columns: `text_column`.
- extract_span: each question's answer in its context, or "" when the no-answer margin exceeds
  `no_answer_threshold` (`eval.qa.question_answers`). Columns: `question_column`, `context_column`.
- generate: each source's generated target, read with the seq2seq template (`data.examples.seq2seq_source`) and
  generated greedily or by beam search with `beams` (`eval.seq2seq.generate_targets`); for free continuation of
  a prompt use `lmforge generate`. Columns: `source_column`.

The file is TSV or CSV with a header row, or JSONL (any of them may be gzipped); each output line is the input's columns
plus the prediction, in file order, written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.data.examples import BadRows
    from lmforge.infer.generate import BeamSearchConfig


def predict_file(checkpoint: str | Path, file: str | Path, *, out: str | Path, text_column: str = "text",
                 question_column: str = "question", context_column: str = "context",
                 source_column: str = "source", batch_size: int = 16, max_source_len: int | None = None,
                 max_new_tokens: int = 128, beams: BeamSearchConfig | None = None,
                 no_answer_threshold: float = 0.0, bad_rows: BadRows | None = None, device: str = "auto",
                 precision: str = "auto", verify: bool = True) -> tuple[Path, int, str]:
    """Write one JSON line per row of `file` with the checkpoint's prediction; (out, rows, what was predicted).

    `beams` (num_beams > 1: beam search, with `lmforge generate`'s options) applies to a generating checkpoint;
    its beam-only options without num_beams > 1 are one line of error. A row with an empty text, or a text /
    source longer than the model's context (without `max_source_len`), is one error line, or when `bad_rows` skips
    (`--skip-bad-rows`) has no output line and is counted there."""
    from lmforge.atomic import atomic_file
    from lmforge.data.examples import BadRows, kept_rows, read_pairs
    from lmforge.errors import UserError
    from lmforge.eval.task_checkpoint import open_task_checkpoint, require_file
    from lmforge.infer.generate import GenerationConfig, check_beam_options
    from lmforge.models.registry import CLASSIFY, EXTRACT_SPAN, GENERATE, can, describe

    check_beam_options(GenerationConfig.deterministic(max_new_tokens, beams))  # before loading anything
    file = require_file(file, "input file", fix="pass --file FILE (.tsv or .csv with a header row, or .jsonl)")
    ckpt = open_task_checkpoint(checkpoint, device=device, precision=precision, verify=verify)
    path, model, cfg, tok, special, rt = ckpt.path, ckpt.model, ckpt.cfg, ckpt.tokenizer, ckpt.special, ckpt.runtime

    bad_rows = bad_rows or BadRows(file)

    def column(name: str, flag: str) -> list[str]:  # one column: read as a pair of it with itself
        return [text for text, _ in read_pairs(file, name, name, flags=flag, bad_rows=bad_rows)]

    records: list[dict[str, Any]]
    if can(cfg, CLASSIFY):
        from lmforge.data.examples import encode_texts
        from lmforge.eval.classification import class_probabilities
        from lmforge.models.registry import text_frame

        what = "labels"
        texts = column(text_column, "--text-column")
        texts, ids = kept_rows(texts, encode_texts(
            tok, texts, text_frame(cfg, special), special, limit=max_source_len or cfg.max_seq_len,
            truncate=max_source_len is not None, where=file, bad_rows=bad_rows,
            fix="truncate texts with --max-source-len N, or shorten the text"))
        probs = class_probabilities(model, ids, special.get("pad", 0), batch_size=batch_size, device=rt.device,
                                    autocast=rt.autocast)
        records = []
        for text, row in zip(texts, probs, strict=True):
            if cfg.multi_label:
                records.append({text_column: text, "predicted": [n for n, p in zip(cfg.labels, row) if p > 0.5],
                                "probabilities": {n: round(p, 6) for n, p in zip(cfg.labels, row)}})
            else:
                best = max(range(len(row)), key=row.__getitem__)
                records.append({text_column: text, "predicted": cfg.labels[best], "probability": round(row[best], 6)})
    elif can(cfg, EXTRACT_SPAN):
        what = "answers"
        records = _answers(model, cfg, tok, special, rt, file, question_column, context_column, batch_size,
                           no_answer_threshold, bad_rows)
    elif can(cfg, GENERATE):
        from lmforge.eval.seq2seq import encode_sources, generate_targets

        what = "generated targets"
        sources = column(source_column, "--source-column")
        sources, ids = kept_rows(sources, encode_sources(cfg, tok, special, sources, max_source_len=max_source_len,
                                                         where=file, needed_for="predict", bad_rows=bad_rows))
        with rt.autocast():
            generated = generate_targets(model, tok, ids, special, max_new_tokens=max_new_tokens,
                                         beams=beams, batch_size=batch_size)
        records = [{source_column: s, "generated": g} for s, g in zip(sources, generated, strict=True)]
    else:
        raise UserError(f"predict needs a checkpoint that classifies, extracts answer spans or generates; this one is "
                        f"{describe(cfg)}", where=path, fix="pass a checkpoint fine-tuned for a task")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out, len(records), what


def _answers(model: Any, cfg: Any, tok: Any, special: dict[str, int], rt: Any, file: Path, question_column: str,
             context_column: str, batch_size: int, no_answer_threshold: float,
             bad_rows: BadRows) -> list[dict[str, Any]]:
    """Each (question, context) row's answer, read as extractive-QA training reads a question."""
    import torch

    from lmforge.data.examples import read_pairs
    from lmforge.data.squad import Question, question_windows
    from lmforge.errors import UserError
    from lmforge.eval.qa import question_answers, window_inputs
    from lmforge.runtime import eval_mode

    if "cls" not in special or "sep" not in special:
        raise UserError("question answering frames questions with <cls> and <sep>, which the checkpoint's tokenizer "
                        "lacks", fix="use a checkpoint trained with --objective extractive_qa")
    rows = read_pairs(file, question_column, context_column, flags="--question-column / --context-column",
                      bad_rows=bad_rows)
    questions = [Question(str(n), q, c, ()) for n, (q, c) in enumerate(rows)]
    built = question_windows(tok, questions, cls=special["cls"], sep=special["sep"], max_len=cfg.max_seq_len,
                             stride=128, max_query_len=64, where=file, fix="shorten the question")
    answers: dict[int, tuple[str, float]] = {}
    with eval_mode(model), torch.no_grad(), rt.autocast():
        for at in range(0, len(questions), batch_size):
            ws = [built.windows[w] for q in range(at, min(at + batch_size, len(questions)))
                  for w in built.of_question[q]]
            b = {k: v.to(rt.device) for k, v in window_inputs(ws, special.get("pad", 0),
                                                              cfg.type_vocab_size >= 2).items()}
            logits = model(b["ids"], attention_mask=b["mask"], token_types=b.get("token_types")).float()
            start, end = logits.masked_fill(~b["mask"][:, :, None], float("-inf")).unbind(-1)
            answers.update(question_answers(ws, start, end, questions, built.offsets, 30))
    out = []
    for n, (q, c) in enumerate(rows):
        text, margin = answers[n]
        out.append({question_column: q, context_column: c, "predicted": "" if margin > no_answer_threshold else text,
                    "span": text, "no_answer_margin": round(margin, 6) if margin != float("inf") else None})
    return out


__all__ = ["predict_file"]
