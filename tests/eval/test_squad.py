from __future__ import annotations

import pytest

from lmforge.eval.squad import (
    apply_threshold,
    best_over_golds,
    best_threshold,
    best_threshold_scores,
    exact_match,
    normalize_answer,
    squad_scores,
    token_f1,
)


@pytest.mark.parametrize(("text", "normal"), [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple, a pear and THE plum. ", "apple pear and plum"),
    ("theatre another", "theatre another"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("a", ""),
])
def test_normalisation_lowercases_drops_punctuation_articles_and_extra_space(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Denver Broncos", "Denver Broncos.") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    # pred "denver broncos win", gold "broncos": common 1, precision 1/3, recall 1 -> F1 2*(1/3)/(4/3) = 1/2
    assert token_f1("Denver Broncos win", "the Broncos") == pytest.approx(0.5)
    # repeated tokens count with multiplicity: pred "a b b" -> "b b" (article a dropped), gold "b c": common 1,
    # precision 1/2, recall 1/2 -> 1/2
    assert token_f1("a b b", "b c") == pytest.approx(0.5)
    assert token_f1("cat", "dog") == 0.0
    # the empty answer: 1 against the empty gold only
    assert token_f1("", "") == 1.0 and token_f1("", "dog") == 0.0 and token_f1("the", "dog") == 0.0


def test_a_question_scores_its_best_gold_and_unanswerable_means_the_empty_gold():
    golds = ["Denver Broncos", "Broncos", "the Denver team"]
    assert best_over_golds(exact_match, "broncos", golds) == 1.0
    # against "Denver Broncos": 1 common of pred 2 -> p 1/2, r 1/2 -> 1/2; "the denver team" -> denver team: p 1/2,
    # r 1/2 -> 1/2; "Broncos": p 0
    assert best_over_golds(token_f1, "Denver Colts", golds) == pytest.approx(0.5)
    assert best_over_golds(exact_match, "", []) == 1.0 and best_over_golds(exact_match, "x", []) == 0.0
    assert best_over_golds(token_f1, "", [""]) == 1.0


def test_squad_scores_over_answerable_and_unanswerable_questions():
    golds = {"a": ["Paris"], "b": ["the red car", "red car"], "c": [], "d": []}
    preds = {"a": "paris", "b": "car", "c": "", "d": "London"}
    s = squad_scores(preds, golds)
    # EM: a 1, b 0, c 1, d 0 -> 2/4. F1: a 1, b "car" vs "red car" p 1 r 1/2 -> 2/3, c 1, d 0 -> (1 + 2/3 + 1) / 4
    assert s["exact_match"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx((1 + 2 / 3 + 1) / 4)
    assert s["has_answer_exact_match"] == pytest.approx(0.5) and s["no_answer_exact_match"] == pytest.approx(0.5)
    assert s["questions"] == 4
    assert "has_answer_f1" not in squad_scores({"a": "paris"}, {"a": ["Paris"]})  # v1: no split


def test_threshold_blanks_the_confident_no_answers():
    assert apply_threshold({"a": "x", "b": "y"}, {"a": 0.5, "b": -1.0}, 0.0) == {"a": "", "b": "y"}


def test_best_threshold_walks_the_margins_as_the_v2_script():
    golds = {"a": ["Paris"], "b": [], "c": ["red car"], "d": []}
    preds = {"a": "Paris", "b": "Rome", "c": "car", "d": "blue"}
    margins = {"a": -2.0, "b": 1.0, "c": -1.0, "d": 3.0}
    # Nothing answered: b and d right -> 2. In increasing margin: a (+1) -> 3 at -2.0; c (EM +0) -> 3;
    # b (-1) -> 2; d (-1) -> 1. Best EM 3/4 at threshold -2.0.
    # F1: a +1 -> 3; c +2/3 -> 3.667 at -1.0; b -> 2.667; d -> 1.667. Best F1 3.667/4 at -1.0.
    s = best_threshold_scores(preds, golds, margins)
    assert s["best_exact_match"] == pytest.approx(3 / 4) and s["best_exact_match_threshold"] == -2.0
    assert s["best_f1"] == pytest.approx((3 + 2 / 3) / 4) and s["best_f1_threshold"] == -1.0
    # Answering nothing best: the unanswerable fraction, at a threshold 1 below the smallest margin.
    assert best_threshold({"a": 0.0, "b": 0.0}, {"a": True, "b": False}, {"a": 1.0, "b": 2.0}) == (0.5, 0.0)
    # An empty prediction on an unanswerable question is right whether answered or not.
    assert best_threshold({"b": 1.0}, {"b": False}, {"b": 0.3}, {"b": True}) == (1.0, -0.7)


def test_a_threshold_of_answering_nothing_carried_to_the_same_questions_abstains_on_all():
    # Margins below 0 and answering nothing best: the v2.0 script's 0.0 would answer a and b; this threshold none.
    golds, preds, margins = {"a": [], "b": [], "c": ["x"]}, {"a": "p", "b": "q", "c": "y"}, {"a": -3.0, "b": -2.0,
                                                                                              "c": float("inf")}
    s = best_threshold_scores(preds, golds, margins)
    assert s["best_f1"] == pytest.approx(2 / 3) and s["best_f1_threshold"] == -4.0
    assert apply_threshold(preds, margins, s["best_f1_threshold"]) == {"a": "", "b": "", "c": ""}
    # the best threshold reproduces its score through apply_threshold
    final = apply_threshold(preds, margins, s["best_f1_threshold"])
    assert squad_scores(final, golds)["f1"] == pytest.approx(s["best_f1"])
