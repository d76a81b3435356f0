"""Tests of the fine-tuning methods. `run_train` is the trainer tests' helper (`tests/train/objectives`: `lmforge
train` in-process on tiny CPU settings) at batch size 4."""

from __future__ import annotations

from pathlib import Path

from train.objectives import run_train as run_tiny_train


def run_train(data: Path | None, out: Path, *flags: str) -> tuple[int, list[dict]]:
    """`tests/train/objectives.run_train` with `--batch-size 4` (later flags still win): (exit code, metrics)."""
    return run_tiny_train(data, out, "--batch-size", "4", *flags)
