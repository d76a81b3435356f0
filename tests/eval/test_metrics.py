"""The shared metric functions against hand-computed values and against the libraries they wrap."""

from __future__ import annotations

import pytest
import torch

from lmforge.eval.metrics import (
    bleu,
    chrf,
    class_sums,
    classification_scores,
    confusion_matrix,
    macro_f1,
    rouge,
)

GOLD = ["a", "a", "a", "b", "b", "c"]
PRED = ["a", "a", "b", "b", "c", "c"]


def test_classification_scores_match_hand_computed_values():
    s = classification_scores(PRED, GOLD)
    assert s.classes == ["a", "b", "c"]
    assert s.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows gold, columns predicted
    assert s.accuracy == pytest.approx(4 / 6) and s.examples == 6
    a, b, c = (s.per_class[k] for k in "abc")
    assert (a.precision, a.recall, a.f1, a.support, a.predicted) == pytest.approx((1.0, 2 / 3, 0.8, 3, 2))
    assert (b.precision, b.recall, b.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (c.precision, c.recall, c.f1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert s.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    d = s.to_dict()
    assert d["per_class"]["a"]["f1"] == pytest.approx(0.8) and d["confusion_matrix"] == s.confusion


def test_macro_f1_is_the_training_objectives_from_additive_counts():
    """One definition: the objective sums `class_sums` over batches; scoring predictions gives the same figure."""
    index = {"a": 0, "b": 1, "c": 2, "d": 3}
    pred = torch.tensor([index[p] for p in PRED])
    gold = torch.tensor([index[y] for y in GOLD])
    halves = [class_sums(pred[:3], gold[:3], 4), class_sums(pred[3:], gold[3:], 4)]
    sums = {k: float(halves[0][k] + halves[1][k]) for k in halves[0]}
    # "d" is one of the classes, but neither a label nor a prediction: it says nothing and is left out.
    s = classification_scores(PRED, GOLD, classes=["a", "b", "c", "d"])
    assert s.macro_f1 == pytest.approx(macro_f1(sums, 4)) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s.per_class["d"].f1 == 0.0 and s.confusion[3] == [0, 0, 0, 0]


def test_classification_scores_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    gold = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0]
    pred = [0, 2, 2, 2, 1, 1, 0, 0, 1, 2, 2, 0]
    s = classification_scores(pred, gold)
    p, r, f, support = metrics.precision_recall_fscore_support(gold, pred, zero_division=0)
    assert [s.per_class[c].precision for c in range(3)] == pytest.approx(list(p))
    assert [s.per_class[c].recall for c in range(3)] == pytest.approx(list(r))
    assert [s.per_class[c].f1 for c in range(3)] == pytest.approx(list(f))
    assert [s.per_class[c].support for c in range(3)] == list(support)
    assert s.macro_f1 == pytest.approx(metrics.f1_score(gold, pred, average="macro"))
    assert s.accuracy == pytest.approx(metrics.accuracy_score(gold, pred))
    assert s.confusion == metrics.confusion_matrix(gold, pred).tolist()


def test_classification_inputs_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        confusion_matrix(["a", "b"], ["a", "b", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="'z' is not one of the classes"):
        classification_scores(["a", "z"], ["a", "b"], classes=["a", "b"])
    with pytest.raises(ValueError, match="no labels"):
        classification_scores([], [])


HYPS = ["the cat sat on the mat", "a dog barked at the postman", "it is raining today"]
REFS = ["the cat sat on the mat", "the dog barked at a postman", "today it rains"]


def test_bleu_and_chrf_are_sacrebleus_corpus_scores_with_their_signature():
    import sacrebleu

    b = bleu(HYPS, REFS)
    assert b.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert 0 < b.score < 100
    assert b.signature.startswith("nrefs:1|") and "tok:13a" in b.signature and "version:" in b.signature
    c = chrf(HYPS, REFS)
    assert c.score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert "nc:6" in c.signature and "nw:0" in c.signature
    assert bleu(REFS, REFS).score == pytest.approx(100.0) and chrf(REFS, REFS).score == pytest.approx(100.0)


def test_bleu_takes_several_references_per_hypothesis():
    import sacrebleu

    second = ["a cat sat on the mat", "the dog barked at the postman", "it is raining today"]
    b = bleu(HYPS, [[r, s] for r, s in zip(REFS, second, strict=True)])
    assert b.score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, second]).score)
    assert b.signature.startswith("nrefs:2|")
    assert b.score > bleu(HYPS, REFS).score
    with pytest.raises(ValueError, match="3 hypotheses for 2 references"):
        bleu(HYPS, REFS[:2])
    with pytest.raises(ValueError, match="same number of references"):
        bleu(HYPS[:2], [["x"], ["y", "z"]])


def test_rouge_matches_a_hand_computed_example_averaged_over_examples():
    # rouge-score's README pair: 6 shared unigrams of 8 and 9, 2 shared bigrams of 7 and 8, an LCS of 5
    # ("the quick brown jump(s) the", stemmed), so F = 2*6/17, 2*2/15, 2*5/17.
    ref, pred = "The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."
    one = rouge([pred], [ref])
    assert one == pytest.approx({"rouge_1": 12 / 17, "rouge_2": 4 / 15, "rouge_l": 10 / 17})
    both = rouge([pred, "same words"], [ref, "same words"])  # a perfect second example: the mean of the two
    assert both == pytest.approx({k: (v + 1) / 2 for k, v in one.items()})
    # Stemming on: "jumped" matches "jumps".
    assert rouge(["the dog jumped"], ["the dog jumps"])["rouge_1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        rouge(["x"], ["x", "y"])
