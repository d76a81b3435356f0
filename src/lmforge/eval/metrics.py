"""Pure metric functions shared by training objectives and evaluation: one definition of each loss and score.

Summed, not averaged, where totals over batches make the exact token-weighted mean over a split. Language
modelling (`next_token_nll`, `lm_metrics`); classification (`class_sums` / `macro_f1` for training's additive
counts, `classification_scores` for a set of predictions); generated text (`bleu`, `chrf` through sacrebleu,
`rouge` through rouge-score). SQuAD exact match / F1 are in `eval/squad.py`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

# One definition of the LM loss, beside the chunked head loss that equals it; re-exported for the objectives.
from lmforge.models.lm_loss import IGNORE_INDEX as IGNORE_INDEX
from lmforge.models.lm_loss import next_token_nll as next_token_nll


def lm_metrics(loss: float, bytes_per_token: float | None) -> dict[str, float | None]:
    """{loss, ppl, bpb} from the mean loss in nats per token; bpb None when the bytes per token are unknown."""
    # bits per byte = (nats per token / ln 2) * (tokens / bytes): comparable across tokenizers.
    bpb = loss / math.log(2) / bytes_per_token if bytes_per_token else None
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": bpb}


# ------------------------------------------------------------------------------------------- classification
def class_sums(pred: Tensor, labels: Tensor, n_classes: int) -> dict[str, Tensor]:
    """Per class c: true positives `tp/c`, predictions `pred/c` and true labels `true/c` of a batch: additive, so
    sums over batches and processes give the exact F1 of a whole split (`macro_f1`)."""
    import torch

    tp = torch.bincount(labels[pred == labels], minlength=n_classes)
    predicted = torch.bincount(pred, minlength=n_classes)
    true = torch.bincount(labels, minlength=n_classes)
    return {f"{name}/{c}": counts[c] for name, counts in (("tp", tp), ("pred", predicted), ("true", true))
            for c in range(n_classes)}


def label_sums(pred: Tensor, gold: Tensor, n_labels: int) -> dict[str, Tensor]:
    """`class_sums` for multi-label predictions: (B, K) bool predicted and gold label sets; per label, the same
    additive counts, so `macro_f1` of their totals is the macro-F1 over labels."""
    tp, predicted, true = (pred & gold).sum(0), pred.sum(0), gold.sum(0)
    return {f"{name}/{c}": counts[c] for name, counts in (("tp", tp), ("pred", predicted), ("true", true))
            for c in range(n_labels)}


def macro_f1(sums: Mapping[str, float], n_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2 tp / (predicted + true), from `class_sums` totals.

    From counts rather than predictions: the counts add up over batches and ranks, the predictions would have to
    be gathered. A class neither present nor predicted says nothing and is left out, as scikit-learn leaves out
    classes absent from both by default.
    """
    f1 = []
    for c in range(n_classes):
        tp, predicted, true = (float(sums.get(f"{name}/{c}", 0.0)) for name in ("tp", "pred", "true"))
        if predicted + true:
            f1.append(2 * tp / (predicted + true))
    return sum(f1) / len(f1) if f1 else 0.0


def confusion_matrix(predictions: Sequence[Hashable], labels: Sequence[Hashable],
                     classes: Sequence[Hashable]) -> list[list[int]]:
    """(K, K) counts: row = the gold label, column = the prediction, both in the order of `classes`."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    at = {c: i for i, c in enumerate(classes)}
    unknown = [x for x in (*predictions, *labels) if x not in at]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of the classes {list(classes)!r}")
    matrix = [[0] * len(classes) for _ in classes]
    for p, y in zip(predictions, labels, strict=True):
        matrix[at[y]][at[p]] += 1
    return matrix


@dataclass
class ClassScore:
    """One class's scores; precision (recall) is 0 when the class is never predicted (never the label)."""

    precision: float
    recall: float
    f1: float
    support: int  # examples whose gold label is this class
    predicted: int  # examples predicted as this class


@dataclass
class ClassificationScores:
    """Accuracy, macro-F1, per-class precision / recall / F1 and the confusion matrix of a set of predictions."""

    accuracy: float
    macro_f1: float  # mean F1 over the classes present among the labels or predictions (scikit-learn's default)
    classes: list[Hashable]
    per_class: dict[Hashable, ClassScore]
    confusion: list[list[int]]  # [gold][predicted], in the order of `classes`
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "examples": self.examples,
                "classes": [str(c) for c in self.classes],
                "per_class": {str(c): asdict(s) for c, s in self.per_class.items()},
                "confusion_matrix": self.confusion}


def classification_scores(predictions: Sequence[Hashable], labels: Sequence[Hashable],
                          classes: Sequence[Hashable] | None = None) -> ClassificationScores:
    """Scores of `predictions` against gold `labels` (class names or indices), over `classes` (default: the sorted
    labels and predictions seen). Macro-F1 is `macro_f1` of the same counts the training objective sums."""
    if not labels:
        raise ValueError("no labels to score")
    classes = list(classes) if classes is not None else sorted(set(labels) | set(predictions))
    matrix = confusion_matrix(predictions, labels, classes)
    sums: dict[str, float] = {}
    per_class: dict[Hashable, ClassScore] = {}
    for i, c in enumerate(classes):
        tp, true, predicted = matrix[i][i], sum(matrix[i]), sum(row[i] for row in matrix)
        sums.update({f"tp/{i}": tp, f"true/{i}": true, f"pred/{i}": predicted})
        f1 = 2 * tp / (predicted + true) if predicted + true else 0.0
        per_class[c] = ClassScore(precision=tp / predicted if predicted else 0.0, recall=tp / true if true else 0.0,
                                  f1=f1, support=true, predicted=predicted)
    correct = sum(matrix[i][i] for i in range(len(classes)))
    return ClassificationScores(accuracy=correct / len(labels), macro_f1=macro_f1(sums, len(classes)),
                                classes=classes, per_class=per_class, confusion=matrix, examples=len(labels))


@dataclass
class MultiLabelScores:
    """Scores of multi-label predictions (a set of labels per example): subset accuracy (the whole set right),
    macro-F1 over labels (`macro_f1` of `label_sums`' counts), micro-F1 (of all labels' counts pooled) and per-label
    precision / recall / F1."""

    accuracy: float
    macro_f1: float
    micro_f1: float
    classes: list[str]
    per_class: dict[str, ClassScore]
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "micro_f1": self.micro_f1,
                "examples": self.examples, "classes": list(self.classes),
                "per_class": {c: asdict(s) for c, s in self.per_class.items()}}


def multilabel_scores(predictions: Sequence[Sequence[str]], labels: Sequence[Sequence[str]],
                      classes: Sequence[str]) -> MultiLabelScores:
    """Scores of predicted label sets against gold label sets, over `classes`."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no labels to score")
    sums: dict[str, float] = {}
    per_class: dict[str, ClassScore] = {}
    for i, c in enumerate(classes):
        tp = sum(c in p and c in y for p, y in zip(predictions, labels, strict=True))
        predicted, true = sum(c in p for p in predictions), sum(c in y for y in labels)
        sums.update({f"tp/{i}": tp, f"pred/{i}": predicted, f"true/{i}": true})
        per_class[c] = ClassScore(precision=tp / predicted if predicted else 0.0, recall=tp / true if true else 0.0,
                                  f1=2 * tp / (predicted + true) if predicted + true else 0.0, support=true,
                                  predicted=predicted)
    tp_all = sum(sums[f"tp/{i}"] for i in range(len(classes)))
    pooled = sum(sums[f"pred/{i}"] + sums[f"true/{i}"] for i in range(len(classes)))
    subset = sum(set(p) == set(y) for p, y in zip(predictions, labels, strict=True)) / len(labels)
    return MultiLabelScores(accuracy=subset, macro_f1=macro_f1(sums, len(classes)),
                            micro_f1=2 * tp_all / pooled if pooled else 0.0, classes=list(classes),
                            per_class=per_class, examples=len(labels))


# ------------------------------------------------------------------------------------------ generated text
@dataclass
class CorpusScore:
    """A sacrebleu corpus score (0-100) and the signature that says how it was computed, to print beside it."""

    score: float
    signature: str


def _reference_streams(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
                       ) -> list[list[str]]:
    """sacrebleu's layout: one list per reference set, each as long as the hypotheses. A flat list of strings is
    one reference per hypothesis; a list of lists gives each hypothesis its references (all of equal number)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if all(isinstance(r, str) for r in references):
        return [list(references)]  # type: ignore[arg-type]
    counts = {len(r) for r in references}
    if len(counts) != 1:
        raise ValueError("every hypothesis needs the same number of references")
    return [[r[k] for r in references] for k in range(counts.pop())]


def bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> CorpusScore:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, exponential smoothing) of detokenised hypotheses."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), _reference_streams(hypotheses, references))
    return CorpusScore(score=float(score.score), signature=str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> CorpusScore:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2, no word n-grams)."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    score = metric.corpus_score(list(hypotheses), _reference_streams(hypotheses, references))
    return CorpusScore(score=float(score.score), signature=str(metric.get_signature()))


ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}  # our key -> rouge-score's


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{rouge_1, rouge_2, rouge_l}: rouge-score's F-measures (Porter stemming on), averaged over the examples."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES.values()), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for ours, theirs in ROUGE_TYPES.items():
            totals[ours] += scores[theirs].fmeasure
    return {k: v / len(predictions) for k, v in totals.items()}


# Additive statistics of generated text, for evaluation passes that sum over batches and processes: sacrebleu's
# own sufficient statistics (n-gram matches and totals, lengths) summed give exactly its corpus BLEU and chrF, and
# ROUGE is a mean of per-example F-measures. sacrebleu exposes the statistics only through underscored methods
# (`_extract_corpus_statistics`, `_compute_score_from_stats`, used by its own corpus_score); they are read here
# rather than re-implementing its tokenisation and n-gram counting. `text_scores(text_sums(h, r))` equals
# `bleu(h, r)`, `chrf(h, r)` and `rouge(h, r)` (tested).
TEXT_SCORES = ("bleu", "chrf", *ROUGE_TYPES)


def text_sums(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Additive statistics of a batch of generated texts against one reference each: `bleu/i`, `chrf/i`,
    `rouge_*` (summed F-measures) and `texts` (how many)."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    sums: dict[str, float] = {"texts": float(len(hypotheses))}
    if not hypotheses:
        return sums
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        stats = metric._extract_corpus_statistics(list(hypotheses), [list(references)])
        for i, value in enumerate(map(sum, zip(*stats, strict=True))):
            sums[f"{name}/{i}"] = float(value)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES.values()), use_stemmer=True)
    for ours in ROUGE_TYPES:
        sums[ours] = 0.0
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)
        for ours, theirs in ROUGE_TYPES.items():
            sums[ours] += scores[theirs].fmeasure
    return sums


def text_scores(sums: Mapping[str, float]) -> dict[str, float]:
    """{bleu, chrf (0-100), rouge_1, rouge_2, rouge_l (0-1)} from the totals of `text_sums`."""
    from sacrebleu.metrics import BLEU, CHRF

    n = sums.get("texts", 0.0)
    if not n:
        return {}
    out = {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
        stats = [sums[f"{name}/{i}"] for i in range(sum(k.startswith(f"{name}/") for k in sums))]
        if name == "bleu":
            stats = [round(s) for s in stats]
        out[name] = float(metric._compute_score_from_stats(stats).score)
    out.update({k: sums[k] / n for k in ROUGE_TYPES})
    return out
