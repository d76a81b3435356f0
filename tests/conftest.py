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


TORCHRUN_TIMEOUT_S = 240  # a 2-rank job not done by then hangs: kill it and fail (busy shared cores included)


@pytest.fixture(scope="session")
def torchrun_two():
    """Run `script ARGS` on 2 ranks through torchrun; returns (exit status, combined log).

    --standalone gives each job a private rendezvous on a free port, so concurrent test runs never meet; the job
    runs in its own session so that a hung one is killed whole (torchrun and both ranks) and the test fails.
    """
    import signal
    import subprocess
    import sys

    def run(script: Path, *args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               *args]
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, cwd=cwd, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=TORCHRUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            pytest.fail(f"torchrun job still running after {TORCHRUN_TIMEOUT_S}s:\n{log[-5000:]}")
        return proc.returncode, log

    return run


@pytest.fixture(scope="session")
def trained_lms(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gpt and a llama (2 layers, 64 wide) trained 120 steps on `tiny_data`: peaked enough next-token
    distributions that compression's effect on greedy tokens and perplexity means something. Read-only."""
    import torch

    from lmforge.cli.main import main

    out = tmp_path_factory.mktemp("trained_lms")
    before = torch.get_num_threads()
    runs = {}
    for family, preset in (("gpt", "tiny"), ("llama", "llama-tiny")):
        assert main(["train", "--data", str(tiny_data), "--out", str(out / family), "--preset", preset,
                     "--steps", "120", "--model.n-layer", "2", "--model.d-model", "64", "--model.n-head", "4",
                     "--model.max-seq-len", "64", "--seq-len", "64", "--batch-size", "8", "--optim.lr", "3e-3",
                     "--eval-every", "0", "--eval-batches", "4", "--log-every", "60", "--no-tensorboard",
                     "--device", "cpu", "--seed", "0"]) == 0
        runs[family] = out / family / "checkpoints" / "best"
    torch.set_num_threads(before)
    return runs
