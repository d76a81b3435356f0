"""Shared Transformer blocks: every family (decoder, encoder, encoder-decoder) is built from these.

One attention (through `F.scaled_dot_product_attention`, so flash / memory-efficient kernels are used where they
apply), one MLP, one norm factory, one position scheme per kind. The KV cache is a preallocated buffer per layer
indexed by position (gpt-fast style), so the decode step has static shapes and can later be compiled or batched
without touching the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lmforge.models.config import ModelConfig


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def make_dropout(p: float) -> nn.Module:
    """Dropout, or nothing when p is 0 (the default): an `nn.Dropout` still costs a call that checks its
    arguments in every forward (~5 us against ~1 us for an Identity on the CPU), and a decode step makes a dozen."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ReLUSquared(nn.Module):
    """relu(x)**2 (So et al., "Primer", 2021; modded-nanogpt's MLP), Hugging Face's `relu2`."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


ACTIVATIONS = {
    "relu2": ReLUSquared(),
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "silu": nn.SiLU(),
    "relu": nn.ReLU(),
}


class MLP(nn.Module):
    """Standard (up -> act -> down) or gated (act(gate) * up -> down, i.e. SwiGLU / GeGLU)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "gated"
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias) if self.gated else None
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]
        self.drop = make_dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.gate(x)) * self.up(x) if self.gated else self.act(self.up(x))
        return self.drop(self.down(h))


# --- positions -----------------------------------------------------------------------------------------------

def sinusoidal_table(n_pos: int, dim: int) -> Tensor:
    """The fixed sin/cos table of "Attention Is All You Need": (n_pos, dim)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


def rope_table(n_pos: int, head_dim: int, theta: float) -> Tensor:
    """cos and sin of the rotary angles, stacked: (2, n_pos, head_dim // 2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)
    return torch.stack([angles.cos(), angles.sin()])


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (i, i + D/2) of x (B, H, T, D) by the angles cos/sin (B or 1, T, D/2).

    The "rotate half" pairing, as in Hugging Face Llama checkpoints, so their weights load without permutation.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x)


class Positions(nn.Module):
    """Token embedding plus position information, shared by every family.

    Learned or sinusoidal positions are added to the embeddings; RoPE is returned as (cos, sin) for attention to
    apply to queries and keys.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.pos
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg) if cfg.embed_norm else None
        if cfg.pos == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(cfg.max_seq_len, cfg.d_model), persistent=False)
        if cfg.pos == "rope":
            self.register_buffer("rope", rope_table(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta),
                                 persistent=False)
        self.drop = make_dropout(cfg.dropout)

    def forward(self, idx: Tensor, positions: Tensor, token_types: Tensor | None = None,
                ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """idx (B, T), positions (B or 1, T) -> embeddings (B, T, C) and RoPE angles or None."""
        x = self.tok(idx)
        if self.types is not None:
            x = x + self.types(token_types if token_types is not None else torch.zeros_like(idx))
        rope = None
        if self.kind == "learned":
            x = x + self.pos(positions)
        elif self.kind == "sinusoidal":
            x = x + self.table[positions]
        elif self.kind == "rope":
            rope = (self.rope[0][positions], self.rope[1][positions])
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x), rope


class RelativePositionBias(nn.Module):
    """T5's learned, bucketed relative-position attention bias, shared by all layers of a stack: (1, H, T, S)."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)

    def bucket(self, rel: Tensor) -> Tensor:
        """Half the buckets for exact small distances, the rest log-spaced up to max_distance."""
        n = self.n_buckets
        out = torch.zeros_like(rel)
        if self.bidirectional:
            n //= 2
            out += (rel > 0).long() * n
            rel = rel.abs()
        else:
            rel = -rel.clamp(max=0)
        exact = n // 2
        large = exact + (torch.log(rel.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
                         * (n - exact)).long()
        large = large.clamp(max=n - 1)
        return out + torch.where(rel < exact, rel, large)

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        rel = k_pos[None, :] - q_pos[:, None]  # (T, S): key position minus query position
        return self.bias(self.bucket(rel)).permute(2, 0, 1)[None]  # (1, H, T, S)


# --- attention -----------------------------------------------------------------------------------------------

class KVCache(nn.Module):
    """Preallocated keys and values for one attention layer: (B, H_kv, S, D), written at the given slots."""

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_kv_head, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) at slots input_pos (T,) and return the whole cache."""
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v

    def write(self, window: CacheWindow, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) of rows `window.rows` at their own positions input_pos (B, T); return views of
        those rows' first `window.span` slots."""
        k_rows, v_rows = self.k[window.rows], self.v[window.rows]  # views: the writes land in the cache
        B, H, T, D = k.shape
        index = input_pos[:, None, :, None].expand(B, H, T, D)
        k_rows.scatter_(2, index, k if k.dtype == k_rows.dtype else k.to(k_rows.dtype))
        v_rows.scatter_(2, index, v if v.dtype == v_rows.dtype else v.to(v_rows.dtype))
        return k_rows[:, :, :window.span], v_rows[:, :, :window.span]

    def reorder(self, index: Tensor) -> None:
        """Row i becomes row index[i] (beam search following each beam's parent), in place: the buffers keep
        their storage and shapes."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))


@dataclass(frozen=True)
class CacheWindow:
    """Which rows of a KV cache one forward reads and writes, and how many slots of each it attends over.

    The inference engine keeps one sequence per cache row (a "slot") and lets each row have its own length: the
    tokens it feeds carry per-row positions (`input_pos` (B, T)), which are also their cache slots, since every
    sequence starts at slot 0. So sequences of different lengths decode together without left padding, and a
    finished row is reused at once by writing a new sequence from slot 0 (what is left beyond the new sequence's
    positions is masked out by causality). Slots, not pages: a row is one contiguous buffer, so attention reads a
    plain view of it and the decode step keeps static shapes; paging would only pay off with far more sequences
    than rows, and costs a gather per step on the CPU.

    `rows` selects the cache rows (a slice, so the cache is read through views, never copied); `span` is how many
    slots of each row attention looks at (at least the longest fed position + 1; the whole row for a
    static-shape, compiled step).
    """

    rows: slice
    span: int


def window_mask(input_pos: Tensor, span: int, dtype: torch.dtype | None = None) -> Tensor:
    """Attention mask (B, 1, T, span) for queries at per-row positions input_pos (B, T): each sees the slots up to
    its own (a row's slots hold its sequence from position 0, so position and slot are one).

    Boolean, or with `dtype` additive (0 where a query may look, -inf elsewhere): SDPA turns a boolean mask into
    that in every layer (three more ops each), so the decoder builds the additive one once per forward."""
    slots = torch.arange(span, device=input_pos.device)
    sees = (slots <= input_pos[:, :, None])[:, None]
    if dtype is None:
        return sees
    return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, float("-inf"))


class CrossKVCache(nn.Module):
    """Keys and values of the encoder output for cross-attention: computed on the first decode step, then reused."""

    def __init__(self) -> None:
        super().__init__()
        self.kv: tuple[Tensor, Tensor] | None = None

    def reorder(self, index: Tensor) -> None:
        """Row i becomes row index[i] (beam search following each beam's parent)."""
        if self.kv is not None:
            self.kv = (self.kv[0].index_select(0, index), self.kv[1].index_select(0, index))


def cache_mask(input_pos: Tensor, size: int, key_mask: Tensor | None) -> Tensor:
    """Attention mask (B or 1, 1, T, S) for queries at cache slots input_pos (T,) over `size` slots.

    A query sees earlier slots holding real tokens (key_mask (B, S)), and always its own slot, so that a row of
    left padding never attends to nothing (which would give NaN). Built from positions, never from an
    S x S buffer: that would cost gigabytes for long-context models.
    """
    slots = torch.arange(size, device=input_pos.device)[None, :]
    mask = (slots <= input_pos[:, None])[None, None]  # (1, 1, T, S) causal
    if key_mask is not None:
        own = slots == input_pos[:, None]  # (T, S)
        mask = (mask & key_mask[:, None, None, :size]) | own[None, None]
    return mask


class Attention(nn.Module):
    """Multi-head attention with optional grouped-query heads; self-attention or cross-attention.

    Self-attention projects q, k, v with one fused matmul; cross-attention takes k, v from `context`. Setting
    `on_weights` switches this module to an eager path that computes the attention weights explicitly and
    passes them out (how `lmforge.explain` reads attention maps); unset, attention goes through SDPA.
    """

    def __init__(self, cfg: ModelConfig, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.causal, self.cross = causal, cross
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        if cross:
            self.wq = nn.Linear(cfg.d_model, q_dim, bias=cfg.bias)
            self.wkv = nn.Linear(cfg.d_model, 2 * kv_dim, bias=cfg.bias)
        else:
            self.wqkv = nn.Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=cfg.bias)
        self.wo = nn.Linear(q_dim, cfg.d_model, bias=cfg.bias)
        # QK-norm (self-attention): one RMSNorm over each head's channels, shared by the heads (OLMo 2 / Qwen3).
        qk_norm = cfg.qk_norm and not cross
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if qk_norm else None
        self.scale = cfg.attn_scale
        self.dropout = cfg.dropout
        self.resid_drop = make_dropout(cfg.dropout)
        self.cache: KVCache | CrossKVCache | None = None
        # None: attention through SDPA. Set: the eager path (`attend_eagerly`), which hands this callable the
        # weights (B, H, T, S) float32 and the values (B, H, S, D) it applies them to, heads repeated for GQA.
        self.on_weights: Callable[[Tensor, Tensor], None] | None = None

    def forward(self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                input_pos: Tensor | None = None, context: Tensor | None = None,
                window: CacheWindow | None = None) -> Tensor:
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if self.cross:
            q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            if isinstance(self.cache, CrossKVCache) and self.cache.kv is not None:
                k, v = self.cache.kv
            else:
                k, v = self.wkv(context).split([kv_dim, kv_dim], dim=-1)
                k = k.view(B, -1, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, S, D)
                v = v.view(B, -1, self.n_kv_head, self.head_dim).transpose(1, 2)
                if isinstance(self.cache, CrossKVCache):
                    self.cache.kv = (k, v)
        else:
            q, k, v = self.wqkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)
            q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
            v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if isinstance(self.cache, KVCache) and window is not None:
                k, v = self.cache.write(window, input_pos, k, v)
            elif isinstance(self.cache, KVCache) and input_pos is not None:
                k, v = self.cache.update(input_pos, k, v)
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.on_weights is None:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                is_causal=self.causal and mask is None, scale=self.scale,
            )
        else:
            y = self.attend_eagerly(q, k, v, mask)
        y = y.transpose(1, 2).reshape(B, T, q_dim)  # (B, T, C)
        return self.resid_drop(self.wo(y))

    def attend_eagerly(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """What `F.scaled_dot_product_attention` computes, written out so the weights exist: q (B, H, T, D) and
        k, v (B, H, S, D) -> (B, H, T, D).

        softmax(q k^T * scale + mask) in float32, handed to `on_weights` with v, then applied to v: the weights
        are the ones that make this output. With dropout in training mode they are the weights before dropout.
        """
        T, S = q.shape[-2], k.shape[-2]
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)  # SDPA's default
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, T, S)
        if mask is None and self.causal:  # SDPA's is_causal: a top-left aligned lower triangle
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None:  # additive float mask: T5's relative-position bias, with -inf where masked
            scores = scores + mask.float()
        probs = scores.softmax(dim=-1)
        self.on_weights(probs, v)
        if self.training and self.dropout > 0.0:
            probs = F.dropout(probs, self.dropout)
        return (probs @ v.float()).type_as(q)


class Block(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention, MLP; pre- or post-norm residuals."""

    def __init__(self, cfg: ModelConfig, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.norm1, self.attn = make_norm(cfg), Attention(cfg, causal=causal)
        self.norm_cross = make_norm(cfg) if cross else None
        self.cross_attn = Attention(cfg, causal=False, cross=True) if cross else None
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)

    def _residual(self, x: Tensor, norm: nn.Module, fn, **kw) -> Tensor:
        return x + fn(norm(x), **kw) if self.pre else norm(x + fn(x, **kw))

    def forward(self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                input_pos: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, window: CacheWindow | None = None) -> Tensor:
        x = self._residual(x, self.norm1, self.attn, rope=rope, mask=mask, input_pos=input_pos, window=window)
        if self.cross_attn is not None:
            x = self._residual(x, self.norm_cross, self.cross_attn, mask=context_mask, context=context)
        return self._residual(x, self.norm2, self.mlp)


class Stack(nn.Module):
    """Blocks plus final norm: the body of an encoder, or of the decoder of an encoder-decoder.

    With relative positions the stack owns the bias table and adds it, with the mask, to every layer's
    self-attention (T5). Masks are boolean (True = may attend) or, with a relative bias, additive floats.
    """

    def __init__(self, cfg: ModelConfig, n_layer: int, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList(Block(cfg, causal=causal, cross=cross) for _ in range(n_layer))
        self.rel_bias = RelativePositionBias(cfg, bidirectional=not causal) if cfg.pos == "relative" else None
        self.norm_f = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.drop = make_dropout(cfg.dropout)

    def forward(self, x: Tensor, *, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None,
                input_pos: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C); mask (B or 1, 1, T, S) bool or None (= causal / full); input_pos (T,) cache slots."""
        if self.rel_bias is not None:
            T = x.shape[1]
            q_pos = input_pos if input_pos is not None else torch.arange(T, device=x.device)
            S = mask.shape[-1] if mask is not None else T
            bias = self.rel_bias(q_pos, torch.arange(S, device=x.device))
            if mask is None and self.causal:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()[None, None]
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
            mask = mask.to(x.dtype)
        for block in self.blocks:
            x = block(x, rope=rope, mask=mask, input_pos=input_pos, context=context, context_mask=context_mask)
        return self.drop(self.norm_f(x))


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """GPT-2 initialisation: N(0, std) weights, zero biases, residual projections scaled by 1/sqrt(2 L)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = cfg.init_std
            if name.endswith(("attn.wo", "mlp.down")):
                std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
