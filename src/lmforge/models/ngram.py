"""n-gram language model with interpolated modified Kneser-Ney smoothing: the baseline every neural model must beat.

    from lmforge.eval.perplexity import ngram_baseline

    print(ngram_baseline("data/prepared", order=3))   # {'loss': ..., 'ppl': ..., 'bpb': ..., 'order': 3, ...}

Smoothing is interpolated *modified* Kneser-Ney (Chen & Goodman 1998, section 3): three absolute discounts per
order (for n-grams seen once, twice, three or more times), estimated from that order's count-of-counts, and every
order interpolated with the one below, down to a uniform distribution over the vocabulary:

    P_k(w | h) = (max(c_k(h w) - D_k(c), 0) + gamma_k(h) * P_{k-1}(w | h')) / sum_v c_k(h v)
    gamma_k(h) = D_k1 N1(h .) + D_k2 N2(h .) + D_k3 N3+(h .)          (the mass the discounts freed)

where h' drops h's oldest token. The highest order counts n-grams (c = raw counts); every lower order counts, for
each k-gram, the distinct tokens seen just before it (continuation counts, N1+(. h w)), which is what makes a
word that only ever follows one context ("Francisco") unlikely as a generic unigram. A context never seen at an
order leaves the lower order's probability unchanged. The result sums to exactly 1 over the vocabulary for any
history. Passing one `discount` instead gives plain interpolated Kneser-Ney (the same discount for every count).

Tokens are one stream: documents follow each other with their <eos>, so a context may cross a document boundary,
as the Transformer's training windows do; only the first tokens of a stream have a shorter history.

Everything is numpy, with no Python loop over tokens: an n-gram is packed into one uint64 key (token ids as digits
in base vocab_size), counted with `np.unique`, and looked up with `np.searchsorted`. A few million tokens fit in
seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmforge.errors import UserError

CHUNK = 1 << 20  # histories scored per vectorised pass (bounds the temporary arrays)


@dataclass
class _Order:
    """The tables of one order k: its k-grams and their contexts (the k-1 tokens before the last)."""

    keys: np.ndarray  # (G,) uint64, sorted: the k-grams, packed
    counts: np.ndarray  # (G,) int64: raw counts (highest order) or continuation counts (lower orders)
    ctx_keys: np.ndarray  # (C,) uint64, sorted: the distinct contexts, packed
    ctx_total: np.ndarray  # (C,) float64: sum of `counts` over the k-grams of each context
    ctx_gamma: np.ndarray  # (C,) float64: sum of the discounts taken from them (the back-off mass)
    discounts: np.ndarray  # (4,) float64: D(0)=0, D(1), D(2), D(3+)


class NGramLM:
    """An order-`order` n-gram model over token ids 0..vocab_size-1 (order 1 = unigram, 2 = bigram, ...)."""

    def __init__(self, order: int = 3, vocab_size: int = 0, discount: float | None = None) -> None:
        if order < 1:
            raise UserError(f"n-gram order must be at least 1, got {order}")
        if vocab_size < 1:
            raise UserError(f"vocab_size must be positive, got {vocab_size}")
        if vocab_size**order >= 2**64:
            highest = max(k for k in range(1, order) if vocab_size**k < 2**64) if vocab_size < 2**64 else 0
            raise UserError(f"an order-{order} n-gram over {vocab_size} tokens does not fit a 64-bit key",
                            fix=f"use order {highest} or lower")
        if discount is not None and not 0.0 < discount <= 1.0:
            raise UserError(f"discount must be in (0, 1], got {discount}")
        self.order, self.vocab_size, self.discount = order, vocab_size, discount
        self.orders: list[_Order] = []  # orders[k-1] holds order k
        self.train_tokens = 0

    # --- fitting ----------------------------------------------------------------------------------------------
    def fit(self, tokens: np.ndarray) -> NGramLM:
        """Count the n-grams of a token stream and build every order's tables."""
        t = np.asarray(tokens)
        if t.size and int(t.max()) >= self.vocab_size:
            raise UserError(f"token id {int(t.max())} is outside the vocabulary of {self.vocab_size}")
        t = t.astype(np.uint64)
        V, n = np.uint64(self.vocab_size), self.order
        self.train_tokens = len(t)
        # distinct[k] = (sorted distinct k-grams, their raw counts), for k = 2..n (and n = 1 on its own).
        distinct = {k: np.unique(self._pack_stream(t, k), return_counts=True) for k in range(2, n + 1)}
        if n == 1:
            distinct[1] = np.unique(t, return_counts=True)
        self.orders = []
        for k in range(1, n + 1):
            if k == n:
                keys, counts = distinct[k]
            else:
                # Continuation count of a k-gram: how many distinct tokens precede it = how many distinct
                # (k+1)-grams end with it. Suffixes of the sorted (k+1)-grams, counted.
                keys, counts = np.unique(distinct[k + 1][0] % V**np.uint64(k), return_counts=True)
            self.orders.append(self._tables(keys, counts.astype(np.int64)))
        return self

    def _pack_stream(self, t: np.ndarray, k: int) -> np.ndarray:
        """Keys of every k-gram of uint64 stream `t`: sum_j t[i+j] * V^(k-1-j), built digit by digit."""
        if len(t) < k:
            return np.zeros(0, dtype=np.uint64)
        V = np.uint64(self.vocab_size)
        key = t[: len(t) - k + 1].copy()
        for j in range(1, k):
            key = key * V + t[j: len(t) - k + 1 + j]
        return key

    def _tables(self, keys: np.ndarray, counts: np.ndarray) -> _Order:
        V = np.uint64(self.vocab_size)
        discounts = self._discounts(counts)
        if len(keys) == 0:
            empty = np.zeros(0, dtype=np.float64)
            return _Order(keys, counts, np.zeros(0, dtype=np.uint64), empty, empty, discounts)
        ctx = keys // V  # non-decreasing, since keys are sorted
        ctx_keys, starts = np.unique(ctx, return_index=True)
        total = np.add.reduceat(counts, starts).astype(np.float64)
        gamma = np.add.reduceat(discounts[np.minimum(counts, 3)], starts)
        return _Order(keys, counts, ctx_keys, total, gamma, discounts)

    def _discounts(self, counts: np.ndarray) -> np.ndarray:
        """D(0..3+) of one order: modified KN's estimates from count-of-counts (or the one fixed discount)."""
        if self.discount is not None:
            return np.array([0.0, self.discount, self.discount, self.discount])
        n1, n2, n3, n4 = (float(np.count_nonzero(counts == r)) for r in (1, 2, 3, 4))
        y = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5
        # Chen & Goodman's formulas; a missing count-of-count (tiny data) falls back to the previous discount.
        d1 = 1 - 2 * y * n2 / n1 if n1 > 0 else y
        d2 = 2 - 3 * y * n3 / n2 if n2 > 0 else d1
        d3 = 3 - 4 * y * n4 / n3 if n3 > 0 else d2
        # D(r) <= r keeps every discounted count non-negative (and so the distribution normalised); D > 0 keeps
        # mass for unseen tokens.
        return np.array([0.0] + [float(np.clip(d, 0.05, r)) for r, d in ((1, d1), (2, d2), (3, d3))])

    # --- scoring ----------------------------------------------------------------------------------------------
    def prob(self, history: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """P(target | history) for each row: `history` (M, order-1) holds the preceding tokens, oldest first,
        with -1 where the stream had none (its first tokens); `targets` (M,)."""
        if not self.orders:
            raise RuntimeError("fit the model before scoring with it")
        history = np.asarray(history, dtype=np.int64).reshape(len(targets), self.order - 1)
        targets = np.asarray(targets, dtype=np.int64)
        V = np.uint64(self.vocab_size)
        p = np.full(len(targets), 1.0 / self.vocab_size)
        ctx = np.zeros(len(targets), dtype=np.uint64)  # packed context of the current order
        known = np.ones(len(targets), dtype=bool)  # the stream has this many tokens of history
        for k, tab in enumerate(self.orders, start=1):
            if k > 1:  # extend the context by one older token
                col = history[:, self.order - k]
                known &= col >= 0
                ctx = ctx + np.where(col >= 0, col, 0).astype(np.uint64) * V ** np.uint64(k - 2)
            if len(tab.ctx_keys) == 0:
                continue
            i = np.minimum(np.searchsorted(tab.ctx_keys, ctx), len(tab.ctx_keys) - 1)
            seen = known & (tab.ctx_keys[i] == ctx)
            key = ctx * V + targets.astype(np.uint64)
            j = np.minimum(np.searchsorted(tab.keys, key), len(tab.keys) - 1)
            c = np.where(tab.keys[j] == key, tab.counts[j], 0)
            p_k = (np.maximum(c - tab.discounts[np.minimum(c, 3)], 0.0) + tab.ctx_gamma[i] * p) / tab.ctx_total[i]
            p = np.where(seen, p_k, p)
        return p

    def distribution(self, context: list[int] | np.ndarray) -> np.ndarray:
        """P(w | context) for every w in the vocabulary, (vocab_size,): the last order-1 tokens of `context` count."""
        history = np.full(self.order - 1, -1, dtype=np.int64)
        ctx = np.asarray(context, dtype=np.int64)[-(self.order - 1):] if self.order > 1 else np.zeros(0, np.int64)
        if len(ctx):
            history[-len(ctx):] = ctx
        return self.prob(np.tile(history, (self.vocab_size, 1)), np.arange(self.vocab_size))

    def nll_sum(self, tokens: np.ndarray) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of tokens[1:] given what precedes each, and how many were scored."""
        t = np.asarray(tokens, dtype=np.int64)
        total = 0.0
        for lo in range(1, len(t), CHUNK):
            pos = np.arange(lo, min(lo + CHUNK, len(t)))
            offsets = np.arange(self.order - 1, 0, -1)  # oldest first
            src = pos[:, None] - offsets[None, :]
            history = np.where(src >= 0, t[np.maximum(src, 0)], -1)
            total -= float(np.log(self.prob(history, t[pos])).sum())
        return total, max(len(t) - 1, 0)
