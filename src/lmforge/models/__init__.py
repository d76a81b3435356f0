"""Model families built from shared blocks (`blocks.py`), configured by `ModelConfig`."""

from __future__ import annotations

from torch import nn

from lmforge.models.config import PRESETS, ModelConfig, get_preset
from lmforge.models.decoder import DecoderLM
from lmforge.models.encoder import EncoderModel
from lmforge.models.encoder_decoder import EncoderDecoderLM
from lmforge.models.lstm import LSTMLM, LSTMClassifier
from lmforge.models.registry import Kind, can, capabilities, family, kind_of


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg` describes (its family's class, carrying the head `cfg.head` names), randomly initialised,
    on the current default device (the CPU unless the caller sets one, e.g. meta) in fp32."""
    return family(cfg).model_class(cfg.head)(cfg)


__all__ = ["LSTMLM", "PRESETS", "DecoderLM", "EncoderDecoderLM", "EncoderModel", "Kind", "LSTMClassifier",
           "ModelConfig", "build_model", "can", "capabilities", "family", "get_preset", "kind_of"]
