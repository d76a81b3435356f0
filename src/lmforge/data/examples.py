"""Lists of examples (text pairs, labelled texts) for training on: read them from a file, hold a fixed fraction out
for evaluation, walk the rest in batches epoch by epoch, and pad a batch's id lists.

An examples file is TSV with a header row, or JSONL with one object per line (either may be gzipped); two of its
columns (TSV header names / JSON keys) are read, the second may be a JSONL number or boolean (a class label). The
held-out examples depend on the file alone (a hash of each example's index), never on a run's seed. Used by the
seq2seq, contrastive and classification objectives (`lmforge.train.objectives`) and the retrieval evaluation
(`lmforge.eval.retrieval`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.models.config import ModelConfig

PAIRS_SPLIT_SEED = 0x9A1E5  # the held-out pairs depend on the file alone, never on the run's seed


def _open_text(path: Path):
    gz = path.name.lower().endswith(".gz")
    try:
        return gzip.open(path, "rt", encoding="utf-8") if gz else open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot open pairs file ({e.strerror or e})", where=path) from None


def read_pairs(path: str | Path, source_column: str = "source", target_column: str = "target", *,
               options: str = "source-column / target-column", flags: str | None = None,
               label_separator: str | None = None) -> list[tuple[str, str]]:
    """(source, target) texts of a TSV (header row) or JSONL pairs file, in file order; one line per mistake.

    `options` names the --objective-options flags that choose the two columns, for the messages; `flags` spells
    them whole instead (a verb's own flags, e.g. "--text-column / --label-column"). With `label_separator` the
    targets are multi-label fields: an empty one is allowed (a text with no label), and a JSONL list of labels is
    joined with the separator."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if not path.is_file():
        raise UserError("pairs file not found", where=path, fix="pass --objective-options.pairs FILE (.tsv or .jsonl)")
    if not name.endswith((".tsv", ".jsonl")):
        raise UserError("pairs file must be .tsv (with a header row) or .jsonl (optionally .gz)", where=path,
                        fix="rename or convert it")
    cols = (source_column, target_column)
    flags = flags or f"--objective-options.{options}"
    pairs: list[tuple[str, str]] = []
    try:
        with _open_text(path) as f:
            if name.endswith(".tsv"):
                header = f.readline().rstrip("\r\n").split("\t")
                missing = [c for c in cols if c not in header]
                if missing:
                    raise UserError(f"the TSV header has no column {', '.join(map(repr, missing))} (it has: "
                                    f"{', '.join(map(repr, header))})", where=path,
                                    fix=f"name the columns with {flags}")
                at = [header.index(c) for c in cols]
                for n, line in enumerate(f, start=2):
                    line = line.rstrip("\r\n")
                    if not line:
                        continue
                    fields = line.split("\t")
                    if len(fields) != len(header):
                        raise UserError(f"line {n} has {len(fields)} tab-separated fields, the header "
                                        f"{len(header)}", where=path, fix="remove stray tabs from the texts")
                    pairs.append(_checked(fields[at[0]], fields[at[1]], n, path, label_separator))
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
                                        fix=f"name the keys with {flags}")
                    pairs.append(_checked(record[cols[0]], record[cols[1]], n, path, label_separator))
    except UnicodeDecodeError as e:
        raise UserError(f"pairs file is not UTF-8 ({e.reason} at byte {e.start})", where=path) from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"not a valid gzip file, or truncated ({e})", where=path) from None
    if not pairs:
        raise UserError("pairs file holds no pairs", where=path)
    return pairs


def _checked(source: Any, target: Any, line: int, path: Path, label_separator: str | None = None) -> tuple[str, str]:
    if isinstance(target, bool | int | float):  # a JSONL class label given as a number or boolean: 1, true
        target = json.dumps(target)
    if label_separator is not None and isinstance(target, list) and all(isinstance(t, str | int) for t in target):
        target = label_separator.join(map(str, target))  # a JSONL list of labels
    if not isinstance(source, str) or not isinstance(target, str) or not source.strip() or \
            (not target.strip() and label_separator is None):
        raise UserError(f"line {line}: the source and target must both be non-empty text", where=path)
    return source, target


def split_labels(field: str, separator: str = ",") -> list[str]:
    """A multi-label field's labels: split on `separator`, stripped, empty ones and repeats dropped, in order."""
    return list(dict.fromkeys(name.strip() for name in field.split(separator) if name.strip()))


def held_out(n: int, fraction: float) -> np.ndarray:
    """(n,) bool: which pairs are held out for evaluation, from a hash of their index alone."""
    from lmforge.data.shards import split_uniforms

    return split_uniforms(PAIRS_SPLIT_SEED, n) < fraction


@dataclass
class EpochSampler:
    """Batches of indices from a permutation per epoch seeded by (seed, epoch), rank r taking every r-th.

    A batch never spans two epochs, so no example is twice in one batch (a false negative for contrastive
    losses); the last batch of an epoch may be smaller. The state is (epoch, position): exact resume.

    With `lengths` (one per example), batches group examples of similar length, as Hugging Face's
    `group_by_length`: the epoch's permutation is cut into runs of `group` batches, each run is sorted by length
    and cut into batches, and the full batches are shuffled. A batch is padded to its longest example, so on texts
    of very mixed lengths (SST-2's phrases: 1 to 50 tokens, random batches of 32 two-thirds padding) this saves
    most of the compute, while every example is still seen once per epoch in a random company of its length.
    """

    n: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    pos: int = 0
    lengths: np.ndarray | None = None
    group: int = 50  # batches per sorted run, with `lengths`

    def _order(self) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        order = rng.permutation(self.n)[self.rank::self.world_size]
        if self.lengths is None:
            return order
        return self._grouped(order, rng)

    def _grouped(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`order` regrouped: runs sorted by length (longest first), then the full batches in a random order."""
        run = self.batch_size * self.group
        runs = [order[i:i + run] for i in range(0, len(order), run)]
        grouped = np.concatenate([r[np.argsort(-self.lengths[r], kind="stable")] for r in runs])
        n_full = len(grouped) // self.batch_size
        full = grouped[:n_full * self.batch_size].reshape(n_full, self.batch_size)
        # The short last batch stays last, so every batch starts at a multiple of batch_size (as __iter__ cuts).
        return np.concatenate([full[rng.permutation(n_full)].ravel(), grouped[n_full * self.batch_size:]])

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


def encode_texts(tokenizer: Any, texts: Sequence[str], frame: tuple[Sequence[int], Sequence[int]],
                 special_ids: dict[str, int], *, limit: int, truncate: bool, where: str | Path | None,
                 fix: str) -> list[list[int]]:
    """Each text's ids inside its frame (`before + ids + after`, `models.registry.text_frame`): how a classifier
    reads a text, in training and evaluation alike.

    A framed text longer than `limit` ids is one error line naming it (`fix`: how to truncate), or with `truncate`
    is cut to fit (keeping the frame and at least one token of text).
    """
    before, after = list(frame[0]), list(frame[1])
    spelled = {i: f"<{name}>" for name, i in special_ids.items()}
    framed = f" with {' '.join(spelled.get(i, str(i)) for i in before + after)}" if before + after else ""
    out: list[list[int]] = []
    for i, enc in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        ids = [*before, *enc.ids, *after]
        if len(ids) > limit:
            if not truncate:
                raise UserError(f"the text of example {i + 1} has {len(ids)} tokens{framed}, more than "
                                f"model.max_seq_len {limit}", where=where, fix=fix)
            ids = [*before, *enc.ids[:max(limit - len(before) - len(after), 1)], *after]
        out.append(ids)
    return out


def seq2seq_source(model: ModelConfig, special_ids: Mapping[str, int], source: Sequence[int]) -> list[int]:
    """How a sequence-to-sequence model reads a source, in training and generation alike: the one prompt template.

    An encoder-decoder's encoder reads `source <eos>`. A decoder reads `frame source <sep>` (its text frame,
    `models.registry.text_frame`: `<eos>`, as documents follow one in pretraining), then writes the target and
    ends it with `<eos>`; its training loss is masked to the target. Special tokens, not words, mark the parts, so
    no text of the user's can be mistaken for the separator and no language is assumed. The caller checks the
    tokenizer has `<eos>` (and, for a decoder, `<sep>`).
    """
    from lmforge.models.registry import Kind, kind_of, text_frame

    if kind_of(model) == Kind.ENCODER_DECODER:
        return [*source, special_ids["eos"]]
    return [*text_frame(model, special_ids)[0], *source, special_ids["sep"]]


def pad(seqs: Sequence[Sequence[int]], pad_id: int, value: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad id lists into (B, T) int64 ids (padded with `value`, default pad_id) and a (B, T) bool mask."""
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), pad_id if value is None else value, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, True
    return torch.from_numpy(ids), torch.from_numpy(mask)


__all__ = ["EpochSampler", "encode_texts", "held_out", "pad", "read_pairs", "seq2seq_source", "split_labels"]
