"""Decoder-only Transformer (GPT-2-style and Llama-style, by config): a causal backbone and its head.

With head `lm` (the default) it is a language model: `forward` gives next-token logits. With head `classify` it is
a sequence classifier (as Hugging Face's `GPT2ForSequenceClassification` / `LlamaForSequenceClassification`):
`forward` gives one row of class logits per sequence, read at its last real token.
Knows nothing of training, checkpoints, devices or parallelism: those wrap it from outside.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.models.blocks import (
    Block,
    CacheWindow,
    KVCache,
    Positions,
    cache_mask,
    init_weights,
    make_norm,
    window_mask,
)
from lmforge.models.config import ModelConfig
from lmforge.models.heads import n_classes, pool, pooling
from lmforge.models.lm_loss import CHUNKED_FROM_VOCAB, chunked_lm_loss, next_token_nll


def document_mask(segments: Tensor) -> Tensor:
    """Causal attention within each packed document: (B, 1, T, T) bool from segment ids (B, T)."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return ((segments[:, :, None] == segments[:, None, :]) & causal[None])[:, None]


class DecoderLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Positions(cfg)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        if cfg.head == "classify":
            self.score = nn.Linear(cfg.d_model, n_classes(cfg), bias=False)
            self.pooling = pooling(cfg)  # resolved once, not per forward
        else:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.tie_embeddings and cfg.head == "lm":
            self.lm_head.weight = self.embed.tok.weight

    # --- KV cache ---------------------------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Preallocate a KV cache for `batch_size` sequences of up to `max_seq_len` tokens."""
        p = self.embed.tok.weight
        s = max_seq_len or self.cfg.max_seq_len
        for block in self.blocks:
            block.attn.cache = KVCache(batch_size, s, self.cfg.n_kv_head, self.cfg.head_dim,
                                       dtype or p.dtype, p.device)

    def clear_cache(self) -> None:
        for block in self.blocks:
            block.attn.cache = None

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(self, idx: Tensor, *, input_pos: Tensor | None = None, positions: Tensor | None = None,
                key_mask: Tensor | None = None, attention_mask: Tensor | None = None,
                segments: Tensor | None = None, window: CacheWindow | None = None,
                targets: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, T, V) for tokens idx (B, T); with a classify head, class logits (B, K) at each sequence's
        last real token (`attention_mask` (B, T): 1 on real tokens, 0 on right padding).

        With `targets` (B, T) (next-token ids, -100 where none), the LM head's loss instead of its logits: (summed
        cross-entropy, number of targets); from a vocabulary of `CHUNKED_FROM_VOCAB` on, computed a chunk of rows
        at a time without the (B, T, V) logits (`models.lm_loss`). The same values as
        `next_token_nll(forward(idx), targets)` either way. Through `forward`, so a
        DDP / FSDP2 / compiled wrapper sees it.

        Training: call with idx only. Cached decoding (after `setup_cache`): `input_pos` (T,) are the cache slots
        the tokens are written to; `positions` (B, T) the positions used for position information (they differ
        from the slots for left-padded rows); `key_mask` (B, S) marks cache slots holding real tokens.
        Packed sequences (training, no cache): `segments` (B, T) numbers the documents packed into each row, and a
        token attends only to earlier tokens of its own document; pass each document's own `positions` with it.
        The inference engine's per-row cache: `window` (a `CacheWindow`) picks the cache rows, and `input_pos`
        (B, T) holds each row's own positions, which are its slots.
        """
        h = self.hidden(idx, input_pos=input_pos, positions=positions, key_mask=key_mask, segments=segments,
                        window=window)
        if self.cfg.head == "classify":
            return self.score(pool(h, attention_mask, self.pooling))
        if targets is None:
            return self.lm_logits(h)
        # Chunked where it pays (a large vocabulary) and where the weight is the whole map (no adapter such as LoRA).
        if type(self.lm_head) is nn.Linear and self.cfg.vocab_size >= CHUNKED_FROM_VOCAB:
            return chunked_lm_loss(h, self.lm_head.weight, targets, self.cfg.logit_softcap)
        return next_token_nll(self.lm_logits(h), targets)

    def lm_logits(self, h: Tensor) -> Tensor:
        """Next-token logits (..., V) from final hidden states (..., C), soft-capped when the config says so."""
        logits = self.lm_head(h)
        if self.cfg.logit_softcap is not None:  # smooth cap at +-c (Gemma 2): tanh keeps gradients alive near it
            cap = self.cfg.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def hidden(self, idx: Tensor, *, input_pos: Tensor | None = None, positions: Tensor | None = None,
               key_mask: Tensor | None = None, segments: Tensor | None = None,
               window: CacheWindow | None = None) -> Tensor:
        """The backbone: final hidden states (B, T, C), normalised, before any head (arguments as `forward`)."""
        B, T = idx.shape
        if window is not None:
            pos, mask = input_pos, None  # additive, in the activations' dtype: built below, once for all layers
        elif input_pos is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
            pos = positions if positions is not None else torch.arange(T, device=idx.device)[None]
            mask = None if segments is None else document_mask(segments)
        else:
            pos = positions if positions is not None else input_pos[None]
            mask = cache_mask(input_pos, self.blocks[0].attn.cache.k.shape[2], key_mask)
        x, rope = self.embed(idx, pos)
        if window is not None:
            mask = window_mask(input_pos, window.span, x.dtype)
        for block in self.blocks:
            x = block(x, rope=rope, mask=mask, input_pos=input_pos, window=window)
        return self.norm_f(x)
