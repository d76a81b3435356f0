"""Shared test fixtures: tiny, built in the test; ../shared/data only where a test says so (skipped if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("LMFORGE_QUIET", "1")  # no live progress bars in test logs

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test (and module fixture) on one intra-op thread: the suite runs one test per core (pytest -n 2),
    tiny models gain nothing from more, and matmuls are bit-for-bit repeatable against subprocesses run with
    OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; the test is skipped with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"team data not present at {SHARED_DATA} (only on team machines and CI)")
    return SHARED_DATA


def write_corpus(path: Path, docs: int = 400) -> Path:
    """The first `docs` documents of the built-in corpus as a .txt file (blank-line separated): real English text."""
    from itertools import islice

    from lmforge.data.builtin import python_docs

    texts = [" ".join(t.split()) for t in islice(python_docs(), docs)]
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path


def prepare_tiny(tmp: Path, kind: str = "bpe", vocab_size: int = 512, docs: int = 400, **options) -> Path:
    """A small prepared data directory (tokenizer + shards + manifest) built by the real `prepare`."""
    from lmforge.config import resolve
    from lmforge.data.prepare import PrepareConfig, prepare

    corpus = write_corpus(tmp / "corpus.txt", docs)
    cfg = resolve(PrepareConfig, inputs=[str(corpus)], out=str(tmp / "data"), val_fraction=0.1, workers=1,
                  tokenizer__kind=kind, tokenizer__vocab_size=vocab_size, **options)
    return prepare(cfg).out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared data (byte-level BPE, vocab 512, ~60k tokens) shared by the session's tests: treat as read-only."""
    return prepare_tiny(tmp_path_factory.mktemp("tiny_data"))
