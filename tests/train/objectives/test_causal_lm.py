"""The causal-LM objective trains a decoder through its chunked head loss exactly as through logits + cross-entropy."""

from __future__ import annotations

import json

import pytest

import lmforge.models.decoder as decoder
from lmforge.config import resolve
from lmforge.train import TrainConfig, train


def losses(tiny_data, out, monkeypatch, chunked_from: int) -> list[float]:
    monkeypatch.setattr(decoder, "CHUNKED_FROM_VOCAB", chunked_from)
    cfg = resolve(TrainConfig, data=str(tiny_data), out=str(out), recipe="fast", steps=4, batch_size=4, seq_len=32,
                  log_every=1, eval_every=0, eval_batches=2, checkpoint_every=4, tensorboard=False, device="cpu")
    records = [json.loads(line) for line in train(cfg).metrics.read_text().splitlines()]
    return [r["loss"] for r in records if r.get("event") == "train"]


def test_fast_recipe_trains_the_same_through_the_chunked_head_loss(tiny_data, tmp_path, monkeypatch):
    """The fast recipe's head (untied, soft-capped) at the tests' vocabulary of 512, chunked against plain."""
    plain = losses(tiny_data, tmp_path / "plain", monkeypatch, chunked_from=10**9)
    chunked = losses(tiny_data, tmp_path / "chunked", monkeypatch, chunked_from=0)
    assert len(plain) == 4
    assert chunked == pytest.approx(plain, rel=1e-4)
    assert plain[-1] < plain[0]
