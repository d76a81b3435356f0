from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from lmforge.errors import UserError
from lmforge.eval.perplexity import evaluate_ngram
from lmforge.models.ngram import NGramLM


def zipf_stream(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    """A Markov-ish stream with a skewed vocabulary: some tokens are frequent, many rare (all count-of-counts occur)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    t = rng.choice(vocab, size=n, p=p / p.sum())
    t[1::3] = (t[0::3][: len(t[1::3])] + 1) % vocab  # some structure for the higher orders to find
    return t


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("discount", [None, 0.75])
def test_probabilities_sum_to_one_for_any_context(order, discount):
    vocab = 40  # tokens 30..39 never occur
    model = NGramLM(order, vocab, discount=discount).fit(zipf_stream(3000, 30))
    contexts = [[], [0], [0, 1, 2], [5, 5, 5], [39, 38, 37], [0, 39, 1], list(range(10))]
    for ctx in contexts:
        p = model.distribution(ctx)
        assert p.shape == (vocab,)
        assert (p > 0).all()  # unseen tokens keep some mass, through the uniform floor
        assert p.sum() == pytest.approx(1.0, abs=1e-12), ctx


def test_bigram_matches_a_hand_computed_interpolated_kneser_ney():
    # Stream "a b a c" (a=0, b=1, c=2; d=3 never occurs), plain interpolated KN with D = 1/2.
    model = NGramLM(2, 4, discount=0.5).fit(np.array([0, 1, 0, 2]))
    # Unigram level, continuation counts: a follows {b}, b follows {a}, c follows {a}: 1 each, total 3;
    # freed mass 3 * 1/2, spread uniformly over the 4 tokens.
    p1 = {w: (Fraction(max(n - Fraction(1, 2), 0)) + Fraction(3, 2) * Fraction(1, 4)) / 3
          for w, n in enumerate([1, 1, 1, 0])}
    assert p1[0] == Fraction(7, 24) and p1[3] == Fraction(1, 8)
    # Context a: c(a b) = c(a c) = 1, total 2, freed mass 2 * 1/2. Context b: c(b a) = 1. Context c: never seen.
    expected = {
        (0, 1): (Fraction(1, 2) + 1 * p1[1]) / 2,  # 19/48
        (0, 0): (0 + 1 * p1[0]) / 2,
        (0, 3): (0 + 1 * p1[3]) / 2,
        (1, 0): (Fraction(1, 2) + Fraction(1, 2) * p1[0]) / 1,
        (1, 2): (0 + Fraction(1, 2) * p1[2]) / 1,
        (2, 0): p1[0],  # unseen context: the unigram level unchanged
        (2, 3): p1[3],
    }
    hist = np.array([[h] for h, _ in expected])
    got = model.prob(hist, np.array([w for _, w in expected]))
    np.testing.assert_allclose(got, [float(v) for v in expected.values()], rtol=1e-12)
    assert expected[(0, 1)] == Fraction(19, 48)


class ReferenceKN:
    """Interpolated modified Kneser-Ney straight from Chen & Goodman's formulas, with dicts (slow, obvious)."""

    def __init__(self, tokens: list[int], order: int, vocab: int) -> None:
        self.order, self.vocab = order, vocab
        raw = {k: Counter(tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)) for k in range(1, order + 1)}
        self.counts = {order: raw[order]}
        for k in range(1, order):
            self.counts[k] = Counter(g[1:] for g in raw[k + 1])  # distinct left neighbours
        self.d = {}
        for k, table in self.counts.items():
            n = Counter(table.values())
            assert all(n[r] > 0 for r in (1, 2, 3, 4)), "test stream too small for the full formulas"
            y = n[1] / (n[1] + 2 * n[2])
            self.d[k] = [0.0, 1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3]]
            assert all(0.05 < self.d[k][r] <= r for r in (1, 2, 3))

    def prob(self, history: list[int], w: int, k: int | None = None) -> float:
        k = self.order if k is None else k
        if k == 0:
            return 1 / self.vocab
        lower = self.prob(history, w, k - 1)
        if len(history) < k - 1:
            return lower
        ctx = tuple(history[len(history) - (k - 1):]) if k > 1 else ()
        table, d = self.counts[k], self.d[k]
        followers = {g: c for g, c in table.items() if g[:-1] == ctx}
        if not followers:
            return lower
        total = sum(followers.values())
        gamma = sum(d[min(c, 3)] for c in followers.values())
        c = table.get((*ctx, w), 0)
        return (max(c - d[min(c, 3)], 0) + gamma * lower) / total


def test_modified_kneser_ney_matches_the_textbook_formulas():
    order, vocab = 3, 200  # big enough that every order has n-grams seen once, twice, three and four times
    train = zipf_stream(4000, vocab, seed=1)
    model = NGramLM(order, vocab).fit(train)
    ref = ReferenceKN(train.tolist(), order, vocab)
    for k in range(1, order + 1):
        np.testing.assert_allclose(model.orders[k - 1].discounts, ref.d[k], rtol=1e-12)

    test = zipf_stream(60, vocab, seed=2)
    test[10:14] = [199, 198, 197, 196]  # rare tokens: unseen contexts and n-grams
    # The first tokens of the stream have a shorter history: those rows exercise the lower orders alone.
    expected = [-math.log(ref.prob(test[max(0, i - order + 1):i].tolist(), int(test[i]))) for i in range(1, 60)]
    nll, count = model.nll_sum(test)
    assert count == 59
    assert nll == pytest.approx(sum(expected), rel=1e-10)
    score = evaluate_ngram(model, test, bytes_per_token=2.0)
    assert score.loss == pytest.approx(sum(expected) / 59, rel=1e-10)
    assert score.ppl == pytest.approx(math.exp(score.loss))
    assert score.bpb == pytest.approx(score.loss / math.log(2) / 2.0)


def test_fits_a_million_tokens():
    # Counting with Python loops over tokens would take minutes here (a slow suite); the vectorised fit ~0.2 s.
    tokens = zipf_stream(1_000_000, 8192, seed=3)
    model = NGramLM(3, 8192).fit(tokens)
    assert sum(len(o.keys) for o in model.orders) > 0


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(UserError, match="does not fit a 64-bit key"):
        NGramLM(5, 8192)
    with pytest.raises(UserError, match="outside the vocabulary"):
        NGramLM(2, 10).fit(np.array([1, 2, 10]))
    with pytest.raises(UserError, match="at least 1"):
        NGramLM(0, 10)
