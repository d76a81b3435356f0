"""Loaders over prepared token shards: memory-mapped, never copied into RAM, resumable exactly.

- `TokenDataset`: one split of a prepared directory (`lmforge prepare`), as one long token stream over its shards,
  with document boundaries.
- `RandomWindowLoader`: causal-LM training batches of random windows; its state is the random generator's, so a
  resumed run draws exactly the batches it would have drawn.
- `SequentialLoader`: one deterministic pass over consecutive windows (evaluation), split across ranks.
- `DocumentLoader`: whole documents in (shuffled) order, for objectives that need document structure.

Every loader takes `rank` / `world_size`: ranks never share a sequential window or a document, and random streams
are seeded by (seed, rank).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.shards import read_manifest
from lmforge.errors import UserError


class TokenDataset:
    def __init__(self, directory: Path, split: str, manifest: dict[str, Any]) -> None:
        info = manifest["splits"][split]
        self.directory, self.split, self.manifest = directory, split, manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab_size: int = manifest["vocab_size"]
        self.special_ids: dict[str, int] = dict(manifest["special_ids"])
        self.eos_id: int | None = manifest.get("eos_id")
        self.tokenizer_path = (directory / manifest["tokenizer"]["file"]).resolve()
        self.num_documents: int = info["documents"]
        self.num_bytes: int = info["bytes"]
        self.shards: list[np.memmap] = []
        ends, start = [], 0
        fix = "the data directory is damaged; run `lmforge prepare` again"
        for s in info["shards"]:
            path = directory / s["file"]
            expected = s["tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                size = path.stat().st_size if path.is_file() else "missing"
                raise UserError(f"shard size {size} does not match the manifest ({expected} bytes)",
                                where=path, fix=fix)
            self.shards.append(np.memmap(path, dtype=self.dtype, mode="r") if s["tokens"] else
                               np.zeros(0, dtype=self.dtype))
            try:
                idx = np.load(directory / s["index"])
            except (OSError, ValueError) as e:
                raise UserError(f"unreadable document index ({e})", where=directory / s["index"], fix=fix) from None
            ends.append(idx.astype(np.int64) + start)
            start += s["tokens"]
        self.starts = np.cumsum([0] + [len(m) for m in self.shards])  # token offset of each shard
        self.num_tokens = int(self.starts[-1])
        self.doc_ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)  # exclusive, global

    @classmethod
    def open(cls, data_dir: str | Path, split: str = "train") -> TokenDataset:
        directory, manifest = read_manifest(data_dir)
        if split not in manifest["splits"]:
            raise UserError(f"no '{split}' split in this prepared data (it has: {', '.join(manifest['splits'])})",
                            where=directory, fix="prepare with a non-zero --val-fraction / --test-fraction")
        return cls(directory, split, manifest)

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / self.num_tokens if self.num_tokens else 0.0

    def __len__(self) -> int:
        return self.num_tokens

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's stream, read across shard boundaries."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside {self.num_tokens} tokens")
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        lo = start - int(self.starts[i])
        if lo + length <= len(self.shards[i]):
            return np.asarray(self.shards[i][lo:lo + length])
        parts, need = [], length
        while need > 0:
            piece = self.shards[i][lo:lo + need]
            parts.append(piece)
            need -= len(piece)
            i, lo = i + 1, 0
        return np.concatenate(parts)

    def document(self, i: int) -> np.ndarray:
        """Document i's tokens, its trailing <eos> included."""
        begin = int(self.doc_ends[i - 1]) if i > 0 else 0
        return self.window(begin, int(self.doc_ends[i]) - begin)


def _to_xy(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(windows.astype(np.int64))
    return t[:, :-1], t[:, 1:]


class RandomWindowLoader:
    """Endless batches of random windows: x (B, T) and y = x shifted by one (B, T), int64.

    Each step draws one global batch of batch_size x world_size window starts from a generator seeded alike on
    every rank, and rank r reads only rows r*batch_size:(r+1)*batch_size. So a run sees the same data whatever
    the number of processes at the same global batch (2 ranks x 8 rows train exactly as 1 process x 16 rows),
    and a checkpoint of the generator resumes exactly on another world size.
    """

    def __init__(self, ds: TokenDataset, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if ds.num_tokens < seq_len + 1:
            raise UserError(f"the {ds.split} split has {ds.num_tokens} tokens, fewer than one sequence of "
                            f"{seq_len + 1}", where=ds.directory, fix="use a shorter --seq-len or more data")
        self.ds, self.batch_size, self.seq_len = ds, batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.Generator(np.random.PCG64([seed, 0]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, self.ds.num_tokens - self.seq_len, size=self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _to_xy(np.stack([self.ds.window(int(s), self.seq_len + 1) for s in mine]))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class SequentialLoader:
    """Consecutive windows (each overlapping the next by the one target token), rank r taking every r-th."""

    def __init__(self, ds: TokenDataset, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        self.ds, self.batch_size, self.seq_len, self.drop_last = ds, batch_size, seq_len, drop_last
        n_windows = max(0, (ds.num_tokens - 1) // seq_len)
        self.windows = np.arange(rank, n_windows, world_size)
        self.position = 0  # next window (index into self.windows)

    def __len__(self) -> int:
        full, rest = divmod(len(self.windows), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while self.position < len(self.windows):
            chunk = self.windows[self.position:self.position + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                break
            self.position += len(chunk)
            yield _to_xy(np.stack([self.ds.window(int(w) * self.seq_len, self.seq_len + 1) for w in chunk]))
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


class DocumentLoader:
    """Whole documents (np arrays, <eos> included) in a seeded shuffled order per epoch, endlessly if `loop`."""

    def __init__(self, ds: TokenDataset, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 loop: bool = True) -> None:
        if ds.num_documents == 0:
            raise UserError(f"the {ds.split} split has no documents", where=ds.directory,
                            fix="prepare more data")
        self.ds, self.seed, self.shuffle, self.loop = ds, seed, shuffle, loop
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    def _order(self) -> np.ndarray:
        n = self.ds.num_documents
        order = (np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(n) if self.shuffle
                 else np.arange(n))
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            order = self._order()
            while self.position < len(order):
                i = int(order[self.position])
                self.position += 1
                yield self.ds.document(i)
            self.epoch, self.position = self.epoch + 1, 0
            if not self.loop:
                return

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
