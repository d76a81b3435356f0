"""Tests of `lmforge.explain`."""

from __future__ import annotations

import torch

from lmforge.models import ModelConfig, build_model


def tiny_model(family: str, vocab_size: int, init_std: float, **kw):
    """A 2-layer, 32-wide random model in eval mode, and its config. A larger init than training's makes
    attention peaked and outputs sizeable, so the explanations' checks are real ones."""
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=vocab_size, max_seq_len=32, n_layer=2, n_head=2, d_model=32,
                      init_std=init_std, **kw)
    return build_model(cfg).eval(), cfg
