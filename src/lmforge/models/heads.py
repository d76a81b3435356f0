"""Task heads: small modules that read a backbone's hidden states (B, T, C).

A backbone (the embedding and the blocks of a decoder, an encoder or an LSTM) knows no task; a head turns its
states into what a task scores. Which heads a model carries is chosen by its config (`ModelConfig.head`): `lm`
gives the family's language-model head(s), `classify` a sequence-classification head over `ModelConfig.labels`,
`span` extractive-QA start/end logits. Heads live in the model so a checkpoint holds them with the backbone, and
their tensors are named as the Hugging Face class of the same task names them (`score`, `classifier`,
`qa_outputs`), so export is a table, not a translation.

| head                   | decoder (gpt, llama)       | encoder (bert)                           | lstm           |
|------------------------|----------------------------|------------------------------------------|----------------|
| lm                     | `lm_head` (next token)     | `mlm_head`, `pooler` + `nsp_head`        | `lm_head`      |
| classify: K per text   | last real token -> `score` | [CLS] -> `pooler` (tanh) -> `classifier` | mean -> `head` |
| span: 2 per token      | -                          | `qa_outputs` (start, end)                | -              |
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.models.blocks import ACTIVATIONS, make_norm
from lmforge.models.config import ModelConfig

POOLINGS = ("first", "mean", "last", "max")
# Top-level modules that are heads (everything else is backbone), as the table above names them.
HEAD_MODULES = frozenset({"lm_head", "mlm_head", "pooler", "nsp_head", "score", "classifier", "qa_outputs", "head"})


def pool(hidden: Tensor, attention_mask: Tensor | None, how: str) -> Tensor:
    """One vector per sequence (B, C) from hidden states (B, T, C); `attention_mask` (B, T) is 1 on real tokens.

    first: the first position ([CLS]); mean: the mean over real tokens; last: the last real token (with right
    padding, the state a causal model has after reading the whole text); max: the largest value of each channel over
    the real tokens (as a CNN text classifier's max-over-time pooling).
    """
    if how == "first":
        return hidden[:, 0]
    mask = None if attention_mask is None else attention_mask.to(hidden.dtype)
    if how == "mean":
        if mask is None:
            return hidden.mean(1)
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if how == "last":
        if mask is None:
            return hidden[:, -1]
        last = (mask.sum(1).long() - 1).clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "max":
        if mask is None:
            return hidden.amax(1)
        return hidden.masked_fill(mask[..., None] == 0, torch.finfo(hidden.dtype).min).amax(1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")


class MLMHead(nn.Module):
    """BERT's masked-LM head: transform (dense, activation, norm), then the vocabulary projection (tied to the
    embedding, with its own bias)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = make_norm(cfg)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.norm(self.act(self.dense(h))))


AUTO_POOLING = {"decoder": "last", "encoder": "first", "recurrent": "mean"}  # by kind


def pooling(cfg: ModelConfig) -> str:
    """How a classify head of `cfg` pools (`cfg.pooling`, or its kind's default)."""
    from lmforge.models.registry import kind_of

    return AUTO_POOLING[kind_of(cfg).value] if cfg.pooling == "auto" else cfg.pooling


def n_classes(cfg: ModelConfig) -> int:
    """Logits of a classify head: one per label."""
    return len(cfg.labels)


__all__ = ["AUTO_POOLING", "HEAD_MODULES", "POOLINGS", "MLMHead", "n_classes", "pool", "pooling"]
