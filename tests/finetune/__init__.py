"""Tests of the fine-tuning methods. `run_train` runs `lmforge train` in-process on tiny CPU settings."""

from __future__ import annotations

import json
from pathlib import Path

TINY = ["--batch-size", "4", "--seq-len", "32", "--steps", "5", "--log-every", "1", "--eval-every", "0",
        "--eval-batches", "2", "--device", "cpu", "--no-tensorboard", "--optim.warmup-steps", "0",
        "--model.d-model", "64"]


def run_train(data: Path | None, out: Path, *flags: str) -> tuple[int, list[dict]]:
    """`lmforge train --data DATA --out OUT` + tiny defaults + flags (later flags win): (exit code, metrics)."""
    from lmforge.cli.main import main

    rc = main(["train", *(["--data", str(data)] if data else []), "--out", str(out), *TINY, *flags])
    metrics = out / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return rc, records
