"""SQuAD metrics: exact match and token F1 after the official answer normalisation, v2.0's unanswerable
questions, and the best no-answer threshold. Pure functions on strings and numbers.

The definitions are those of the official evaluation scripts (SQuAD v1.1 `evaluate-v1.1.py`, v2.0
`evaluate-v2.0.py`):

- An answer is normalised by lowercasing it, removing punctuation (`string.punctuation`), removing the articles
  "a", "an" and "the" as words, and collapsing whitespace.
- Exact match is 1 when the normalised prediction equals a normalised gold answer; token F1 is the harmonic mean
  of the precision and recall of the prediction's tokens against a gold answer's (tokens counted with
  multiplicity). A question scores the best over its gold answers.
- An unanswerable question (v2.0) has the one gold answer "": the empty prediction scores 1 on it, any other 0;
  and a non-empty gold scores 0 against the empty prediction (F1 of two token lists one of which is empty is 1
  when both are, else 0).
- A model that gives, per question, a no-answer score margin (how much more it believes "no answer" than its best
  span) answers "" when the margin exceeds a threshold. `best_threshold` finds the threshold that maximises the
  score as the v2.0 script's `find_best_thresh`: every question starts unanswered; in increasing order of margin
  each is answered in turn, and the best total seen names the threshold (the margin of the last question
  answered). When answering none is best the v2.0 script reports 0.0, which, carried as a threshold to other
  questions (chosen on a validation set, applied to a test set), would answer every question whose margin is
  below 0; here it is 1 below the smallest margin, so applying it abstains on every question it was chosen on
  (0.0 when no margin is finite).

Scores here are fractions in [0, 1]; the official scripts print 100 times them.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (the official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the two answers are equal once normalised, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised prediction's tokens against the gold's (bags of words); 1.0 when both are empty."""
    pred, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not true:
        return float(pred == true)
    common = sum((Counter(pred) & Counter(true)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(true)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """The best score of `prediction` over the gold answers; no gold answers (unanswerable) means the gold ""."""
    return max(metric(prediction, gold) for gold in (golds or [""]))


def squad_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 over the questions of `golds` (id -> its gold answers, [] or [""] when unanswerable)
    given `predictions` (id -> answer text, "" for no answer; a missing id counts as ""), as fractions; with
    `has_answer_*` / `no_answer_*` over the answerable / unanswerable questions when there are both."""
    em = {q: best_over_golds(exact_match, predictions.get(q, ""), g) for q, g in golds.items()}
    f1 = {q: best_over_golds(token_f1, predictions.get(q, ""), g) for q, g in golds.items()}
    out = {"exact_match": _mean(em.values()), "f1": _mean(f1.values()), "questions": float(len(golds))}
    has = {q for q, g in golds.items() if any(a.strip() for a in g)}
    if has and len(has) < len(golds):
        for name, part in (("has_answer", has), ("no_answer", set(golds) - has)):
            out[f"{name}_exact_match"] = _mean(em[q] for q in part)
            out[f"{name}_f1"] = _mean(f1[q] for q in part)
    return out


def apply_threshold(predictions: Mapping[str, str], na_margins: Mapping[str, float],
                    threshold: float) -> dict[str, str]:
    """The predictions with "" for every question whose no-answer margin exceeds `threshold`."""
    return {q: "" if na_margins.get(q, float("-inf")) > threshold else p for q, p in predictions.items()}


def best_threshold(answered: Mapping[str, float], has_answer: Mapping[str, bool], na_margins: Mapping[str, float],
                   answered_is_empty: Mapping[str, bool] | None = None) -> tuple[float, float]:
    """(best score as a fraction, its threshold) over the questions of `answered`.

    `answered[q]` is question q's score when its prediction is given (its exact match or F1), `has_answer[q]`
    whether its gold is non-empty, `na_margins[q]` its no-answer margin, `answered_is_empty[q]` whether the
    prediction given is itself "" (it then scores an unanswerable question 1 whichever way the threshold falls).
    Abstaining scores 1 on an unanswerable question and 0 on an answerable one.
    """
    empty = answered_is_empty or {}
    score = sum(1.0 for q in answered if not has_answer[q])  # nothing answered: every unanswerable one right
    best, thresh = score, _below_every(na_margins[q] for q in answered)
    for q in sorted(answered, key=lambda k: na_margins[k]):
        if has_answer[q]:
            score += answered[q]
        elif not empty.get(q, False):
            score -= 1.0
        if score > best:
            best, thresh = score, na_margins[q]
    return (best / len(answered) if answered else 0.0), thresh


def best_threshold_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]],
                          na_margins: Mapping[str, float]) -> dict[str, float]:
    """The v2.0 script's best exact match and F1 over no-answer thresholds, and the thresholds: `predictions` are
    the answers given when answering (id -> text), `na_margins` the no-answer margins (id -> float)."""
    has = {q: any(a.strip() for a in g) for q, g in golds.items()}
    empty = {q: not predictions.get(q, "") for q in golds}
    out = {}
    for name, metric in (("exact_match", exact_match), ("f1", token_f1)):
        answered = {q: best_over_golds(metric, predictions.get(q, ""), g) for q, g in golds.items()}
        out[f"best_{name}"], out[f"best_{name}_threshold"] = best_threshold(answered, has, na_margins, empty)
    return out


def _below_every(margins: Iterable[float]) -> float:
    """A threshold under which no question is answered: 1 below the smallest finite margin (0.0 without one)."""
    finite = [m for m in margins if math.isfinite(m)]
    return min(finite) - 1.0 if finite else 0.0


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


__all__ = ["apply_threshold", "best_over_golds", "best_threshold", "best_threshold_scores", "exact_match",
           "normalize_answer", "squad_scores", "token_f1"]
