"""SQuAD v1.1 and v2.0 JSON files as a list of questions.

The format: `{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
"answer_start"}], "is_impossible"}]}]}]}`. v2.0 marks unanswerable questions `is_impossible: true` (their
`answers` list is empty); a v1.1 question has one answer or more. `answer_start` is the character offset of the
answer in the context, and the answer's text must be there: an answer that is not (or has no `answer_start`) is an
error naming the question, unless the reader is told to skip such questions (`skip_bad=True`, the extractive-QA
objective's `--objective-options.skip-bad-rows`), when they are left out and counted. A file that is not SQuAD JSON
is always an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import UserError

SKIP_FIX = "correct answer_start, or pass {flag} to skip such questions (with a count)"


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset in the context

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]  # empty: unanswerable (v2.0)

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass(frozen=True)
class SquadFile:
    questions: list[Question]
    skipped: int  # questions left out for a bad answer (skip_bad)
    version: str


def read_squad(path: str | Path, *, skip_bad: bool = False,
               skip_flag: str = "--objective-options.skip-bad-rows") -> SquadFile:
    """The questions of a SQuAD v1.1 / v2.0 JSON file, in file order; one line per mistake (`skip_flag`: the flag
    that skips bad answers, for the messages)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("SQuAD file not found", where=path, fix="pass --objective-options.squad FILE (SQuAD JSON)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"SQuAD file is not UTF-8 ({e.reason} at byte {e.start})", where=path) from None
    except json.JSONDecodeError as e:
        raise UserError(f"SQuAD file is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", where=path,
                        fix="give a SQuAD v1.1 or v2.0 JSON file (one JSON document, not JSON lines)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError("not a SQuAD file: no 'data' list at the top level", where=path,
                        fix='give a SQuAD v1.1 or v2.0 JSON file ({"data": [{"paragraphs": [...]}]})')
    questions: list[Question] = []
    skipped = 0
    for a, article in enumerate(doc["data"], start=1):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"article {a} has no 'paragraphs' list", where=path, fix=_FORMAT_FIX)
        for p, para in enumerate(paragraphs, start=1):
            at = f"article {a} paragraph {p}"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not isinstance(para.get("qas"), list):
                raise UserError(f"{at} lacks a 'context' text or a 'qas' list", where=path, fix=_FORMAT_FIX)
            for n, qa in enumerate(para["qas"], start=1):
                question = _question(qa, context, f"{at} question {n}", path)
                if question is None:
                    if not skip_bad:
                        question = _question(qa, context, f"{at} question {n}", path, raising=True,
                                             skip_flag=skip_flag)
                    skipped += 1
                    continue
                questions.append(question)
    if not questions:
        raise UserError(f"SQuAD file holds no questions{f' ({skipped} skipped for bad answers)' if skipped else ''}",
                        where=path)
    return SquadFile(questions, skipped, str(doc.get("version", "")))


_FORMAT_FIX = "give a SQuAD v1.1 or v2.0 JSON file (data -> paragraphs -> context, qas)"


def _question(qa: Any, context: str, at: str, path: Path, raising: bool = False,
              skip_flag: str = "--objective-options.skip-bad-rows") -> Question | None:
    """The question, or None when one of its answers is not in the context at its answer_start (raising: the
    error instead). A malformed question is always an error."""
    if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or not isinstance(qa.get("answers", []),
                                                                                            list):
        raise UserError(f"{at} lacks a 'question' text or has a non-list 'answers'", where=path, fix=_FORMAT_FIX)
    qid = str(qa.get("id", at))
    impossible = bool(qa.get("is_impossible", False))
    raw = [] if impossible else qa.get("answers", [])
    if not impossible and not raw:
        raise UserError(f"question {qid} ({at}) has no answers and is not marked is_impossible", where=path,
                        fix="give its answers, or mark it \"is_impossible\": true (SQuAD v2.0)")
    answers = []
    for ans in raw:
        if not isinstance(ans, dict) or not isinstance(ans.get("text"), str) or not ans["text"].strip():
            raise UserError(f"question {qid} ({at}) has an answer without a 'text'", where=path, fix=_FORMAT_FIX)
        text, start = ans["text"], ans.get("answer_start")
        if not isinstance(start, int) or isinstance(start, bool):
            if raising:
                raise UserError(f"question {qid} ({at}): answer {_show(text)} has no integer answer_start (it has "
                                f"{json.dumps(start)})", where=path, fix=SKIP_FIX.format(flag=skip_flag))
            return None
        if context[start:start + len(text)] != text:
            if raising:
                there = (f"the context has {_show(context[start:start + len(text)])} there"
                         if 0 <= start < len(context) else f"the context has {len(context)} characters")
                raise UserError(f"question {qid} ({at}): answer {_show(text)} does not occur in the context at "
                                f"answer_start {start} ({there})", where=path, fix=SKIP_FIX.format(flag=skip_flag))
            return None
        answers.append(Answer(text, start))
    return Question(qid, qa["question"], context, tuple(answers))


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True)
class Window:
    """One model input: a question and a stretch of its context's tokens."""

    question: int  # index into the questions
    ids: list[int]  # <cls> question <sep> context[first:first + length] <sep>
    ctx: int  # position of the first context token in ids
    first: int  # index of that token among the context's tokens
    length: int
    start: int  # target positions in ids (0, 0: no answer in this window)
    end: int


def windows_of(q_ids: list[int], ctx_ids: list[int], ctx_offsets: list[tuple[int, int]], question: int,
               answer: tuple[int, int] | None, cls: int, sep: int, max_len: int, stride: int) -> list[Window]:
    """The windows of one question over its context's tokens; `answer` is its (start, end) character span."""
    ctx, room = len(q_ids) + 2, max_len - len(q_ids) - 3
    span = None
    if answer is not None:  # the context tokens the answer's characters cover
        covering = [k for k, (s, e) in enumerate(ctx_offsets) if e > answer[0] and s < answer[1] and e > s]
        span = (covering[0], covering[-1]) if covering else None
    out, first = [], 0
    while True:
        length = min(room, len(ctx_ids) - first)
        start = end = 0
        if span is not None and first <= span[0] and span[1] < first + length:
            start, end = ctx + span[0] - first, ctx + span[1] - first
        out.append(Window(question, [cls, *q_ids, sep, *ctx_ids[first:first + length], sep], ctx, first, length,
                          start, end))
        if first + length >= len(ctx_ids):
            return out
        first += min(length, stride)


@dataclass
class QuestionWindows:
    """Every question's windows over its tokenised context: what training and evaluation both read."""

    windows: list[Window]
    of_question: list[list[int]]  # question -> the indices of its windows in `windows`
    offsets: dict[str, list[tuple[int, int]]]  # context -> its tokens' character offsets


def question_windows(tokenizer: Any, questions: list[Question], *, cls: int, sep: int, max_len: int, stride: int,
                     max_query_len: int, where: str | Path | None = None,
                     fix: str = "lower --objective-options.max-query-len or raise --objective-options.max-len"
                     ) -> QuestionWindows:
    """Tokenise the questions and their contexts (each distinct context once) and cut them into windows of
    `max_len` tokens `<cls> question <sep> context <sep>`, `stride` context tokens apart; the first gold answer is
    the target (`windows_of`). A question that leaves no room for context is one line."""
    contexts = list(dict.fromkeys(q.context for q in questions))
    encoded = dict(zip(contexts, tokenizer.encode_batch(contexts, add_special_tokens=False)))
    q_enc = tokenizer.encode_batch([q.question for q in questions], add_special_tokens=False)
    windows: list[Window] = []
    of_question: list[list[int]] = []
    for n, (q, qe) in enumerate(zip(questions, q_enc)):
        enc = encoded[q.context]
        q_ids = qe.ids[:max_query_len]
        if max_len - len(q_ids) - 3 < 1:
            raise UserError(f"question {q.id} has {len(q_ids)} tokens: a window of {max_len} tokens leaves no room "
                            f"for its context after it and 3 special tokens", where=where, fix=fix)
        answer = (q.answers[0].start, q.answers[0].end) if q.answerable else None
        ws = windows_of(q_ids, enc.ids, enc.offsets, n, answer, cls, sep, max_len, stride)
        of_question.append(list(range(len(windows), len(windows) + len(ws))))
        windows.extend(ws)
    return QuestionWindows(windows, of_question, {c: enc.offsets for c, enc in encoded.items()})


__all__ = ["Answer", "Question", "QuestionWindows", "SquadFile", "Window", "question_windows", "read_squad",
           "windows_of"]
