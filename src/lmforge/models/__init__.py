"""Model families built from shared blocks (`blocks.py`), configured by `ModelConfig`."""

from __future__ import annotations

from torch import nn

from lmforge.models.config import PRESETS, ModelConfig, get_preset
from lmforge.models.decoder import DecoderLM
from lmforge.models.encoder import EncoderModel
from lmforge.models.encoder_decoder import EncoderDecoderLM
from lmforge.models.lstm import LSTMLM, LSTMClassifier


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of `cfg.family` (a sequence classifier when `cfg.labels` names classes), randomly initialised, on
    the CPU in fp32."""
    if cfg.family in ("gpt", "llama"):
        return DecoderLM(cfg)
    if cfg.family == "bert":
        return EncoderModel(cfg)
    if cfg.family == "t5":
        return EncoderDecoderLM(cfg)
    if cfg.family == "lstm":
        return LSTMClassifier(cfg) if cfg.labels else LSTMLM(cfg)
    raise ValueError(f"unknown family {cfg.family!r}")


__all__ = ["LSTMLM", "PRESETS", "DecoderLM", "EncoderDecoderLM", "EncoderModel", "LSTMClassifier", "ModelConfig",
           "build_model", "get_preset"]
