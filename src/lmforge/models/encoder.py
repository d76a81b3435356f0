"""Encoder-only model (BERT-style): bidirectional self-attention, segment embeddings, pooler and the
pretraining heads (masked LM, next-sentence prediction). Objectives pick the heads they need."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.models.blocks import ACTIVATIONS, Positions, Stack, init_weights, make_norm
from lmforge.models.config import ModelConfig


class MLMHead(nn.Module):
    """Transform (dense, activation, norm) then the vocabulary projection, tied to the embedding, with a bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = make_norm(cfg)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.norm(self.act(self.dense(h))))


class EncoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Positions(cfg)
        self.encoder = Stack(cfg, cfg.n_layer, causal=False)
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.mlm_head = MLMHead(cfg)
        self.nsp_head = nn.Linear(cfg.d_model, 2, bias=cfg.bias)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.mlm_head.out.weight = self.embed.tok.weight
        nn.init.zeros_(self.mlm_head.out.bias)

    def forward(self, idx: Tensor, *, attention_mask: Tensor | None = None,
                token_types: Tensor | None = None) -> Tensor:
        """Hidden states (B, T, C) for tokens idx (B, T); attention_mask (B, T) is True/1 on real tokens."""
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        x, rope = self.embed(idx, torch.arange(T, device=idx.device)[None], token_types)
        return self.encoder(x, rope=rope, mask=mask)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        return self.mlm_head(hidden)

    def pooled(self, hidden: Tensor) -> Tensor:
        """BERT's pooled output: dense + tanh on the first ([CLS]) position."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def nsp_logits(self, hidden: Tensor) -> Tensor:
        return self.nsp_head(self.pooled(hidden))

    def mean_pooled(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean of the hidden states over real tokens: the sentence embedding of contrastive training."""
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
