"""Model families built from shared blocks (`blocks.py`), configured by `ModelConfig`."""

from __future__ import annotations

from torch import nn

from lmforge.models.config import PRESETS, ModelConfig, get_preset
from lmforge.models.decoder import DecoderLM


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of `cfg.family`, randomly initialised, on the CPU in fp32."""
    if cfg.family in ("gpt", "llama"):
        return DecoderLM(cfg)
    raise ValueError(f"unknown family {cfg.family!r}")


__all__ = ["PRESETS", "DecoderLM", "ModelConfig", "build_model", "get_preset"]
