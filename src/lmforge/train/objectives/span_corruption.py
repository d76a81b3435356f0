"""T5's span corruption (`span_corruption`): drop random spans of the input, predict them from sentinels.

Of a window of the token stream, `span_noise_density` of the tokens are noise, in spans of mean length
`span_mean_length`; the window always starts with a kept span and ends with a noise span, the span lengths being a
random composition (T5's `random_spans_noise_mask`). The encoder reads the kept tokens with each noise span
replaced by one sentinel, the decoder predicts each sentinel followed by the span it stands for:

    original  The cat sat on the mat .
    inputs    The <s0> on the <s1> <eos>
    targets   <s0> cat sat <s1> mat . <eos>

Sentinel i has id `tokenizer vocabulary + i`: the model's vocabulary must hold `sentinels` ids past the tokenizer's
(`--model.vocab-size`). The window length is chosen, as T5 does, so that the corrupted input is exactly `seq_len`
tokens; every window of a run has the same numbers of noise tokens and spans, so batches need no padding.
Batches are drawn by a generator seeded by (seed, rank) (exact resume); evaluation corrupts consecutive windows of
the val split with a fixed seed, the same at every evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lmforge.config import field
from lmforge.errors import UserError
from lmforge.train.objectives import Options, register
from lmforge.train.objectives.options import val_split, warn_no_evaluation
from lmforge.train.objectives.seq2seq import EncoderDecoderObjective

EVAL_SEED = 0x5EED


@dataclass
class SpanCorruptionOptions(Options):
    span_noise_density: float = field(0.15, "fraction of the input tokens noised", gt=0, lt=1)
    span_mean_length: float = field(3.0, "mean length of a noised span", min=1)
    sentinels: int = field(100, "sentinel ids added after the tokenizer's vocabulary", min=1)


def span_counts(length: int, density: float, mean_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window of `length` tokens: fixed by the length, as in T5."""
    noise = min(max(round(length * density), 1), length - 1)
    spans = max(round(noise / mean_length), 1)
    return noise, min(spans, noise, length - noise)  # every span, and every gap before one, at least 1 token


def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random split of `total` items into `parts` non-empty runs: their lengths."""
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False) + 1)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(length: int, density: float, mean_length: float, rng: np.random.Generator) -> np.ndarray:
    """(length,) bool, True on noise: kept and noise spans alternate, starting with a kept one."""
    noise, spans = span_counts(length, density, mean_length)
    runs = np.stack([_composition(length - noise, spans, rng), _composition(noise, spans, rng)], 1).ravel()
    return np.repeat(np.tile([False, True], spans), runs)


def corrupt(tokens: np.ndarray, mask: np.ndarray, first_sentinel: int, eos_id: int) -> tuple[np.ndarray,
                                                                                             np.ndarray]:
    """tokens (L,) and noise mask (L,) -> encoder inputs and decoder targets, each ending in <eos>."""
    span_start = mask & ~np.concatenate([[False], mask[:-1]])
    sentinel = first_sentinel + np.cumsum(span_start) - 1  # sentinel id of each span, valid on its start
    inputs = np.where(span_start, sentinel, tokens)[~mask | span_start]  # a span collapses to its sentinel
    in_noise = np.flatnonzero(span_start[mask])  # where each span starts among the noise tokens
    targets = np.insert(tokens[mask], in_noise, sentinel[span_start])
    return np.append(inputs, eos_id), np.append(targets, eos_id)


def raw_length(seq_len: int, density: float, mean_length: float) -> int:
    """The longest window whose corrupted input (with <eos>) is at most seq_len tokens."""
    def input_len(n: int) -> int:
        noise, spans = span_counts(n, density, mean_length)
        return n - noise + spans + 1

    n = max(2, seq_len - 1)
    while input_len(n + 1) <= seq_len:
        n += 1
    return n


@register("span_corruption", options=SpanCorruptionOptions)
class SpanCorruption(EncoderDecoderObjective):
    """T5 pretraining on random windows of the token stream."""

    def __init__(self, cfg, rt) -> None:
        super().__init__(cfg, rt)
        o: SpanCorruptionOptions = self.opts
        vocab = self.train_ds.vocab_size
        self.first_sentinel = vocab
        if cfg.model.vocab_size < vocab + o.sentinels:
            raise UserError(f"span_corruption puts {o.sentinels} sentinel ids after the tokenizer's {vocab} tokens, "
                            f"but model.vocab_size is {cfg.model.vocab_size}: the model cannot hold them",
                            fix=f"pass --model.vocab-size {vocab + o.sentinels} (or more), or lower "
                                f"--objective-options.sentinels")
        if cfg.seq_len < 3:
            raise UserError(f"seq_len {cfg.seq_len} is too short to corrupt", fix="raise --seq-len")
        self.length = raw_length(cfg.seq_len, o.span_noise_density, o.span_mean_length)
        noise, spans = span_counts(self.length, o.span_noise_density, o.span_mean_length)
        if spans > o.sentinels:
            raise UserError(f"a window of {self.length} tokens has {spans} noise spans but there are only "
                            f"{o.sentinels} sentinels", fix="raise --objective-options.sentinels or "
                                                            "--objective-options.span-mean-length")
        if noise + spans + 1 > cfg.model.max_seq_len:
            raise UserError(f"the targets ({noise + spans + 1} tokens) are longer than the model's max_seq_len "
                            f"{cfg.model.max_seq_len}", fix="lower --seq-len or --objective-options.span-noise-density")
        if self.train_ds.num_tokens < self.length:
            raise UserError(f"the train split has {self.train_ds.num_tokens} tokens, fewer than one window of "
                            f"{self.length}", where=cfg.data, fix="use a shorter --seq-len or more data")
        self.val_ds = val_split(cfg)
        if self.val_ds is None or self.val_ds.num_tokens < self.length:
            warn_no_evaluation(rt, f"no val split of {self.length}+ tokens in {cfg.data}")
        self.rng = np.random.Generator(np.random.PCG64([cfg.seed, rt.rank]))

    def corrupt_batch(self, windows: np.ndarray, rng: np.random.Generator) -> dict[str, Tensor]:
        o = self.opts
        pairs = [corrupt(w, noise_mask(len(w), o.span_noise_density, o.span_mean_length, rng),
                         self.first_sentinel, self.eos_id) for w in windows.astype(np.int64)]
        tgt_in, labels = self.decoder_io([t.tolist() for _, t in pairs])
        # Same length for every window: no source padding, no mask.
        return {"src": torch.from_numpy(np.stack([i for i, _ in pairs])), "tgt_in": tgt_in, "labels": labels}

    def train_batches(self) -> Iterator[Any]:
        ds = self.train_ds
        while True:
            starts = self.rng.integers(0, ds.num_tokens - self.length + 1, size=self.cfg.batch_size)
            yield self.corrupt_batch(np.stack([ds.window(int(s), self.length) for s in starts]), self.rng)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def eval_batches(self) -> Iterable[Any] | None:
        ds = self.val_ds
        if ds is None or ds.num_tokens < self.length:
            return None
        return self._eval(ds)

    def _eval(self, ds: Any) -> Iterator[dict[str, Tensor]]:
        rng = np.random.Generator(np.random.PCG64([EVAL_SEED, self.rt.rank]))
        windows = np.arange(self.rt.rank, ds.num_tokens // self.length, self.rt.world_size)
        size = self.cfg.batch_size
        n = math.ceil(len(windows) / size)
        for i in range(min(n, self.cfg.eval_batches or n)):
            chunk = windows[i * size:(i + 1) * size]
            yield self.corrupt_batch(np.stack([ds.window(int(w) * self.length, self.length) for w in chunk]), rng)


__all__ = ["SpanCorruption", "SpanCorruptionOptions", "corrupt", "noise_mask", "raw_length", "span_counts"]
