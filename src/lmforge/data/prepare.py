"""`prepare`: corpus files -> cleaned documents -> tokenizer -> token shards + manifest + report, in one call.

    from lmforge.config import resolve
    from lmforge.data.prepare import PrepareConfig, prepare

    result = prepare(resolve(PrepareConfig, inputs=["builtin:python-docs"], out="runs/data"))
    print(result.report["tokens"]["total"], result.out)

Reading and cleaning stream the corpus once, in order, into a spool file (de-duplication needs to see documents in
order; memory stays bounded). The tokenizer trains from a second streaming pass over the spool, and encoding then
runs in parallel over ranges of spooled documents. Everything is built in a temporary directory beside `out` and
renamed into place at the end, so an interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_directory, disk_full_as_user_error
from lmforge.config import Config, field, save_config, to_dict
from lmforge.data.clean import CleanOptions, CleanStats, clean_documents
from lmforge.data.corpus import ReadOptions, ReadStats, iter_documents, resolve_sources, source_fingerprint
from lmforge.data.report import build_report, summary_lines, write_report
from lmforge.data.shards import TextSpool, encode_spool, spool_offsets
from lmforge.data.tokenizer import (
    TokenizerOptions,
    check_vocab_size,
    copy_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from lmforge.errors import UserError
from lmforge.locks import DirectoryLock
from lmforge.progress import progress_bar

SPOOL_DIR = ".spool"


@dataclass
class PrepareConfig(Config):
    inputs: list[str] = field(default_factory=lambda: ["builtin:python-docs"],
                              help="corpus files, directories (recursive) or globs: .txt .md .jsonl .csv .tsv "
                                   ".parquet, optionally .gz; or builtin:python-docs (the default) / "
                                   "builtin:tinyshakespeare")
    out: str = field("runs/data", "output directory: tokenizer.json, shards, manifest.json, report.json")
    read: ReadOptions = field(default_factory=ReadOptions, help="how files become documents")
    clean: CleanOptions = field(default_factory=CleanOptions, help="cleaning steps (each optional)")
    tokenizer: TokenizerOptions = field(default_factory=TokenizerOptions, help="tokenizer to train")
    tokenizer_from: str | None = field(None, "reuse this tokenizer.json (or a directory holding one) instead of "
                                             "training one, e.g. to encode new data for an existing model")
    val_fraction: float = field(0.05, "fraction of documents held out for validation (by document, seeded)",
                                min=0, lt=1)
    test_fraction: float = field(0.0, "fraction of documents held out for a test split", min=0, lt=1)
    seed: int = field(0, "seed of the train/val/test split")
    workers: int = field(0, "encoding processes (0 = every core)", min=0)
    shard_tokens: int = field(100_000_000, "tokens per shard file", min=1)
    overwrite: bool = field(False, "replace an existing prepared directory at out")

    def __post_init__(self) -> None:
        problems = []
        if self.val_fraction + self.test_fraction >= 1.0:
            problems.append("val_fraction + test_fraction must leave documents for training")
        if problems:
            raise UserError("invalid prepare config: " + "; ".join(problems), fix="see `lmforge prepare --help`")


@dataclass
class PrepareResult:
    out: Path
    manifest: dict[str, Any]
    report: dict[str, Any]
    summary: list[str]  # the human summary, as printed by the CLI


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Run the whole pipeline; returns where the prepared data is and what it holds.

    `out` (and the directory it is built in beside it) is this process's alone meanwhile (`lmforge.locks`): a
    second `prepare` to the same place is refused. A full disk is one line; `out` is left as it was.
    """
    with DirectoryLock(cfg.out, "prepare"):
        return _prepare(cfg)


def _prepare(cfg: PrepareConfig) -> PrepareResult:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a directory", where=out, fix="choose another --out")
    if out.exists() and not cfg.overwrite and any(out.iterdir()):
        raise UserError("output directory already exists and is not empty", where=out,
                        fix="choose another --out, or pass --overwrite to replace it")
    sources = resolve_sources(cfg.inputs)  # fails now on a missing path, before any work
    if cfg.tokenizer_from is None:
        check_vocab_size(cfg.tokenizer)
    else:
        load_tokenizer(cfg.tokenizer_from)  # fails now on a bad tokenizer file
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # The spool holds the cleaned text, the shards about as many bytes again.
    with disk_full_as_user_error(out, "prepared data", need=2 * _input_bytes(sources)), \
            atomic_directory(out) as tmp:
        spool_dir = tmp / SPOOL_DIR
        read_stats, clean_stats = ReadStats(), CleanStats()
        t0 = time.perf_counter()
        spool = TextSpool(spool_dir)
        try:
            docs = clean_documents(iter_documents(sources, cfg.read, read_stats), cfg.clean, clean_stats)
            with progress_bar() as bar:
                task = bar.add_task("reading + cleaning", total=None, unit="bytes")
                for doc in docs:
                    n = spool.add(doc.text)
                    bar.advance(task, n)
        finally:
            spool.close()
        timings["read_clean_s"] = time.perf_counter() - t0
        where = ", ".join(cfg.inputs)
        if read_stats.documents == 0:
            raise UserError("the corpus holds no documents", where=where,
                            fix="check the paths, the --read.jsonl-field / --read.csv-column, and the file types")
        if spool.num_documents == 0:
            raise UserError(f"no documents left after cleaning ({read_stats.documents} read, all dropped)",
                            where=where, fix="loosen the filters (--clean.min-chars, --clean.max-chars)")
        n_val = int(cfg.val_fraction > 0) + int(cfg.test_fraction > 0)
        if spool.num_documents < n_val + 1:
            raise UserError(f"only {spool.num_documents} document(s) after cleaning: too few to split into "
                            f"train/val/test", where=where,
                            fix="add text, use --read.doc-split paragraph or line, or set --val-fraction 0")

        t0 = time.perf_counter()
        if cfg.tokenizer_from is None:
            tok = train_tokenizer(_spooled_texts(spool_dir), cfg.tokenizer, total_bytes=spool.num_bytes)
            tokenizer_path = save_tokenizer(tok, tmp)
        else:
            tokenizer_path = copy_tokenizer(cfg.tokenizer_from, tmp)
            tok = load_tokenizer(tokenizer_path)
        timings["tokenizer_s"] = time.perf_counter() - t0

        effective = to_dict(cfg)
        enc = encode_spool(spool_dir, tmp, tokenizer_path, val_fraction=cfg.val_fraction,
                           test_fraction=cfg.test_fraction, seed=cfg.seed, workers=cfg.workers,
                           shard_tokens=cfg.shard_tokens, sources=[source_fingerprint(s) for s in sources],
                           config=effective)
        timings["encode_s"] = enc.seconds
        timings["encode_workers"] = enc.workers
        timings["total_s"] = time.perf_counter() - t_start
        report = build_report(enc.manifest, tok, enc.token_counts, read_stats, clean_stats, timings,
                              tokenizer_kind=None if cfg.tokenizer_from else cfg.tokenizer.kind)
        write_report(report, tmp)
        save_config(cfg, tmp / "config.yaml")
        _remove_spool(spool_dir)
    return PrepareResult(out=out, manifest=enc.manifest, report=report, summary=summary_lines(report, out))


def _input_bytes(sources: list[str]) -> int:
    return sum(os.path.getsize(s) for s in sources if os.path.isfile(s))


def _spooled_texts(spool_dir: Path) -> Iterator[str]:
    """The spooled documents again, streamed from disk (the tokenizer trainer reads them once)."""
    offsets = spool_offsets(spool_dir)
    data = np.memmap(spool_dir / "spool.txt", dtype=np.uint8, mode="r") if offsets[-1] else np.zeros(0, np.uint8)
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        yield bytes(data[a:b]).decode("utf-8")


def _remove_spool(spool_dir: Path) -> None:
    for p in spool_dir.iterdir():
        p.unlink()
    spool_dir.rmdir()


__all__ = ["PrepareConfig", "PrepareResult", "prepare"]
