"""Score an extractive-QA checkpoint on a SQuAD v1.1 / v2.0 file: exact match and F1 (and v2.0's no-answer
threshold), with each question's answer written out.

    from lmforge.eval.qa import evaluate_qa

    result = evaluate_qa("runs/bert-squad", "squad-v2.0-dev-subset.json", out="runs/squad-dev")
    print(result.scores["exact_match"], result.scores["f1"])

Any checkpoint whose model extracts spans (`models.registry.can(cfg, EXTRACT_SPAN)`: BERT's `span` head trained
with `--objective extractive_qa`) reads each question as the objective does (`data.squad.question_windows`:
`<cls> question <sep> context <sep>` windows `doc_stride` context tokens apart, token types 0 then 1), and answers
with the best span over its windows (`question_answers`, the one answer rule of training's evaluation and of this
one), mapped back to the context's characters. Every question of the evaluation file needs its gold answers (or
`is_impossible: true`); one without is an error line naming it. The scores are the official SQuAD script's
(`eval.squad`, as fractions); on v2.0 a question is answered "" when its no-answer margin exceeds
`no_answer_threshold`, and the best threshold's scores are reported beside.

Written into `out`: metrics.json and predictions.jsonl (id, question, gold answers, predicted answer, no-answer
margin; one line per question, in file order).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmforge.atomic import atomic_file

if TYPE_CHECKING:
    from lmforge.data.squad import Question, Window

METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.jsonl"


def window_inputs(windows: Sequence[Window], pad_id: int, segments: bool) -> dict[str, Tensor]:
    """The padded model inputs of some windows: ids, mask and (`segments`: the model has token types) types."""
    from lmforge.data.examples import pad

    ids, mask = pad([w.ids for w in windows], pad_id)
    out = {"ids": ids, "mask": mask}
    if segments:
        out["token_types"], _ = pad([[0] * w.ctx + [1] * (len(w.ids) - w.ctx) for w in windows], 0)
    return out


def best_spans(start: Tensor, end: Tensor, valid: Tensor, max_answer_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per window (rows of the (W, T) logits, `valid` marking context positions): the best span's score, start and
    end position, over spans with start <= end < start + max_answer_len both in the context."""
    W, T = start.shape
    scores = start[:, :, None] + end[:, None, :]  # (W, T, T): [w, i, j] = start i, end j
    i = torch.arange(T, device=start.device)
    band = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_len)  # (T, T)
    ok = band[None] & valid[:, :, None] & valid[:, None, :]
    scores = scores.masked_fill(~ok, float("-inf")).flatten(1)
    best, at = scores.max(-1)
    return best, at // T, at % T


def question_answers(windows: Sequence[Window], start: Tensor, end: Tensor, questions: Sequence[Question],
                     offsets: dict[str, list[tuple[int, int]]], max_answer_len: int) -> dict[int, tuple[str, float]]:
    """{question: (answer text, no-answer margin)} from the start/end logits (W, T) of the windows.

    The answer is the best-scoring span (start + end logit) over all of a question's windows, as characters of
    its context; the margin is the smallest no-answer score (start + end at <cls>) over its windows less that
    best span's score (inf when no span is possible)."""
    valid = torch.zeros_like(start, dtype=torch.bool)
    for r, win in enumerate(windows):
        valid[r, win.ctx:win.ctx + win.length] = True
    best, i, j = (t.tolist() for t in best_spans(start, end, valid, max_answer_len))
    null = (start[:, 0] + end[:, 0]).tolist()
    per_question: dict[int, tuple[float, int, float]] = {}  # q -> best span score, its row, smallest null
    for r, win in enumerate(windows):
        score, row, low = per_question.get(win.question, (float("-inf"), -1, float("inf")))
        if best[r] > score:
            score, row = best[r], r
        per_question[win.question] = (score, row, min(low, null[r]))
    out: dict[int, tuple[str, float]] = {}
    for q, (score, row, low) in per_question.items():
        text = ""
        if row >= 0 and math.isfinite(score):
            win, context = windows[row], questions[q].context
            first, last = win.first + i[row] - win.ctx, win.first + j[row] - win.ctx
            text = context[offsets[context][first][0]:offsets[context][last][1]].strip()
        out[q] = (text, low - score if math.isfinite(score) else float("inf"))
    return out


@dataclass
class QAEval:
    checkpoint: Path
    file: Path
    scores: dict[str, float]  # exact_match, f1, questions; v2.0: best_* and has_answer_* / no_answer_*
    skipped: int  # questions left out with skip_bad_rows (answer not in the context)
    metrics: Path
    predictions: Path


def evaluate_qa(checkpoint: str | Path, file: str | Path, *, out: str | Path, max_len: int | None = None,
                doc_stride: int = 128, max_query_len: int = 64, max_answer_len: int = 30,
                no_answer_threshold: float = 0.0, batch_size: int = 16, skip_bad_rows: bool = False,
                device: str = "auto", precision: str = "auto", verify: bool = True) -> QAEval:
    """Answer every question of the SQuAD `file` with `checkpoint` (or a run directory's best); write into `out`."""
    from lmforge.atomic import write_json
    from lmforge.data.squad import question_windows, read_squad
    from lmforge.errors import UserError
    from lmforge.eval.squad import apply_threshold, best_threshold_scores, squad_scores
    from lmforge.eval.task_checkpoint import open_task_checkpoint, require_file
    from lmforge.models.registry import EXTRACT_SPAN
    from lmforge.runtime import eval_mode

    file = require_file(file, "SQuAD file", fix="pass --file FILE (SQuAD v1.1 or v2.0 JSON)")
    ckpt = open_task_checkpoint(checkpoint, capability=EXTRACT_SPAN, needed_for="question answering",
                                fix="pass a checkpoint trained with --objective extractive_qa", device=device,
                                precision=precision, verify=verify)
    path, model, cfg, tok, special, rt = ckpt.path, ckpt.model, ckpt.cfg, ckpt.tokenizer, ckpt.special, ckpt.runtime
    read = read_squad(file, skip_bad=skip_bad_rows, skip_flag="--skip-bad-rows")
    missing = [f"<{n}>" for n in ("cls", "sep") if n not in special]
    if missing:
        raise UserError(f"question answering frames questions with {', '.join(missing)}, which the checkpoint's "
                        f"tokenizer lacks", where=path, fix="score a checkpoint trained with --objective extractive_qa")
    max_len = max_len or cfg.max_seq_len
    if max_len > cfg.max_seq_len:
        raise UserError(f"--max-len {max_len} is longer than the model's max_seq_len {cfg.max_seq_len}",
                        fix=f"lower it to at most {cfg.max_seq_len}")
    questions = read.questions
    built = question_windows(tok, questions, cls=special["cls"], sep=special["sep"], max_len=max_len,
                             stride=doc_stride, max_query_len=max_query_len, where=file,
                             fix="lower --max-query-len or raise --max-len")
    answers: dict[int, tuple[str, float]] = {}
    segments = cfg.type_vocab_size >= 2
    with eval_mode(model), torch.no_grad(), rt.autocast():
        for at in range(0, len(questions), batch_size):
            ws = [built.windows[w] for q in range(at, min(at + batch_size, len(questions)))
                  for w in built.of_question[q]]
            b = {k: v.to(rt.device) for k, v in window_inputs(ws, special.get("pad", 0), segments).items()}
            logits = model(b["ids"], attention_mask=b["mask"], token_types=b.get("token_types")).float()
            logits = logits.masked_fill(~b["mask"][:, :, None], float("-inf"))
            start, end = logits.unbind(-1)
            answers.update(question_answers(ws, start, end, questions, built.offsets, max_answer_len))

    ids = [q.id for q in questions]
    golds = {q.id: [a.text for a in q.answers] for q in questions}
    given = {q.id: answers[n][0] for n, q in enumerate(questions)}
    margins = {q.id: answers[n][1] for n, q in enumerate(questions)}
    v2 = any(not q.answerable for q in questions)
    final = apply_threshold(given, margins, no_answer_threshold) if v2 else given
    scores = squad_scores(final, golds)
    if v2:
        scores.update(best_threshold_scores(given, golds, margins))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, predictions = out / METRICS_FILE, out / PREDICTIONS_FILE
    settings: dict[str, Any] = {"max_len": max_len, "doc_stride": doc_stride, "max_query_len": max_query_len,
                                "max_answer_len": max_answer_len, "no_answer_threshold": no_answer_threshold}
    write_json(metrics, {"task": "qa", "checkpoint": str(path), "file": str(file), "version": "v2.0" if v2 else
                         "v1.1", **scores, "settings": settings,
                         "counts": {"questions": len(questions), "skipped": read.skipped,
                                    "windows": len(built.windows)}})
    with atomic_file(predictions, "w") as f:
        for n, q in enumerate(questions):
            margin = margins[ids[n]]
            f.write(json.dumps({"id": q.id, "question": q.question, "gold": golds[q.id], "predicted": final[q.id],
                                "no_answer_margin": round(margin, 6) if math.isfinite(margin) else None},
                               ensure_ascii=False) + "\n")
    return QAEval(checkpoint=path, file=file, scores=scores, skipped=read.skipped, metrics=metrics,
                  predictions=predictions)


__all__ = ["QAEval", "best_spans", "evaluate_qa", "question_answers", "window_inputs"]
