"""Contrastive sentence embeddings on an encoder (`contrastive`): InfoNCE with in-batch negatives.

A sentence's embedding is the L2-normalised mean of the encoder's hidden states over `<cls> tokens <sep>`
(`lmforge.eval.retrieval`, shared with `lmforge embed`). For a batch of B (anchor, positive) pairs the loss is
cross-entropy of each anchor's cosine similarities to all B positives, divided by the temperature
(`contrastive_temperature`), with its own positive as the label: the other B - 1 positives are the negatives.

- supervised (`--objective-options.pairs FILE`): the pairs of the file (source = anchor, target = positive), in a
  fresh order each epoch; `pairs_val_fraction` of them held out.
- unsupervised (no pairs file): SimCSE. The anchor and the positive are the same text, a random segment of a
  training document, seen through two different dropout masks, so the model needs `--model.dropout` above 0.
  Held out: the first and second halves of val documents (does the model put a text's continuation nearest?).

Evaluation reports the loss on batches of held-out pairs and, over all of them at once, retrieval top-1 accuracy
and mean reciprocal rank of each anchor's positive among every held-out positive (`lmforge.eval.retrieval`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import field
from lmforge.data.examples import EpochSampler, held_out, pad, read_pairs
from lmforge.errors import UserError
from lmforge.eval.retrieval import encode, frame, framing, retrieval_metrics, retrieval_sums, sentence_ids
from lmforge.models.registry import Kind
from lmforge.progress import console
from lmforge.train.objectives import Objective, Output, register, train_only
from lmforge.train.objectives.masked_lm import Documents
from lmforge.train.objectives.options import (
    TextPairsOptions,
    require_pair_lengths,
    require_vocab,
    val_split,
    warn_no_evaluation,
)


@dataclass
class ContrastiveOptions(TextPairsOptions):
    contrastive_temperature: float = field(0.05, "temperature of the InfoNCE softmax", gt=0)


def info_nce(anchors: Tensor, positives: Tensor, temperature: float) -> Tensor:
    """Summed InfoNCE loss of unit vectors anchors (B, C) against positives (B, C); row i's positive is i."""
    logits = anchors @ positives.T / temperature  # (B, B) cosine similarities / t
    return F.cross_entropy(logits, torch.arange(len(anchors), device=logits.device), reduction="sum")


@register("contrastive", options=ContrastiveOptions)
class Contrastive(Objective):
    """SimCSE (unsupervised) or in-batch-negative (supervised) sentence-embedding training of an encoder."""

    kinds = (Kind.ENCODER,)
    opts: ContrastiveOptions

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import TokenDataset

        super().__init__(cfg, rt)
        o = self.opts
        self.train_ds = TokenDataset.open(cfg.data, "train")
        require_vocab(cfg, self.train_ds.vocab_size, cfg.data)
        self.tokenizer_dir = self.train_ds.tokenizer_path.parent
        self.special_ids = self.train_ds.special_ids
        self.pad_id = self.special_ids.get("pad", 0)
        self.supervised = bool(o.pairs)
        if self.supervised:
            self._load_pairs()
        else:
            self._load_documents()

    def build_model(self) -> nn.Module:
        model = super().build_model()
        return train_only(model, model.embed, model.encoder)  # the embedding is the mean of the hidden states

    # ------------------------------------------------------------------------------------------- supervised
    def _load_pairs(self) -> None:
        from lmforge.data.tokenizer import load_tokenizer

        cfg, o = self.cfg, self.opts
        max_len = cfg.model.max_seq_len
        require_pair_lengths(cfg)
        tok = load_tokenizer(self.train_ds.tokenizer_path)
        texts = read_pairs(o.pairs, o.source_column, o.target_column)
        fix = ("shorten the texts, or truncate with --objective-options.max-source-len / max-target-len, or raise "
               "--model.max-seq-len")
        self.anchors = sentence_ids(tok, [s for s, _ in texts], self.special_ids, o.max_source_len or max_len,
                                    truncate=o.max_source_len is not None, what="the source of pair", where=o.pairs,
                                    fix=fix)
        self.positives = sentence_ids(tok, [t for _, t in texts], self.special_ids, o.max_target_len or max_len,
                                      truncate=o.max_target_len is not None, what="the target of pair",
                                      where=o.pairs, fix=fix)
        val = held_out(len(texts), o.pairs_val_fraction)
        self.train_idx, self.val_idx = np.flatnonzero(~val), np.flatnonzero(val)
        if len(self.train_idx) < 2 * self.rt.world_size:
            raise UserError(f"only {len(self.train_idx)} training pairs: in-batch negatives need two or more per "
                            f"batch", where=o.pairs, fix="give more pairs")
        if len(self.val_idx) < 2 and self.rt.is_main:
            console.print(f"[yellow]fewer than two held-out pairs in {o.pairs}: no evaluation, no best "
                          f"checkpoint[/yellow]")
        self.sampler = EpochSampler(len(self.train_idx), cfg.batch_size, cfg.seed, self.rt.rank, self.rt.world_size)

    # ----------------------------------------------------------------------------------------- unsupervised
    def _load_documents(self) -> None:

        cfg = self.cfg
        if cfg.model.dropout <= 0:
            raise UserError("unsupervised contrastive training (SimCSE, no pairs file) makes its two views of a "
                            "sentence with dropout, but model.dropout is 0: both views would be identical",
                            fix="pass --model.dropout 0.1, or give --objective-options.pairs FILE")
        self.segment_len = cfg.seq_len - framing(self.special_ids)
        if self.segment_len < 1:
            raise UserError(f"seq_len {cfg.seq_len} leaves no room for text after <cls> <sep>", fix="raise --seq-len")
        self.train_docs = Documents(self.train_ds)
        if self.train_docs.count(1) < 2:
            raise UserError(f"unsupervised contrastive training needs two or more non-empty documents in the "
                            f"train split (it has {self.train_docs.count(1)})", where=cfg.data,
                            fix="prepare more documents, or give --objective-options.pairs FILE")
        self.rng = np.random.Generator(np.random.PCG64([cfg.seed, self.rt.rank]))
        self.val_pairs: tuple[list[list[int]], list[list[int]]] | None = None
        val_ds = val_split(cfg)
        if val_ds is not None:
            self.val_pairs = self._halves(Documents(val_ds))
        if self.val_pairs is None:
            warn_no_evaluation(self.rt, f"no val split with two or more documents in {cfg.data}")

    def _halves(self, docs: Documents) -> tuple[list[list[int]], list[list[int]]] | None:
        """(first halves, second halves) of the start of every document of two or more tokens."""
        first, second = [], []
        limit = self.pairs_limit()
        for d in np.flatnonzero(docs.lengths >= 2)[self.rt.rank::self.rt.world_size][:limit]:
            n = min(int(docs.lengths[d]), 2 * self.segment_len)
            ids = docs.ds.window(int(docs.starts[d]), n).astype(np.int64).tolist()
            first.append(frame(ids[:n // 2], self.special_ids))
            second.append(frame(ids[n // 2:], self.special_ids))
        return (first, second) if len(first) >= 2 else None

    # ------------------------------------------------------------------------------------------------ batches
    def pairs_limit(self) -> int | None:
        """Held-out pairs per evaluation and rank: eval_batches batches' worth (0 = all)."""
        return self.cfg.eval_batches * self.cfg.batch_size or None

    def _pair_batch(self, anchors: Sequence[list[int]], positives: Sequence[list[int]]) -> dict[str, Tensor]:
        a, a_mask = pad(anchors, self.pad_id)
        b, b_mask = pad(positives, self.pad_id)
        return {"a": a, "a_mask": a_mask, "b": b, "b_mask": b_mask}

    def train_batches(self) -> Iterator[Any]:
        if self.supervised:
            for chunk in self.sampler:
                idx = self.train_idx[chunk]
                yield self._pair_batch([self.anchors[i] for i in idx], [self.positives[i] for i in idx])
            return
        docs, B = self.train_docs, self.cfg.batch_size
        distinct = docs.count(1) >= B  # two segments of one document in a batch would be a false negative
        while True:
            chosen: list[int] = []
            while len(chosen) < B:
                d = docs.sample(self.rng, min_len=1)
                if not distinct or d not in chosen:
                    chosen.append(d)
            texts = [frame(docs.segment(self.rng, d, self.segment_len).tolist(), self.special_ids) for d in chosen]
            a, a_mask = pad(texts, self.pad_id)
            yield {"a": a, "a_mask": a_mask}  # the positive is the same text through other dropout masks

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict() if self.supervised else {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.supervised:
            self.sampler.load_state_dict(state)
        else:
            self.rng.bit_generator.state = state["rng"]

    def eval_batches(self) -> Iterable[Any] | None:
        """One batch holding every held-out pair (up to pairs_limit): retrieval ranks among all of them (with
        several processes, among this rank's share)."""
        if self.supervised:
            idx = self.val_idx[self.rt.rank::self.rt.world_size][:self.pairs_limit()]
            if len(idx) < 2:
                return None
            return [self._pair_batch([self.anchors[i] for i in idx], [self.positives[i] for i in idx])]
        if self.val_pairs is None:
            return None
        return [self._pair_batch(*self.val_pairs)]

    # ------------------------------------------------------------------------------------------------- loss
    def forward(self, model: nn.Module, batch: Any) -> Output:
        """InfoNCE over chunks of batch_size pairs (one chunk in training), retrieval over the whole batch."""
        b = self.to_device(batch)
        a, a_mask = b["a"], b["a_mask"]
        size, t = self.cfg.batch_size, self.opts.contrastive_temperature
        loss_sum, za_all, zb_all = 0.0, [], []
        for s in range(0, len(a), size):
            if "b" in b:
                za = encode(model, a[s:s + size], a_mask[s:s + size])
                zb = encode(model, b["b"][s:s + size], b["b_mask"][s:s + size])
            else:  # SimCSE: one pass over the batch twice; each row gets its own dropout mask
                rows, mask = a[s:s + size], a_mask[s:s + size]
                za, zb = encode(model, torch.cat([rows, rows]), torch.cat([mask, mask])).chunk(2)
            loss_sum = loss_sum + info_nce(za, zb, t)
            za_all.append(za.detach())
            zb_all.append(zb.detach())
        n = len(a)
        tokens = a_mask.sum() + (b["b_mask"].sum() if "b" in b else a_mask.sum())
        return Output(loss=loss_sum / n, sums={"loss": loss_sum.detach(), "count": float(n), "tokens": tokens,
                                               **retrieval_sums(torch.cat(za_all), torch.cat(zb_all))})

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / max(sums["count"], 1)
        m = retrieval_metrics(sums)
        return {"loss": loss, "retrieval_top1": m["top1"], "retrieval_mrr": m["mrr"], "pairs": sums["count"]}


__all__ = ["Contrastive", "ContrastiveOptions", "info_nce"]
