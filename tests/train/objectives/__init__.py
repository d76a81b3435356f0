"""Tests of the pretraining objectives. `run_train` runs `lmforge train` in-process on tiny CPU settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

TINY = ["--batch-size", "8", "--seq-len", "32", "--steps", "5", "--log-every", "1", "--eval-every", "0",
        "--eval-batches", "2", "--device", "cpu", "--no-tensorboard", "--optim.warmup-steps", "0",
        "--model.d-model", "64"]


def run_train(data: Path | None, out: Path, *flags: str) -> tuple[int, list[dict]]:
    """`lmforge train --data DATA --out OUT` + tiny defaults + flags (later flags win): (exit code, metrics)."""
    from lmforge.cli.main import main

    rc = main(["train", *(["--data", str(data)] if data else []), "--out", str(out), *TINY, *flags])
    metrics = out / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return rc, records


def train_losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records if r.get("event") == "train"]


def last_eval(records: list[dict]) -> dict:
    return [r for r in records if r.get("event") == "eval"][-1]


def assert_learns(records: list[dict]) -> None:
    """Every logged loss finite, and the last five steps' mean below the first five's."""
    losses = train_losses(records)
    assert len(losses) >= 10 and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-5:]) < sum(losses[:5]), losses


def make_objective(data: Path, objective: str, preset: str, **overrides):
    """The objective a tiny CPU run would build (no training), e.g. to inspect its batches."""
    from lmforge.config import resolve
    from lmforge.train.config import TrainConfig
    from lmforge.train.objectives import get_objective
    from lmforge.train.runtime import setup_runtime

    cfg = resolve(TrainConfig, data=str(data), preset=preset, objective=objective,
                  **{"seq_len": 32, "batch_size": 8, "steps": 5, "eval_batches": 2, "tensorboard": False,
                     **overrides})
    return get_objective(objective)(cfg, setup_runtime("cpu"))


def toy_pairs(n: int = 200) -> list[tuple[str, str]]:
    """(words, the same words reversed): a task a tiny model starts to learn in a few steps."""
    from itertools import islice

    from lmforge.data.builtin import python_docs

    words = " ".join(islice(python_docs(), 50)).split()
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(n):
        i, k = int(rng.integers(len(words) - 8)), int(rng.integers(3, 7))
        pairs.append((" ".join(words[i:i + k]), " ".join(reversed(words[i:i + k]))))
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]], header: tuple[str, ...] = ("source", "target")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path
