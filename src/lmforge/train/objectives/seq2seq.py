"""Sequence-to-sequence cross-entropy on text pairs (`seq2seq`), and what the encoder-decoder objectives share.

A pairs file is TSV with a header row, or JSONL with one object per line (either may be gzipped); the columns (TSV
header names / JSON keys) are `--objective-options.source-column` and `target-column`. The prepared data directory
(`--data`) supplies the tokenizer. A fixed fraction of the pairs (`pairs_val_fraction`, chosen by a hash of the
pair's index, so always the same ones) is held out for evaluation.

An encoder-decoder reads `source <eos>` and is trained, teacher-forced, to produce `target <eos>` from a decoder
input that starts with the decoder-start token: `<pad>` as in T5 (so an exported model's
`decoder_start_token_id` is the one it was trained with), else `<bos>`, else `<eos>`. Generation must start from the
same token (`lmforge.data.tokenizer.decoder_start_id`).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.data.tokenizer import decoder_start_id
from lmforge.errors import UserError
from lmforge.eval.metrics import IGNORE_INDEX
from lmforge.train.objectives import Objective, Output, register
from lmforge.train.objectives.options import (
    ObjectiveOptions,
    objective_options,
    require_family,
    require_pair_lengths,
    require_special,
    require_vocab,
    warn_no_evaluation,
)

ENCODER_DECODER_FAMILIES = ("t5",)
PAIRS_SPLIT_SEED = 0x9A1E5  # the held-out pairs depend on the file alone, never on the run's seed


# ------------------------------------------------------------------------------------------------ pairs file

def _open_text(path: Path):
    gz = path.name.lower().endswith(".gz")
    try:
        return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot open pairs file ({e.strerror or e})", where=path) from None


def read_pairs(path: str | Path, source_column: str = "source", target_column: str = "target", *,
               options: str = "source-column / target-column") -> list[tuple[str, str]]:
    """(source, target) texts of a TSV (header row) or JSONL pairs file, in file order; one line per mistake.

    `options` names the --objective-options flags that choose the two columns, for the messages."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if not path.is_file():
        raise UserError("pairs file not found", where=path, fix="pass --objective-options.pairs FILE (.tsv or .jsonl)")
    if not name.endswith((".tsv", ".jsonl")):
        raise UserError("pairs file must be .tsv (with a header row) or .jsonl (optionally .gz)", where=path,
                        fix="rename or convert it")
    cols = (source_column, target_column)
    pairs: list[tuple[str, str]] = []
    try:
        with _open_text(path) as f:
            if name.endswith(".tsv"):
                header = f.readline().rstrip("\r\n").split("\t")
                missing = [c for c in cols if c not in header]
                if missing:
                    raise UserError(f"the TSV header has no column {', '.join(map(repr, missing))} (it has: "
                                    f"{', '.join(map(repr, header))})", where=path,
                                    fix=f"name the columns with --objective-options.{options}")
                at = [header.index(c) for c in cols]
                for n, line in enumerate(f, start=2):
                    line = line.rstrip("\r\n")
                    if not line:
                        continue
                    fields = line.split("\t")
                    if len(fields) != len(header):
                        raise UserError(f"line {n} has {len(fields)} tab-separated fields, the header "
                                        f"{len(header)}", where=path, fix="remove stray tabs from the texts")
                    pairs.append(_checked(fields[at[0]], fields[at[1]], n, path))
            else:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"line {n} is not valid JSON ({e.msg})", where=path) from None
                    if not isinstance(record, dict) or any(c not in record for c in cols):
                        raise UserError(f"line {n} lacks the key(s) {' and '.join(map(repr, cols))}", where=path,
                                        fix=f"name the keys with --objective-options.{options}")
                    pairs.append(_checked(record[cols[0]], record[cols[1]], n, path))
    except UnicodeDecodeError as e:
        raise UserError(f"pairs file is not UTF-8 ({e.reason} at byte {e.start})", where=path) from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"not a valid gzip file, or truncated ({e})", where=path) from None
    if not pairs:
        raise UserError("pairs file holds no pairs", where=path)
    return pairs


def _checked(source: Any, target: Any, line: int, path: Path) -> tuple[str, str]:
    if isinstance(target, bool | int | float):  # a JSONL class label given as a number or boolean: 1, true
        target = json.dumps(target)
    if not isinstance(source, str) or not isinstance(target, str) or not source.strip() or not target.strip():
        raise UserError(f"line {line}: the source and target must both be non-empty text", where=path)
    return source, target


def held_out(n: int, fraction: float) -> np.ndarray:
    """(n,) bool: which pairs are held out for evaluation, from a hash of their index alone."""
    from lmforge.data.shards import split_uniforms

    return split_uniforms(PAIRS_SPLIT_SEED, n) < fraction


def fit_length(ids: list[int], limit: int, truncate: bool, *, what: str, where: str | Path, fix: str,
               reserved: int = 0) -> list[int]:
    """ids cut to `limit - reserved` when truncating (room for the `reserved` special tokens the caller adds),
    else one line when they do not fit."""
    if len(ids) + reserved <= limit:
        return ids
    if truncate:
        return ids[:limit - reserved]
    raise UserError(f"{what} has {len(ids) + reserved} tokens, more than the {limit} the model's positions allow",
                    where=where, fix=fix)


@dataclass
class EpochSampler:
    """Batches of indices from a permutation per epoch seeded by (seed, epoch), rank r taking every r-th.

    A batch never spans two epochs, so no example is twice in one batch (a false negative for contrastive
    losses); the last batch of an epoch may be smaller. The state is (epoch, position): exact resume.
    """

    n: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    pos: int = 0

    def _order(self) -> np.ndarray:
        perm = np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(self.n)
        return perm[self.rank::self.world_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._order()
        while True:
            if self.pos >= len(order):
                self.epoch, self.pos = self.epoch + 1, 0
                order = self._order()
            batch = order[self.pos:self.pos + self.batch_size]
            self.pos += len(batch)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class ExampleBatches:
    """Batching for an objective over a list of examples (text pairs, labelled texts): `split_examples` holds a fixed
    fraction out for evaluation (`held_out`), an `EpochSampler` walks the rest and is the objective's whole state
    (exact resume), and the held-out examples are read in order, split across ranks. The objective defines
    `batch(indices)`."""

    cfg: Any
    rt: Any
    train_idx: np.ndarray
    val_idx: np.ndarray
    sampler: EpochSampler

    def split_examples(self, n: int, fraction: float, what: str, where: str | Path) -> None:
        val = held_out(n, fraction)
        self.train_idx, self.val_idx = np.flatnonzero(~val), np.flatnonzero(val)
        if len(self.train_idx) < self.rt.world_size:
            raise UserError(f"only {len(self.train_idx)} training {what}", where=where, fix=f"give more {what}")
        if not len(self.val_idx):
            warn_no_evaluation(self.rt, f"no held-out {what} in {where}")
        self.sampler = EpochSampler(len(self.train_idx), self.cfg.batch_size, self.cfg.seed, self.rt.rank,
                                    self.rt.world_size)

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
        if not len(self.val_idx):
            return None
        mine = self.val_idx[self.rt.rank::self.rt.world_size]
        size = self.cfg.batch_size
        n = math.ceil(len(mine) / size)
        return (self.batch(mine[i * size:(i + 1) * size]) for i in range(min(n, self.cfg.eval_batches or n)))


def pad(seqs: Sequence[Sequence[int]], pad_id: int, value: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad id lists into (B, T) int64 ids (padded with `value`, default pad_id) and a (B, T) bool mask."""
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), pad_id if value is None else value, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, True
    return torch.from_numpy(ids), torch.from_numpy(mask)


# ------------------------------------------------------------------------------------------- the objectives

class EncoderDecoderObjective(Objective):
    """What span corruption and seq2seq share: the checks, the teacher-forced loss and the metrics.

    A batch is {"src" (B, S), "src_mask" (B, S) or absent, "tgt_in" (B, T), "labels" (B, T)} with IGNORE_INDEX
    where a label is padding.
    """

    needs: tuple[str, ...] = ("eos",)

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import TokenDataset

        super().__init__(cfg, rt)
        require_family(cfg, self.name, ENCODER_DECODER_FAMILIES)
        self.opts: ObjectiveOptions = objective_options(cfg)
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
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum",
                                   ignore_index=IGNORE_INDEX)
        real = labels != IGNORE_INDEX
        count = real.sum()
        src_tokens = src_mask.sum() if src_mask is not None else b["src"].numel()
        return Output(loss=loss_sum / count.clamp(min=1), sums={
            "loss": loss_sum.detach(), "count": count, "correct": ((logits.argmax(-1) == labels) & real).sum(),
            "tokens": src_tokens + count})

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1)
        loss = sums["loss"] / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "accuracy": sums["correct"] / count,
                "target_tokens": sums["count"]}


@register("seq2seq")
class Seq2Seq(ExampleBatches, EncoderDecoderObjective):
    """Cross-entropy of each pair's target given its source (translation, summarisation, ...)."""

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.tokenizer import load_tokenizer

        super().__init__(cfg, rt)
        o = self.opts
        if not o.pairs:
            raise UserError("objective 'seq2seq' trains on text pairs, but no pairs file is given",
                            fix="pass --objective-options.pairs FILE (.tsv with a header row, or .jsonl)")
        max_len = cfg.model.max_seq_len
        require_pair_lengths(cfg)
        tok = load_tokenizer(self.train_ds.tokenizer_path)
        texts = read_pairs(o.pairs, o.source_column, o.target_column)
        src_ids = tok.encode_batch([s for s, _ in texts], add_special_tokens=False)
        tgt_ids = tok.encode_batch([t for _, t in texts], add_special_tokens=False)
        fix = ("shorten the texts, or truncate with --objective-options.max-source-len / max-target-len, or raise "
               "--model.max-seq-len")
        self.sources: list[list[int]] = []
        self.targets: list[list[int]] = []
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
            s = fit_length(s.ids, o.max_source_len or max_len, o.max_source_len is not None, reserved=1,
                           what=f"the source of pair {i + 1} (with <eos>)", where=o.pairs, fix=fix)
            # The decoder reads <start> + target and predicts target + <eos>: both as long as target + 1.
            t = fit_length(t.ids, o.max_target_len or max_len, o.max_target_len is not None, reserved=1,
                           what=f"the target of pair {i + 1} (with <eos>)", where=o.pairs, fix=fix)
            self.sources.append([*s, self.eos_id])
            self.targets.append([*t, self.eos_id])
        self.split_examples(len(texts), o.pairs_val_fraction, "pairs", o.pairs)

    def batch(self, idx: Iterable[int]) -> dict[str, Tensor]:
        idx = list(idx)
        src, src_mask = pad([self.sources[i] for i in idx], self.pad_id)
        tgt_in, labels = self.decoder_io([self.targets[i] for i in idx])
        return {"src": src, "src_mask": src_mask, "tgt_in": tgt_in, "labels": labels}


__all__ = ["EncoderDecoderObjective", "EpochSampler", "ExampleBatches", "Seq2Seq", "decoder_start_id", "held_out",
           "pad", "read_pairs"]
