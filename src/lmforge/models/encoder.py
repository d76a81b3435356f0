"""Encoder-only model (BERT-style): bidirectional self-attention and segment embeddings, with the heads its config
names (`models/heads.py`):

- `lm`: the pretraining heads, masked LM and (through the pooler) next-sentence prediction; `forward` returns the
  hidden states (B, T, C) and objectives apply the heads they need (`mlm_logits`, `nsp_logits`).
- `classify`: [CLS] -> pooler (dense + tanh) -> dropout -> `classifier`; `forward` returns class logits (B, K), as
  Hugging Face's `BertForSequenceClassification`.
- `span`: `qa_outputs` on every token; `forward` returns start/end logits (B, T, 2), as `BertForQuestionAnswering`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.models.blocks import Positions, Stack, init_weights
from lmforge.models.config import ModelConfig
from lmforge.models.heads import MLMHead, n_classes, pool, pooling


class EncoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Positions(cfg)
        self.encoder = Stack(cfg, cfg.n_layer, causal=False)
        if cfg.head in ("lm", "classify"):
            self.pooler = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        if cfg.head == "lm":
            self.mlm_head = MLMHead(cfg)
            self.nsp_head = nn.Linear(cfg.d_model, 2, bias=cfg.bias)
        elif cfg.head == "classify":
            self.drop = nn.Dropout(cfg.dropout)
            self.classifier = nn.Linear(cfg.d_model, n_classes(cfg), bias=cfg.bias)
            self.pooling = pooling(cfg)  # resolved once, not per forward
        else:  # span
            self.qa_outputs = nn.Linear(cfg.d_model, 2, bias=cfg.bias)
        init_weights(self, cfg)
        if cfg.head == "lm":
            if cfg.tie_embeddings:
                self.mlm_head.out.weight = self.embed.tok.weight
            nn.init.zeros_(self.mlm_head.out.bias)

    def forward(self, idx: Tensor, *, attention_mask: Tensor | None = None,
                token_types: Tensor | None = None) -> Tensor:
        """For tokens idx (B, T): hidden states (B, T, C) (head lm), class logits (B, K) (classify) or start/end
        logits (B, T, 2) (span); attention_mask (B, T) is True/1 on real tokens."""
        h = self.hidden(idx, attention_mask=attention_mask, token_types=token_types)
        if self.cfg.head == "classify":
            vector = pool(h, attention_mask, self.pooling)  # [CLS] by default, as BERT
            return self.classifier(self.drop(torch.tanh(self.pooler(vector))))
        if self.cfg.head == "span":
            return self.qa_outputs(h)
        return h

    def hidden(self, idx: Tensor, *, attention_mask: Tensor | None = None,
               token_types: Tensor | None = None) -> Tensor:
        """The backbone: hidden states (B, T, C), before any head."""
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
        return torch.tanh(self.pooler(pool(hidden, None, "first")))

    def nsp_logits(self, hidden: Tensor) -> Tensor:
        return self.nsp_head(self.pooled(hidden))

    def mean_pooled(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean of the hidden states over real tokens: the sentence embedding of contrastive training."""
        return pool(hidden, attention_mask, "mean")
