"""Token shards: documents encoded in parallel into flat binary files of token ids, plus a manifest.

Layout of a prepared directory (`lmforge prepare --out DIR`):

    DIR/manifest.json        what is here; written last, so a directory without it is not (yet) complete
    DIR/tokenizer.json       the tokenizer that encoded it (its sha256 is in the manifest)
    DIR/train-00000.bin      token ids, little-endian uint16 (vocab <= 65536) or uint32, nothing else
    DIR/train-00000.idx      int64 .npy: end offset (exclusive, in the shard) of each document ending there
    DIR/val-00000.bin ...

Documents are packed back to back, each followed by <eos>, and a shard is cut at exactly `shard_tokens`
tokens, so a document may continue in the next shard; loaders read across shard boundaries. The `.bin` files
are the same raw format as nanoGPT's `train.bin`, so `np.memmap(path, np.uint16)` reads one.

Which split a document goes to depends only on (seed, its index in the cleaned corpus): a hash of the pair
falls in [0, 1), below test_fraction is test, below test+val is val, the rest is train. Re-running with the
same corpus and seed gives the same split; a document is never in two splits.

Encoding is the slow step, so it runs in one process per core. Within a process, byte-level BPE is sped up
by caching: the GPT-2 split of text into words is done with Python's `re` (exactly equivalent on ASCII), and
each distinct word is encoded once by `tokenizers` and then looked up (see `DocumentEncoder`). Output is
identical to `lmforge.data.tokenizer.encode_ids` (`Tokenizer.encode`, runs of more than LONG_RUN_CHARS characters
without whitespace cut first, so that encoding stays linear) and does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import multiprocessing
import os
import re
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from lmforge.atomic import atomic_file, write_json
from lmforge.data.tokenizer import load_tokenizer, special_token_ids, split_long_runs, tokenizer_hash
from lmforge.errors import UserError
from lmforge.progress import progress_bar

MANIFEST = "manifest.json"
FORMAT = "lmforge-token-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")

SPOOL_TEXT = "spool.txt"
SPOOL_OFFSETS = "spool-offsets.npy"

CHUNK_BYTES = 1 << 20  # text per task: small enough to balance cores, large enough to amortize the hand-off
MIN_PARALLEL_BYTES = 8 << 20  # below this, starting worker processes (~0.5 s each) costs more than it saves
CACHE_WORDS = 1 << 19  # distinct words kept per process (~60 MB); the cache is emptied when full
CACHE_CHARS = 64  # longer words are encoded each time they occur, not kept


# ---------------------------------------------------------------------------------------------------- spool

class TextSpool:
    """Cleaned documents as one UTF-8 file plus their offsets: the encode step's random-access input.

    Reading and cleaning run once, in order (de-duplication depends on everything seen before), while
    encoding runs in parallel over ranges of documents; the spool connects the two.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.directory / SPOOL_TEXT, "wb")  # noqa: SIM115 (closed in close())
        self._offsets = array("q", [0])

    def add(self, text: str) -> int:
        data = text.encode("utf-8")
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        return len(data)

    @property
    def num_documents(self) -> int:
        return len(self._offsets) - 1

    @property
    def num_bytes(self) -> int:
        return self._offsets[-1]

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            np.save(self.directory / SPOOL_OFFSETS, np.frombuffer(self._offsets, dtype=np.int64))


def spool_offsets(directory: str | Path) -> np.ndarray:
    return np.load(Path(directory) / SPOOL_OFFSETS)


# ---------------------------------------------------------------------------------------------------- split

def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fast, well-mixed 64-bit hash (uint64 arrays wrap on overflow, as the algorithm expects)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def split_uniforms(seed: int, n: int) -> np.ndarray:
    """A number in [0, 1) per document index, from a hash of (seed, index)."""
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    h = _splitmix64(np.arange(n, dtype=np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_splits(n: int, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split code per document (0 train, 1 val, 2 test), deterministic in (seed, index)."""
    u = split_uniforms(seed, n)
    codes = np.zeros(n, dtype=np.uint8)
    codes[u < test_fraction + val_fraction] = 1
    codes[u < test_fraction] = 2
    # A small corpus can leave a requested split empty by chance; it then takes the train document whose hash
    # is nearest its bucket, so that the choice still depends on the seed alone.
    for code, frac in ((1, val_fraction), (2, test_fraction)):
        if frac > 0 and not (codes == code).any():
            train = np.flatnonzero(codes == 0)
            if len(train) < 2:
                raise UserError(f"the corpus has {n} document(s) after cleaning: too few to hold out a "
                                f"{SPLITS[code]} split",
                                fix="add documents, split text files finer (read.doc_split line), or set "
                                    f"{SPLITS[code]}_fraction 0")
            codes[train[np.argmin(u[train])]] = code
    return codes


# -------------------------------------------------------------------------------------------------- encoder

# Split points that are word boundaries for the GPT-2 pattern whatever the characters around them: after a
# non-space character and before an ASCII space/tab/newline. A segment of text between two such points
# encodes the same alone as inside its document (proof: no alternative of the pattern matches a non-space
# followed by a space, and the pattern has no look-behind). The middle group carries a segment past
# non-ASCII whitespace (U+00A0 ...) that would otherwise end it.
_SEGMENT = re.compile(r"[\t-\r ]*(?:[^\t-\r ]*\s[\t-\r ]+)*[^\t-\r ]*")
# The GPT-2 pre-tokenizer pattern ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)
# with its classes spelled out for ASCII text, where \p{L}, \p{N} and \s are exactly these sets.
_GPT2_ASCII = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\t-\r A-Za-z0-9]+"
                         r"|[\t-\r ]+(?![^\t-\r ])|[\t-\r ]+")


def _encoder_mode(spec: dict[str, Any]) -> str:
    """Which fast path is exact for this tokenizer: "bytelevel", "char", or "batch" (plain encode_batch)."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    plain = (spec.get("normalizer") is None and model.get("dropout") is None
             and all(t.get("special") for t in spec.get("added_tokens") or []))
    if (plain and model.get("type") == "BPE" and pre.get("type") == "ByteLevel"
            and pre.get("add_prefix_space") is False and pre.get("use_regex", True) is True):
        return "bytelevel"
    if (plain and model.get("type") == "BPE" and not pre and not model.get("merges") and model.get("unk_token")
            and not model.get("byte_fallback") and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")):
        return "char"
    return "batch"


class DocumentEncoder:
    """Token ids of whole documents as raw bytes of `dtype`.

    Exactly `encode_ids(tok, text)` (`tok.encode(text, add_special_tokens=False).ids` on the pieces of
    `split_long_runs`), with one deliberate difference from that call's default: a special token's spelling
    inside a document ("<eos>" in a web page) is encoded as text, so a document can never inject a document
    boundary.
    """

    def __init__(self, tok: Tokenizer, dtype: np.dtype | str) -> None:
        tok.encode_special_tokens = True
        self.tok = tok
        self.dtype = np.dtype(dtype)
        spec = json.loads(tok.to_str())
        self.mode = _encoder_mode(spec)
        self._words: dict[str, bytes] = {}
        self._batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets: ~1.5x faster
        if self.mode == "char":
            model = spec["model"]
            chars = {c: i for c, i in model["vocab"].items() if len(c) == 1}
            unk = model["vocab"][model["unk_token"]]
            self._lut = np.full(max(map(ord, chars), default=0) + 2, unk, dtype=self.dtype)  # last entry: <unk>
            for c, i in chars.items():
                self._lut[ord(c)] = i

    def _ids(self, texts: list[str]) -> list[bytes]:
        return [np.array(e.ids, dtype=self.dtype).tobytes()
                for e in self._batch(texts, add_special_tokens=False)]

    def encode(self, texts: list[str]) -> list[bytes]:
        if self.mode == "char":  # one id per character: cutting long runs would change nothing
            top = len(self._lut) - 1
            return [self._lut[np.minimum(np.frombuffer(t.encode("utf-32-le"), np.uint32), top)].tobytes()
                    for t in texts]
        pieces = [split_long_runs(t) for t in texts]
        if self.mode == "batch":
            flat = self._ids([p for ps in pieces for p in ps])
            out, i = [], 0
            for ps in pieces:
                out.append(b"".join(flat[i:i + len(ps)]))
                i += len(ps)
            return out
        words = [[w for p in ps for w in self._words_of(p)] for ps in pieces]
        cache = self._words
        missing = [w for w in {w for ws in words for w in ws} if w not in cache]
        if missing:
            if len(cache) + len(missing) > CACHE_WORDS:
                cache.clear()  # rare (huge vocabularies of distinct words); simpler than an LRU, as fast here
                missing = list({w for ws in words for w in ws})
            cache.update(zip(missing, self._ids(missing)))
        get = cache.__getitem__
        out = [b"".join(map(get, ws)) for ws in words]
        for w in missing:
            if len(w) > CACHE_CHARS:  # the pieces of a long run: seldom seen twice, too big to keep
                del cache[w]
        return out

    @staticmethod
    def _words_of(text: str) -> list[str]:
        """GPT-2 words of ASCII stretches; a non-ASCII segment is passed to `tokenizers` whole."""
        if text.isascii():
            return _GPT2_ASCII.findall(text)
        out: list[str] = []
        for seg in _SEGMENT.findall(text):
            if seg.isascii():
                out += _GPT2_ASCII.findall(seg)
            elif seg:
                out.append(seg)
        return out


# --------------------------------------------------------------------------------------------------- worker

_STATE: dict[str, Any] = {}  # per process: the encoder and the mapped spool


def _spool_text(spool_dir: str | Path) -> Any:
    """The spooled text, memory-mapped (b"" when empty)."""
    path = Path(spool_dir) / SPOOL_TEXT
    if not path.stat().st_size:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _worker_init(tokenizer_path: str, spool_dir: str, dtype: str, vocab_size: int, eos_id: int,
                 pool: bool) -> None:
    if pool:
        # One process per core already; the library's own threads would only compete with the other workers.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    text = _spool_text(spool_dir)
    _STATE.update(encoder=DocumentEncoder(Tokenizer.from_file(tokenizer_path), dtype), text=text,
                  dtype=np.dtype(dtype), vocab_size=vocab_size, eos=np.array([eos_id], dtype=dtype).tobytes())


def _encode_chunk(task: tuple[np.ndarray, np.ndarray, bool]) -> tuple[dict[str, tuple], np.ndarray, bool]:
    """Encode documents offsets[i]..offsets[i+1]; per split: (tokens with <eos> after each doc, lengths, bytes).

    A task that is a part of one huge document before its last (`ends` False) gets no <eos>: the caller joins the
    parts (`_join_parts`)."""
    offsets, codes, ends = task
    text, dtype, eos = _STATE["text"], _STATE["dtype"], _STATE["eos"]
    bounds = offsets.tolist()
    docs = [text[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]
    ids = _STATE["encoder"].encode(docs)
    nbytes = np.diff(offsets)
    counts = np.zeros(_STATE["vocab_size"], dtype=np.int64)
    out: dict[str, tuple] = {}
    for code, name in enumerate(SPLITS):
        sel = np.flatnonzero(codes == code).tolist()
        if not sel:
            continue
        parts: list[bytes] = []
        for i in sel:
            parts += (ids[i], eos if ends else b"")
        tokens = np.frombuffer(b"".join(parts), dtype=dtype)
        lengths = np.array([len(ids[i]) // dtype.itemsize + ends for i in sel], dtype=np.int64)
        counts += np.bincount(tokens, minlength=len(counts))[: len(counts)]
        out[name] = (tokens, lengths, nbytes[sel])
    return out, counts, ends


# --------------------------------------------------------------------------------------------------- writer

class _ShardWriter:
    """Appends documents to `{split}-NNNNN.bin`, cutting a new shard every `shard_tokens` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._stack: contextlib.ExitStack | None = None
        self._file: Any = None
        self._reset()

    def _reset(self) -> None:
        self._n, self._docs, self._bytes = 0, 0, 0
        self._ends: list[np.ndarray] = []

    def _name(self, ext: str) -> str:
        return f"{self.split}-{len(self.shards):05d}.{ext}"

    def add(self, tokens: np.ndarray, lengths: np.ndarray, nbytes: np.ndarray) -> None:
        ends = np.cumsum(lengths)  # exclusive end of each document, counted from the start of `tokens`
        pos = done = 0
        while pos < len(tokens):
            if self._file is None:
                self._stack = contextlib.ExitStack()
                self._file = self._stack.enter_context(atomic_file(self.directory / self._name("bin")))
            take = min(self.shard_tokens - self._n, len(tokens) - pos)
            self._file.write(tokens[pos:pos + take].tobytes())
            upto = int(np.searchsorted(ends, pos + take, side="right"))  # documents ending in this piece
            self._ends.append(ends[done:upto] - pos + self._n)
            self._docs += upto - done
            self._bytes += int(nbytes[done:upto].sum())
            done, pos, self._n = upto, pos + take, self._n + take
            if self._n == self.shard_tokens:
                self._close()

    def _close(self) -> None:
        idx = np.concatenate(self._ends).astype(np.int64) if self._ends else np.zeros(0, dtype=np.int64)
        with atomic_file(self.directory / self._name("idx")) as f:
            np.save(f, idx)
        assert self._stack is not None
        self._stack.close()  # renames the finished .bin into place
        self.shards.append({"file": self._name("bin"), "index": self._name("idx"), "tokens": self._n,
                            "documents": self._docs, "bytes": self._bytes})
        self._stack, self._file = None, None
        self._reset()

    def finish(self) -> dict[str, Any]:
        if self._file is not None:
            self._close()
        return {"tokens": sum(s["tokens"] for s in self.shards),
                "documents": sum(s["documents"] for s in self.shards),
                "bytes": sum(s["bytes"] for s in self.shards), "shards": self.shards}

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); finished shards stay, but no manifest names them."""
        if self._stack is not None:
            with contextlib.suppress(BaseException):
                self._stack.__exit__(RuntimeError, RuntimeError("encoding aborted"), None)
            self._stack, self._file = None, None


# ---------------------------------------------------------------------------------------------------- encode

def resolve_workers(workers: int) -> int:
    """0 means every core this process may run on."""
    if workers < 0:
        raise UserError(f"workers is {workers}", fix="give 0 (all cores) or a positive number")
    if workers:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _tasks(offsets: np.ndarray, codes: np.ndarray, text: Any = b""):
    """Ranges of whole documents of about CHUNK_BYTES each; a document of more than 2 x CHUNK_BYTES (one long
    line, a whole book) is cut into parts of about CHUNK_BYTES, so that the workers share it too.

    Parts end where `split_long_runs` cuts (whitespace, or its cuts inside long runs): the tokenizer encodes those
    pieces one by one anyway, so the joined parts are exactly the document's tokens."""
    n = len(offsets) - 1
    cuts = np.searchsorted(offsets, np.arange(CHUNK_BYTES, offsets[-1], CHUNK_BYTES), side="left")
    bounds = np.unique(np.concatenate([[0], cuts, [n]]))
    huge = np.flatnonzero(np.diff(offsets) > 2 * CHUNK_BYTES) if len(text) else np.zeros(0, dtype=np.int64)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        start = lo
        for i in huge[np.searchsorted(huge, lo):np.searchsorted(huge, hi)].tolist():
            if start < i:
                yield offsets[start:i + 1], codes[start:i], True
            yield from _document_parts(int(offsets[i]), int(offsets[i + 1]), codes[i:i + 1], text)
            start = i + 1
        if start < hi:
            yield offsets[start:hi + 1], codes[start:hi], True


def _document_parts(start: int, end: int, code: np.ndarray, text: Any):
    """One document's byte range [start, end) as tasks of about CHUNK_BYTES, cut between `split_long_runs` pieces."""
    edges, size = [start], 0
    for piece in split_long_runs(bytes(text[start:end]).decode("utf-8")):
        size += len(piece.encode("utf-8"))
        if size - (edges[-1] - start) >= CHUNK_BYTES:
            edges.append(start + size)
    if edges[-1] != end:
        edges.append(end)
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        yield np.array([a, b], dtype=np.int64), code, i == len(edges) - 2


def _join_parts(parts: list[dict[str, tuple]]) -> dict[str, tuple]:
    """The results of one document's parts (the last one's with its <eos>) as one document."""
    name = next(iter(parts[-1]))
    tokens = np.concatenate([p[name][0] for p in parts])
    return {name: (tokens, np.array([len(tokens)], dtype=np.int64),
                   np.array([sum(int(p[name][2].sum()) for p in parts)], dtype=np.int64))}


@dataclass
class EncodeResult:
    manifest: dict[str, Any]
    token_counts: np.ndarray  # occurrences of each token id over all splits (<eos> separators included)
    seconds: float
    workers: int


def encode_spool(spool_dir: str | Path, out_dir: str | Path, tokenizer_path: str | Path, *,
                 val_fraction: float = 0.05, test_fraction: float = 0.0, seed: int = 0, workers: int = 0,
                 shard_tokens: int = 100_000_000, sources: list[dict[str, Any]] | None = None,
                 config: dict[str, Any] | None = None) -> EncodeResult:
    """Encode the spooled documents into token shards in `out_dir` and write its manifest (last)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # An old manifest would vouch for shards this run is about to overwrite.
    (out_dir / MANIFEST).unlink(missing_ok=True)
    if shard_tokens < 1:
        raise UserError(f"shard_tokens is {shard_tokens}", fix="give a positive number of tokens per shard")
    tokenizer_path = Path(tokenizer_path)
    tok = load_tokenizer(tokenizer_path)
    special = special_token_ids(tok)
    if "eos" not in special:
        raise UserError("the tokenizer has no end-of-text token (<eos>, </s> or <|endoftext|>) to separate "
                        "documents with", where=tokenizer_path, fix="use a tokenizer with one")
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)

    offsets = spool_offsets(spool_dir)
    n_docs, n_bytes = len(offsets) - 1, int(offsets[-1])
    codes = assign_splits(n_docs, seed, val_fraction, test_fraction)
    wanted = [name for name, frac in zip(SPLITS, (1.0, val_fraction, test_fraction)) if frac > 0]
    writers = {name: _ShardWriter(out_dir, name, dtype, shard_tokens) for name in wanted}
    counts = np.zeros(vocab_size, dtype=np.int64)
    n_workers = resolve_workers(workers)
    use_pool = n_workers > 1 and n_bytes >= MIN_PARALLEL_BYTES
    initargs = (str(tokenizer_path), str(spool_dir), dtype.name, vocab_size, special["eos"], use_pool)

    try:
        with progress_bar() as bar, contextlib.ExitStack() as stack:
            task = bar.add_task("encoding", total=n_bytes, unit="bytes")
            if use_pool:
                # spawn, not fork: the parent may hold the tokenizer library's threads (training), and a forked
                # child would inherit their locks.
                pool = stack.enter_context(
                    multiprocessing.get_context("spawn").Pool(n_workers, _worker_init, initargs))
                text = _spool_text(spool_dir)
                if len(text):
                    stack.callback(text.close)
                results = pool.imap(_encode_chunk, _tasks(offsets, codes, text))
            else:
                _worker_init(*initargs)
                stack.callback(_STATE.clear)
                results = map(_encode_chunk, _tasks(offsets, codes, _STATE["text"]))
            pending: list[dict[str, tuple]] = []  # the parts so far of a document cut into several tasks
            for per_split, chunk_counts, ends in results:
                if not ends or pending:
                    pending.append(per_split)
                    counts += chunk_counts
                    if not ends:
                        continue
                    per_split, chunk_counts, pending = _join_parts(pending), 0, []
                chunk_bytes = 0
                for name, (tokens, lengths, nbytes) in per_split.items():
                    writers[name].add(tokens, lengths, nbytes)
                    chunk_bytes += int(nbytes.sum())
                counts += chunk_counts
                bar.advance(task, chunk_bytes)
        splits = {name: w.finish() for name, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dtype": dtype.name,
        "byte_order": "little",
        "vocab_size": vocab_size,
        "special_ids": special,
        "eos_id": special["eos"],
        "eos_appended": True,  # every document is followed by <eos>
        "tokenizer": {"file": _relative(tokenizer_path, out_dir), "sha256": tokenizer_hash(tokenizer_path)},
        "split": {"method": "splitmix64(seed, document index) -> [0, 1): test, then val, then train",
                  "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction},
        "splits": splits,
        "documents": n_docs,
        "bytes": n_bytes,
        "tokens": sum(s["tokens"] for s in splits.values()),
        "sources": sources or [],
        "config": config or {},
    }
    write_json(out_dir / MANIFEST, manifest)
    return EncodeResult(manifest, counts, time.perf_counter() - t0, n_workers if use_pool else 1)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


# ---------------------------------------------------------------------------------------------------- read

def read_manifest(data_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(directory, manifest) of a prepared directory, checked for shape; UserError if it is not one."""
    directory = Path(data_dir)
    if directory.name == MANIFEST and directory.is_file():
        directory = directory.parent
    fix = "prepare it with `lmforge prepare --out DIR`, or run that again"
    if not directory.is_dir():
        raise UserError("no such data directory", where=directory, fix=fix)
    path = directory / MANIFEST
    if not path.is_file():
        raise UserError(f"no {MANIFEST}: not a prepared data directory, or its preparation did not finish",
                        where=directory, fix=fix)
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt manifest (not valid JSON: {e})", where=path, fix=fix) from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError("not an lmforge token-shard manifest", where=path, fix=fix)
    if m.get("version") != FORMAT_VERSION:
        raise UserError(f"manifest format version {m.get('version')!r}; this lmforge reads version "
                        f"{FORMAT_VERSION}", where=path, fix=fix)
    try:
        ok = (m["dtype"] in ("uint16", "uint32") and isinstance(m["vocab_size"], int) and m["vocab_size"] > 0
              and isinstance(m["splits"], dict) and isinstance(m["special_ids"], dict)
              and isinstance(m["tokenizer"]["file"], str))
        for split in m["splits"].values():
            for s in split["shards"]:
                ok = ok and isinstance(s["file"], str) and isinstance(s["index"], str)
                ok = ok and all(isinstance(s[k], int) and s[k] >= 0 for k in ("tokens", "documents", "bytes"))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError("corrupt manifest (fields missing or of the wrong type)", where=path, fix=fix)
    return directory, m
