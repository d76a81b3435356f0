"""Lists of examples (text pairs, labelled texts) for training on: read them from a file, hold a fixed fraction out
for evaluation, walk the rest in batches epoch by epoch, and pad a batch's id lists.

An examples file is TSV or CSV with a header row (CSV read by the csv module, as `prepare` reads corpora: quoted
fields may hold commas and newlines), or JSONL with one object per line (any of them may be gzipped); two of its
columns (header names / JSON keys) are read, the second may be a JSONL number or boolean (a class label). A bad row
(an empty text or target, a text longer than the model's context) is one error line, or with `BadRows.skip`
(`--skip-bad-rows`) left out and counted. The held-out examples depend on the file alone (a hash of each example's
index), never on a run's seed. Used by the seq2seq, contrastive and classification objectives
(`lmforge.train.objectives`), `lmforge eval --task` / `lmforge predict` and the retrieval evaluation
(`lmforge.eval.retrieval`).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np
import torch
from torch import Tensor

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.models.config import ModelConfig

PAIRS_SPLIT_SEED = 0x9A1E5  # the held-out pairs depend on the file alone, never on the run's seed
RowT = TypeVar("RowT")
PAIRS_SUFFIXES = (".tsv", ".csv", ".jsonl")
PAIRS_FORMATS = ".tsv or .csv (with a header row) or .jsonl (optionally .gz)"


def _open_text(path: Path):
    gz = path.name.lower().endswith(".gz")
    try:  # newline="": the csv module sees a quoted field's own newlines; utf-8-sig: a byte-order mark is dropped
        return (gzip.open(path, "rt", encoding="utf-8-sig", newline="") if gz
                else open(path, encoding="utf-8-sig", newline=""))
    except OSError as e:
        raise UserError(f"cannot open pairs file ({e.strerror or e})", where=path) from None


EMPTY, TOO_LONG, UNKNOWN_LABEL = "empty", "longer than the context", "with a label the checkpoint does not know"


@dataclass
class BadRows:
    """The bad rows of one examples file: an empty text or target, a text longer than the model's context (or, in
    evaluation, a label the checkpoint does not know). Without `skip` the first one is one error line (naming
    `flag`, the option that skips them, when there is one); with it (`--skip-bad-rows`) each is left out and
    counted by reason, and `summary()` is the line to print."""

    path: str | Path | None
    skip: bool = False
    flag: str | None = None
    counts: dict[str, int] = dataclass_field(default_factory=dict)

    def reject(self, reason: str, message: str, fix: str | None = None) -> None:
        """A bad row: counted under `reason` when skipping, else the UserError `message` (with `fix`)."""
        if not self.skip:
            skip_it = f"pass {self.flag} to skip (and count) such rows" if self.flag else None
            raise UserError(message, where=self.path, fix=" or ".join(f for f in (fix, skip_it) if f) or None)
        self.count(reason)

    def count(self, reason: str, rows: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + rows

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """"skipped N row(s) of FILE: n1 reason1, n2 reason2"."""
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.counts.items())
        return f"skipped {self.skipped} row(s) of {self.path}: {reasons}"


def read_pairs(path: str | Path, source_column: str = "source", target_column: str = "target", *,
               options: str = "source-column / target-column", flags: str | None = None,
               label_separator: str | None = None, bad_rows: BadRows | None = None) -> list[tuple[str, str]]:
    """(source, target) texts of a TSV or CSV (header row) or JSONL pairs file, in file order; one line per mistake.

    `options` names the --objective-options flags that choose the two columns, for the messages; `flags` spells
    them whole instead (a verb's own flags, e.g. "--text-column / --label-column"). With `label_separator` the
    targets are multi-label fields: an empty one is allowed (a text with no label), and a JSONL list of labels is
    joined with the separator. A row with an empty source or target goes to `bad_rows` (skipped and counted when it
    skips; default: an error)."""
    from lmforge.data.corpus import delimited_rows

    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if not path.is_file():
        raise UserError("pairs file not found", where=path,
                        fix="pass --objective-options.pairs FILE (.tsv, .csv or .jsonl)")
    if not name.endswith(PAIRS_SUFFIXES):
        raise UserError(f"pairs file must be {PAIRS_FORMATS}", where=path, fix="rename or convert it")
    bad_rows = bad_rows or BadRows(path)
    cols = (source_column, target_column)
    flags = flags or f"--objective-options.{options}"
    pairs: list[tuple[str, str]] = []
    try:
        with _open_text(path) as f:
            if name.endswith((".tsv", ".csv")):
                tsv = name.endswith(".tsv")
                kind = "TSV" if tsv else "CSV"
                reader = delimited_rows(f, tsv)
                try:
                    header = next(reader, [])
                    missing = [c for c in cols if c not in header]
                    if missing:
                        raise UserError(f"the {kind} header has no column {', '.join(map(repr, missing))} (it has: "
                                        f"{', '.join(map(repr, header))})", where=path,
                                        fix=f"name the columns with {flags}")
                    at = [header.index(c) for c in cols]
                    for fields in reader:
                        n = reader.line_num
                        if not fields:
                            continue
                        if len(fields) != len(header):
                            separated = "tab-separated" if tsv else "comma-separated"
                            raise UserError(f"line {n} has {len(fields)} {separated} fields, the header "
                                            f"{len(header)}", where=path,
                                            fix="remove stray tabs from the texts" if tsv else
                                            "quote fields that hold commas or newlines (\"a, b\")")
                        pair = _checked(fields[at[0]], fields[at[1]], n, bad_rows, label_separator)
                        if pair is not None:
                            pairs.append(pair)
                except csv.Error as e:
                    raise UserError(f"malformed {kind} at line {reader.line_num} ({e})", where=path,
                                    fix="check the quoting of that row") from None
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
                    pair = _checked(record[cols[0]], record[cols[1]], n, bad_rows, label_separator)
                    if pair is not None:
                        pairs.append(pair)
    except UnicodeDecodeError as e:
        raise UserError(f"pairs file is not UTF-8 ({e.reason} at byte {e.start})", where=path) from None
    except (EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"not a valid gzip file, or truncated ({e})", where=path) from None
    if not pairs:
        skipped = f" ({bad_rows.skipped} skipped as bad)" if bad_rows.skipped else ""
        raise UserError(f"pairs file holds no pairs{skipped}", where=path)
    return pairs


def _checked(source: Any, target: Any, line: int, bad_rows: BadRows,
             label_separator: str | None = None) -> tuple[str, str] | None:
    """The pair as texts, or None when it is bad and `bad_rows` skips it."""
    if isinstance(target, bool | int | float):  # a JSONL class label given as a number or boolean: 1, true
        target = json.dumps(target)
    if label_separator is not None and isinstance(target, list) and all(isinstance(t, str | int) for t in target):
        target = label_separator.join(map(str, target))  # a JSONL list of labels
    if not isinstance(source, str) or not isinstance(target, str) or not source.strip() or \
            (not target.strip() and label_separator is None):
        bad_rows.reject(EMPTY, f"line {line}: the source and target must both be non-empty text")
        return None
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

    With `lengths` (one per example) and `bucket_batches` > 0, batches hold examples of similar length (what
    fairseq and tensor2tensor do for translation): the epoch's permutation is cut into pools of `bucket_batches`
    global batches, each pool is sorted by length (stable, so equal lengths stay in random order) and cut into
    batches, and the order of all the epoch's batches is shuffled. Padding to the batch's longest then costs little
    (random batches of Multi30k pairs are about 45 % real tokens). Still a function of (seed, epoch): exact resume.
    """

    n: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    pos: int = 0
    lengths: np.ndarray | None = None
    bucket_batches: int = 0

    def _order(self) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        perm = rng.permutation(self.n)
        if self.lengths is not None and self.bucket_batches > 0:
            perm = self._bucketed(perm, rng)
        return perm[self.rank::self.world_size]

    def _bucketed(self, perm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`perm` rearranged so that each global batch (batch_size x world_size consecutive items, which the ranks
        share by striding) holds similar lengths, the batches in random order."""
        lengths = np.asarray(self.lengths)
        pool = self.bucket_batches * self.batch_size * self.world_size
        by_length = np.concatenate([p[np.argsort(lengths[p], kind="stable")]
                                    for p in np.split(perm, range(pool, self.n, pool))])
        step = self.batch_size * self.world_size
        full = self.n // step  # a smaller last batch stays last: the batches after it keep their boundaries
        batches = np.split(by_length[:full * step], full) if full else []
        return np.concatenate([*(batches[i] for i in rng.permutation(full)), by_length[full * step:]])

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


@overload
def encode_texts(tokenizer: Any, texts: Sequence[str], frame: tuple[Sequence[int], Sequence[int]],
                 special_ids: dict[str, int], *, limit: int, truncate: bool, where: str | Path | None,
                 fix: str, bad_rows: None = None) -> list[list[int]]: ...


@overload
def encode_texts(tokenizer: Any, texts: Sequence[str], frame: tuple[Sequence[int], Sequence[int]],
                 special_ids: dict[str, int], *, limit: int, truncate: bool, where: str | Path | None,
                 fix: str, bad_rows: BadRows) -> list[list[int] | None]: ...


def encode_texts(tokenizer: Any, texts: Sequence[str], frame: tuple[Sequence[int], Sequence[int]],
                 special_ids: dict[str, int], *, limit: int, truncate: bool, where: str | Path | None,
                 fix: str, bad_rows: BadRows | None = None) -> list[list[int]] | list[list[int] | None]:
    """Each text's ids inside its frame (`before + ids + after`, `models.registry.text_frame`): how a classifier
    reads a text, in training and evaluation alike.

    A framed text longer than `limit` ids is one error line naming it (`fix`: how to truncate), or with `truncate`
    is cut to fit (keeping the frame and at least one token of text). With `bad_rows` such a text is rejected
    through it instead: when it skips, the text's entry is None (`kept_rows` drops them).
    """
    before, after = list(frame[0]), list(frame[1])
    spelled = {i: f"<{name}>" for name, i in special_ids.items()}
    framed = f" with {' '.join(spelled.get(i, str(i)) for i in before + after)}" if before + after else ""
    out: list[list[int] | None] = []
    for i, enc in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        ids = [*before, *enc.ids, *after]
        if len(ids) > limit:
            if not truncate:
                message = (f"the text of example {i + 1} has {len(ids)} tokens{framed}, more than "
                           f"model.max_seq_len {limit}")
                (bad_rows or BadRows(where)).reject(TOO_LONG, message, fix=fix)  # raises unless it skips
                out.append(None)
                continue
            ids = [*before, *enc.ids[:max(limit - len(before) - len(after), 1)], *after]
        out.append(ids)
    return out


def kept_rows(rows: Sequence[RowT], ids: Sequence[list[int] | None]) -> tuple[list[RowT], list[list[int]]]:
    """The rows whose ids are not None (not skipped as bad, `BadRows`) and those ids, in order."""
    kept = [(row, i) for row, i in zip(rows, ids, strict=True) if i is not None]
    return [row for row, _ in kept], [i for _, i in kept]


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


__all__ = ["BadRows", "EpochSampler", "encode_texts", "held_out", "kept_rows", "pad", "read_pairs", "seq2seq_source",
           "split_labels"]
