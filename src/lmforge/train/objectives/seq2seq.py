"""Sequence-to-sequence cross-entropy on text pairs (`seq2seq`), and what the encoder-decoder objectives share.

A pairs file is TSV or CSV with a header row, or JSONL with one object per line (any of them may be gzipped; read
by `lmforge.data.examples.read_pairs`); the columns (header names / JSON keys) are
`--objective-options.source-column` and `target-column`. The prepared data directory
(`--data`) supplies the tokenizer. A fixed fraction of the pairs (`pairs_val_fraction`, chosen by a hash of the
pair's index, so always the same ones) is held out for evaluation. A bad pair (an empty source or target, one
longer than the model's positions when nothing truncates it) is one error line, or with
`--objective-options.skip-bad-rows` skipped, and the count printed (`skipped N row(s) of FILE: ...`).

An encoder-decoder reads `source <eos>` and is trained, teacher-forced, to produce `target <eos>` from a decoder
input that starts with the decoder-start token: `<pad>` as in T5 (so an exported model's
`decoder_start_token_id` is the one it was trained with), else `<bos>`, else `<eos>`. Generation must start from the
same token (`lmforge.data.tokenizer.decoder_start_id`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from torch import Tensor, nn

from lmforge.config import field
from lmforge.data.examples import TOO_LONG, BadRows, EpochSampler, held_out, pad, read_pairs
from lmforge.data.tokenizer import decoder_start_id
from lmforge.errors import UserError
from lmforge.eval.metrics import IGNORE_INDEX, next_token_nll
from lmforge.models.registry import Kind, kind_of
from lmforge.train.objectives import Objective, Output, register
from lmforge.train.objectives.options import (
    SKIP_BAD_ROWS_FLAG,
    TextPairsOptions,
    length_buckets_field,
    report_bad_rows,
    require_pair_lengths,
    require_special,
    require_vocab,
    skip_bad_rows_field,
    warn_no_evaluation,
)


@overload
def fit_length(ids: list[int], limit: int, truncate: bool, *, what: str, where: str | Path, fix: str,
               reserved: int = 0, bad_rows: None = None) -> list[int]: ...


@overload
def fit_length(ids: list[int], limit: int, truncate: bool, *, what: str, where: str | Path, fix: str,
               reserved: int = 0, bad_rows: BadRows) -> list[int] | None: ...


def fit_length(ids: list[int], limit: int, truncate: bool, *, what: str, where: str | Path, fix: str,
               reserved: int = 0, bad_rows: BadRows | None = None) -> list[int] | None:
    """ids cut to `limit - reserved` when truncating (room for the `reserved` special tokens the caller adds),
    else one line when they do not fit (with `bad_rows`: rejected through it, None when it skips the row)."""
    if len(ids) + reserved <= limit:
        return ids
    if truncate:
        return ids[:limit - reserved]
    message = f"{what} has {len(ids) + reserved} tokens, more than the {limit} the model's positions allow"
    (bad_rows or BadRows(where)).reject(TOO_LONG, message, fix=fix)  # raises unless it skips
    return None


class ExampleBatches:
    """Batching for an objective over a list of examples (text pairs, labelled texts): `split_examples` holds a fixed
    fraction out for evaluation (`held_out`, through `split_indices`), an `EpochSampler` walks the rest and is the
    objective's whole state (exact resume), and the held-out examples are read in order, split across ranks. The
    objective defines `batch(indices)`."""

    cfg: Any
    rt: Any
    train_idx: np.ndarray
    val_idx: np.ndarray
    sampler: EpochSampler

    def split_examples(self, n: int, fraction: float, what: str, where: str | Path,
                       lengths: Sequence[int] | None = None, bucket_batches: int = 0,
                       val_from: int | None = None) -> None:
        """`split_indices`, then the training sampler over the training examples: with `lengths` (one per example)
        and `bucket_batches` > 0, batches of similar lengths (`EpochSampler`)."""
        self.split_indices(n, fraction, what, where, val_from=val_from)
        train_lengths = None if lengths is None else np.asarray(lengths)[self.train_idx]
        self.sampler = EpochSampler(len(self.train_idx), self.cfg.batch_size, self.cfg.seed, self.rt.rank,
                                    self.rt.world_size, lengths=train_lengths, bucket_batches=bucket_batches)

    def split_indices(self, n: int, fraction: float, what: str, where: str | Path, *, val_from: int | None = None,
                      groups: Sequence[int] | None = None) -> None:
        """`train_idx` and `val_idx` of `n` examples: `fraction` held out by a hash of each example's index.
        `val_from`: the examples from this index on are the held-out ones (another file's), every one before it
        trains, and `fraction` is ignored. `groups` (one group index per example): whole groups are held out,
        `fraction` of them by a hash of the group's index (e.g. QA's paragraphs)."""
        if val_from is not None:
            val = np.arange(n) >= val_from
        elif groups is not None:
            group = np.asarray(groups, dtype=np.int64)
            val = held_out(int(group.max(initial=-1)) + 1, fraction)[group]
        else:
            val = held_out(n, fraction)
        self.train_idx, self.val_idx = np.flatnonzero(~val), np.flatnonzero(val)
        if len(self.train_idx) < self.rt.world_size:
            raise UserError(f"only {len(self.train_idx)} training {what}", where=where, fix=f"give more {what}")
        if not len(self.val_idx):
            warn_no_evaluation(self.rt, f"no held-out {what} in {where}")

    def batch(self, idx: Iterable[int]) -> dict[str, Tensor]:
        raise NotImplementedError

    def train_batches(self) -> Iterator[Any]:
        for chunk in self.sampler:
            yield self.batch(self.train_idx[chunk])

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def eval_batches(self) -> Iterable[Any] | None:
        return self.ranked_batches(self.val_idx, self.batch)

    def ranked_batches(self, items: Sequence[Any], make: Any) -> Iterable[Any] | None:
        """`make(chunk)` for this rank's share of the held-out `items`, `batch_size` at a time, in order (at most
        `eval_batches` of them); None when there are none."""
        if not len(items):
            return None
        mine = items[self.rt.rank::self.rt.world_size]
        size = self.cfg.batch_size
        n = math.ceil(len(mine) / size)
        return (make(mine[i * size:(i + 1) * size]) for i in range(min(n, self.cfg.eval_batches or n)))


def target_losses(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(summed NLL of the real labels, their count, the loss to train on) from one log-softmax over (B, T, V).

    The loss is the mean NLL (`next_token_nll`, the one definition), or with `smoothing` > 0 torch's
    label-smoothed cross-entropy (each target keeps 1 - smoothing of its probability, the rest is spread evenly
    over the vocabulary): (1 - s) NLL + s x the mean of -log p over the vocabulary. One log-softmax serves both,
    where two `F.cross_entropy` calls would compute it twice (measured on a (64, 18, 4000) batch: 19 ms instead
    of 25 for forward + backward, two threads).
    """
    if smoothing == 0:
        loss_sum, count = next_token_nll(logits, labels)
        return loss_sum, count, loss_sum / count.clamp(min=1)
    logp = logits.float().log_softmax(-1)
    real = labels != IGNORE_INDEX
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * real
    loss_sum, count = nll.sum(), real.sum()
    spread = -(logp.mean(-1) * real).sum()
    return loss_sum, count, ((1 - smoothing) * loss_sum + smoothing * spread) / count.clamp(min=1)


# ------------------------------------------------------------------------------------------- the objectives

class EncoderDecoderObjective(Objective):
    """What span corruption and seq2seq share: the checks, the teacher-forced loss and the metrics.

    A batch is {"src" (B, S), "src_mask" (B, S) or absent, "tgt_in" (B, T), "labels" (B, T)} with IGNORE_INDEX
    where a label is padding.
    """

    kinds = (Kind.ENCODER_DECODER,)
    needs: tuple[str, ...] = ("eos",)
    label_smoothing = 0.0  # of the training step's loss only (seq2seq's option); the sums stay the plain NLL

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import TokenDataset

        super().__init__(cfg, rt)
        self.train_ds = TokenDataset.open(cfg.data, "train")
        ids = self.train_ds.special_ids
        require_special(ids, self.needs, self.name, cfg.data, why="(to end every target)")
        require_vocab(cfg, self.train_ds.vocab_size, cfg.data)
        self.tokenizer_dir = self.train_ds.tokenizer_path.parent
        self.special_ids = ids
        self.eos_id, self.start_id = ids["eos"], decoder_start_id(ids)
        self.pad_id = ids.get("pad", 0)  # padding is masked (source) or ignored (labels): its id only must exist

    def decoder_io(self, seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Targets (each ending in <eos>) -> decoder inputs `<start> target[:-1]` and labels, padded."""
        tgt_in, _ = pad([[self.start_id, *s[:-1]] for s in seqs], self.pad_id)
        labels, _ = pad(seqs, self.pad_id, value=IGNORE_INDEX)
        return tgt_in, labels

    def forward(self, model: nn.Module, batch: Any) -> Output:
        b = self.to_device(batch)
        src_mask = b.get("src_mask")
        logits = model(b["src"], b["tgt_in"], src_mask)  # (B, T, V)
        labels = b["labels"]
        loss_sum, count, loss = target_losses(logits, labels, self.label_smoothing if model.training else 0.0)
        real = labels != IGNORE_INDEX
        src_tokens = src_mask.sum() if src_mask is not None else b["src"].numel()
        return Output(loss=loss, sums={
            "loss": loss_sum.detach(), "count": count, "correct": ((logits.argmax(-1) == labels) & real).sum(),
            "tokens": src_tokens + count})

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1)
        loss = sums["loss"] / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "accuracy": sums["correct"] / count,
                "target_tokens": sums["count"]}


@dataclass
class Seq2SeqOptions(TextPairsOptions):
    generate_eval: bool = field(False, "at each evaluation also generate every held-out target (greedy) and report "
                                       "BLEU, chrF and ROUGE-1/2/L beside the loss (slower; --select-by bleu needs "
                                       "it)")
    eval_max_new_tokens: int | None = field(None, "with generate-eval: longest generated target (default: twice the "
                                                  "longest held-out target)", min=1)
    label_smoothing: float = field(0.0, "train on cross-entropy against targets smoothed by this much probability "
                                        "spread over the vocabulary (0.1 in the Transformer paper); evaluation still "
                                        "reports the plain loss", min=0, lt=1)
    length_buckets: int = length_buckets_field("pairs", "source + target length")
    skip_bad_rows: bool = skip_bad_rows_field("source", "target")


@register("seq2seq", options=Seq2SeqOptions)
class Seq2Seq(ExampleBatches, EncoderDecoderObjective):
    """Cross-entropy of each pair's target given its source (translation, summarisation, ...).

    An encoder-decoder encodes the source and decodes the target (teacher-forced). A decoder reads the prompt
    template `<eos> source <sep>` followed by `target <eos>`, with the loss masked to the target
    (`data.examples.seq2seq_source`, the one template of training and generation).
    """

    kinds = (Kind.ENCODER_DECODER, Kind.DECODER)
    opts: Seq2SeqOptions

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.examples import seq2seq_source
        from lmforge.data.tokenizer import load_tokenizer

        super().__init__(cfg, rt)
        o = self.opts
        self.label_smoothing = o.label_smoothing
        if not o.pairs:
            raise UserError("objective 'seq2seq' trains on text pairs, but no pairs file is given",
                            fix="pass --objective-options.pairs FILE (.tsv or .csv with a header row, or .jsonl)")
        self.decoder_only = kind_of(cfg.model) == Kind.DECODER
        if self.decoder_only:
            require_special(self.special_ids, ("sep",), self.name, cfg.data,
                            why="(a decoder reads `source <sep> target`)")
        max_len = cfg.model.max_seq_len
        require_pair_lengths(cfg)
        self.tokenizer = load_tokenizer(self.train_ds.tokenizer_path)
        bad = BadRows(o.pairs, skip=o.skip_bad_rows, flag=SKIP_BAD_ROWS_FLAG)
        texts = read_pairs(o.pairs, o.source_column, o.target_column, bad_rows=bad)
        src_ids = self.tokenizer.encode_batch([s for s, _ in texts], add_special_tokens=False)
        tgt_ids = self.tokenizer.encode_batch([t for _, t in texts], add_special_tokens=False)
        fix = ("shorten the texts, or truncate with --objective-options.max-source-len / max-target-len, or raise "
               "--model.max-seq-len")
        framing = len(seq2seq_source(cfg.model, self.special_ids, []))
        self.sources: list[list[int]] = []
        self.targets: list[list[int]] = []
        self.target_texts: list[str] = []
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
            source_ids = fit_length(s.ids, o.max_source_len or max_len, o.max_source_len is not None,
                                    reserved=framing, what=f"the source of pair {i + 1} (with {self._framing_words()})",
                                    where=o.pairs, fix=fix, bad_rows=bad)
            if source_ids is None:
                continue
            # The decoder reads <start> + target and predicts target + <eos>: both as long as target + 1.
            target_ids = fit_length(t.ids, o.max_target_len or max_len, o.max_target_len is not None, reserved=1,
                                    what=f"the target of pair {i + 1} (with <eos>)", where=o.pairs, fix=fix,
                                    bad_rows=bad)
            if target_ids is None:
                continue
            source = seq2seq_source(cfg.model, self.special_ids, source_ids)
            # A decoder reads the prompt and the target but the last token: one sequence of the model's positions.
            if self.decoder_only and len(source) + len(target_ids) > max_len:
                bad.reject(TOO_LONG, f"pair {i + 1} reads {len(source) + len(target_ids)} tokens as `<eos> source "
                                     f"<sep> target`, more than the model's max_seq_len {max_len}", fix=fix)
                continue
            self.sources.append(source)
            self.targets.append([*target_ids, self.eos_id])
            self.target_texts.append(texts[i][1])
        self.skipped_rows = report_bad_rows(rt, bad)
        if not self.sources:
            raise UserError(f"every pair was skipped as bad ({bad.summary()})", where=o.pairs,
                            fix="check the columns and the length limits")
        self.split_examples(len(self.sources), o.pairs_val_fraction, "pairs", o.pairs,
                            lengths=[len(s) + len(t) for s, t in zip(self.sources, self.targets)],
                            bucket_batches=o.length_buckets)

    def _framing_words(self) -> str:
        return "<eos> before and <sep> after" if self.decoder_only else "<eos>"

    def batch(self, idx: Iterable[int]) -> dict[str, Any]:
        idx = list(idx)
        if self.decoder_only:
            # `prompt target <eos>` shifted by one; only the positions that predict the target are scored.
            seqs = [self.sources[i] + self.targets[i] for i in idx]
            ids, _ = pad([s[:-1] for s in seqs], self.pad_id)
            labels, _ = pad([[IGNORE_INDEX] * (len(self.sources[i]) - 1) + self.targets[i] for i in idx],
                            self.pad_id, value=IGNORE_INDEX)
            out: dict[str, Any] = {"ids": ids, "labels": labels}
        else:
            src, src_mask = pad([self.sources[i] for i in idx], self.pad_id)
            tgt_in, labels = self.decoder_io([self.targets[i] for i in idx])
            out = {"src": src, "src_mask": src_mask, "tgt_in": tgt_in, "labels": labels}
        if self.opts.generate_eval:
            out["rows"] = idx  # which pairs: their sources and reference texts, for generation at evaluation
        return out

    def forward(self, model: nn.Module, batch: Any) -> Output:
        if self.decoder_only:
            b = self.to_device(batch)
            logits = model(b["ids"])  # (B, T, V)
            labels = b["labels"]
            loss_sum, count, loss = target_losses(logits, labels, self.label_smoothing if model.training else 0.0)
            real = labels != IGNORE_INDEX
            out = Output(loss=loss, sums={
                "loss": loss_sum.detach(), "count": count, "correct": ((logits.argmax(-1) == labels) & real).sum(),
                "tokens": b["ids"].numel()})
        else:
            out = super().forward(model, batch)
        if not model.training and self.opts.generate_eval:
            out.sums.update(self._generated_sums(model, batch["rows"]))
        return out

    def _generated_sums(self, model: nn.Module, rows: list[int]) -> dict[str, float]:
        """BLEU / chrF / ROUGE statistics of the greedy outputs for these held-out pairs (additive)."""
        from lmforge.eval.metrics import text_sums
        from lmforge.eval.seq2seq import generate_targets

        plain = getattr(model, "module", model)  # the model itself under DDP: generation needs its cache methods
        longest = self.opts.eval_max_new_tokens or 2 * max(len(self.targets[i]) for i in self.val_idx)
        texts = generate_targets(plain, self.tokenizer, [self.sources[i] for i in rows], self.special_ids,
                                 max_new_tokens=longest)
        return text_sums(texts, [self.target_texts[i] for i in rows])

    def metric_names(self) -> tuple[str, ...]:
        from lmforge.eval.metrics import TEXT_SCORES

        return ("loss", "ppl", "accuracy", "target_tokens", *(TEXT_SCORES if self.opts.generate_eval else ()))

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        from lmforge.eval.metrics import text_scores

        return {**super().summarize(sums), **text_scores(sums)}


__all__ = ["EncoderDecoderObjective", "ExampleBatches", "Seq2Seq", "Seq2SeqOptions", "decoder_start_id", "fit_length"]
