"""A run directory is one run's; a full disk is one line and keeps the previous checkpoint; --out must be a run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import main
from lmforge.locks import lock_path
from lmforge.models import build_model
from lmforge.models.config import ModelConfig
from lmforge.models.io import save_model
from lmforge.train import checkpoint as checkpoint_module

ARGS = ["--model.n-layer", "1", "--model.d-model", "32", "--model.n-head", "2", "--seq-len", "32",
        "--batch-size", "4", "--eval-every", "0", "--device", "cpu", "--no-tensorboard", "--no-compile"]


def lmforge(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_QUIET": "1"}
    return subprocess.Popen([sys.executable, "-m", "lmforge", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_second_train_on_a_run_still_training_is_refused(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = lmforge("train", "--data", str(tiny_data), "--out", str(out), *ARGS, "--steps", "100000",
                    "--checkpoint-every", "1000")
    try:
        deadline = time.time() + 120
        while not (lock_path(out).is_file() and lock_path(out).read_text().strip()):
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.1)
        second = lmforge("train", "--data", str(tiny_data), "--out", str(out), "--resume", *ARGS)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "in use by another process" in lines[0] and f"pid {first.pid}" in lines[0]
    finally:
        first.kill()
        first.wait()
    # The first is gone (SIGKILL: no clean-up); its lock is stale and the next run takes it over.
    third = lmforge("train", "--data", str(tiny_data), "--out", str(out), "--resume", *ARGS, "--steps", "2")
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert "taking over the lock" in err and f"pid {first.pid}" in err
    assert not lock_path(out).exists()


def test_train_into_a_model_checkpoint_directory_is_refused(tiny_data, tmp_path, capsys):
    cfg = ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, max_seq_len=32)
    imported = save_model(tmp_path / "imported", build_model(cfg), cfg)
    before = {p: p.read_bytes() for p in imported.rglob("*")}
    assert main(["train", "--data", str(tiny_data), "--out", str(imported), "--resume", *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an lmforge training run" in err[0] and f"--init-from {imported}" in err[0]
    assert {p: p.read_bytes() for p in imported.rglob("*")} == before


def test_disk_full_in_a_checkpoint_is_one_line_and_resume_continues(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_on_the_second(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_on_the_second)
    args = ["train", "--data", str(tiny_data), "--out", str(out), *ARGS, "--steps", "4", "--checkpoint-every", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and "step_000004" in err[0] and "needs about" in err[0]
    ckpts = out / "checkpoints"
    # Nothing half-written: the last good checkpoint, no temporary directory.
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith((".", "step_"))) == ["step_000002"]
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    assert not lock_path(out).exists()
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert main([*args, "--resume"]) == 0
    assert json.loads((ckpts / "step_000004" / "checksums.json").read_text())["sha256"]


def test_disk_full_in_prepare_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from lmforge.data import shards

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to prepare\n\n" * 50)

    def full(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.TextSpool, "add", full)
    out = tmp_path / "data"
    assert main(["prepare", str(corpus), "--out", str(out), "--tokenizer.vocab-size", "300"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and str(out) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]  # no build directory, no lock left


def test_disk_full_saving_a_model_is_one_line(tmp_path, monkeypatch):
    from lmforge.errors import UserError
    from lmforge.models import io

    def full(*a, **kw):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(io, "save_file", full)
    cfg = ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, max_seq_len=32)
    with pytest.raises(UserError, match="no space left.*needs about"):
        save_model(tmp_path / "m", build_model(cfg), cfg)
    assert not list(tmp_path.iterdir())
