"""Attention maps, captured from outside the model.

The models attend through `F.scaled_dot_product_attention`, which never materialises the attention weights. A
forward hook on every `Attention` module takes the module's own inputs and recomputes
softmax(q k^T * scale + mask) with the module's own weights and the same position logic (fused or cross
projections, RoPE, grouped-query heads, T5's relative bias, causal or bidirectional masks). The model code stays
untouched, and the tests check that these weights, applied to the values, give back the module's actual output:
the maps are the ones the model used, not an approximation. (With dropout in training mode they are the weights
before dropout.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.models.blocks import Attention, CrossKVCache, KVCache, apply_rope
from lmforge.models.config import ModelConfig


@dataclass
class AttentionMap:
    """The attention weights of one module for one forward call."""

    name: str  # module path, e.g. "blocks.0.attn" or "decoder.blocks.1.cross_attn"
    stack: str  # "decoder", "encoder" or "decoder-cross" (cross-attention of an encoder-decoder)
    layer: int
    probs: Tensor  # (B, H, T, S) float32: row t is query t's distribution over the S keys
    values: Tensor | None = None  # (B, H, S, D) the values, heads repeated for GQA (keep_values=True only)


def attention_weights(attn: Attention, x: Tensor, *, rope: tuple[Tensor, Tensor] | None = None,
                      mask: Tensor | None = None, input_pos: Tensor | None = None,
                      context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Recompute the attention of `attn` on the inputs of its forward: (probs (B, H, T, S), values (B, H, S, D)).

    Mirrors `Attention.forward` step by step. Called after that forward (from a hook), so a KV cache already
    holds this call's keys and values and is read rather than recomputed.
    """
    B, T, _ = x.shape
    H, H_kv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    if attn.cross:
        q = attn.wq(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if isinstance(attn.cache, CrossKVCache) and attn.cache.kv is not None:
            k, v = attn.cache.kv
        else:
            k, v = attn.wkv(context).split([H_kv * D, H_kv * D], dim=-1)
            k = k.view(B, -1, H_kv, D).transpose(1, 2)  # (B, H_kv, S, D)
            v = v.view(B, -1, H_kv, D).transpose(1, 2)
    else:
        q, k, v = attn.wqkv(x).split([H * D, H_kv * D, H_kv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, H_kv, D).transpose(1, 2)
        v = v.view(B, T, H_kv, D).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if isinstance(attn.cache, KVCache) and input_pos is not None:
            k, v = attn.cache.k, attn.cache.v
    if H_kv != H:
        k, v = k.repeat_interleave(H // H_kv, dim=1), v.repeat_interleave(H // H_kv, dim=1)
    scale = attn.scale if attn.scale is not None else 1.0 / math.sqrt(D)  # SDPA's default
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, T, S)
    S = scores.shape[-1]
    if mask is None:
        if attn.causal:  # SDPA's is_causal: a top-left aligned lower triangle
            keep = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:  # additive float mask: T5's relative-position bias, with -inf where masked
        scores = scores + mask.float()
    return scores.softmax(dim=-1), v


def _place(name: str) -> tuple[str, int]:
    """(stack, layer) of an attention module from its path in the model."""
    parts = name.split(".")
    i = parts.index("blocks") if "blocks" in parts else -1
    stack = ".".join(parts[:i]) if i > 0 else "decoder"
    layer = int(parts[i + 1]) if 0 <= i < len(parts) - 1 and parts[i + 1].isdigit() else 0
    if parts[-1] == "cross_attn":
        stack += "-cross"
    return stack, layer


@contextlib.contextmanager
def capture_attention(model: nn.Module, *, keep_values: bool = False,
                      where: Callable[[str, int], bool] | None = None) -> Iterator[list[AttentionMap]]:
    """Record the attention weights of every `Attention` module of `model` inside the `with` block.

    The yielded list fills with one `AttentionMap` per module call, in call order (so several forward calls,
    e.g. cached decoding steps, give several maps per module). Maps are float32 and on the CPU. `where(stack,
    layer)` limits the capture to some modules: a map is heads x T x S floats, which adds up on long inputs.
    """
    maps: list[AttentionMap] = []
    handles = []

    def hook_for(name: str):
        stack, layer = _place(name)

        def hook(module: Attention, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
            x = args[0] if args else kwargs["x"]
            with torch.no_grad():
                probs, values = attention_weights(
                    module, x.detach(), rope=kwargs.get("rope"), mask=kwargs.get("mask"),
                    input_pos=kwargs.get("input_pos"), context=kwargs.get("context"))
            maps.append(AttentionMap(name, stack, layer, probs.cpu(),
                                     values.float().cpu() if keep_values else None))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, Attention) and (where is None or where(*_place(name))):
            handles.append(module.register_forward_hook(hook_for(name), with_kwargs=True))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


def run_for_attention(model: nn.Module, ids: Tensor, *, token_types: Tensor | None = None,
                      decoder_start: int = 0, where: Callable[[str, int], bool] | None = None
                      ) -> list[AttentionMap]:
    """The attention maps of one forward pass over ids (1, T), family by family (`where`: as `capture_attention`).

    Decoders and encoders read the text; an encoder-decoder's encoder reads it and its decoder takes one step
    from `decoder_start`, so its cross-attention shows which input tokens that first step looks at.
    """
    with torch.no_grad(), capture_attention(model, where=where) as maps:
        if model.cfg.family == "t5":
            start = torch.full((ids.shape[0], 1), decoder_start, dtype=torch.long, device=ids.device)
            model.decode(start, model.encode(ids))
        elif model.cfg.family == "bert":
            model(ids, token_types=token_types)
        else:
            model(ids)
    return maps


def stack_layers(cfg: ModelConfig) -> dict[str, int]:
    """The attention stacks of a model of `cfg` (as `AttentionMap.stack` names them) and their layer counts."""
    if cfg.family == "t5":
        return {"encoder": cfg.n_layer, "decoder": cfg.n_decoder_layer, "decoder-cross": cfg.n_decoder_layer}
    if cfg.family == "lstm":
        return {}  # recurrent: no attention
    return {"encoder" if cfg.family == "bert" else "decoder": cfg.n_layer}


# --- plotting ------------------------------------------------------------------------------------------------

LABEL_CHARS = 12  # longer token labels are cut with an ellipsis
MAX_TICKS = 40  # beyond this many tokens an axis labels every k-th token only


def token_label(text: str, has_glyph: Callable[[str], bool] = lambda c: True) -> str:
    """A token's text as an axis label: whitespace made visible, characters the font lacks as U+XXXX, long
    labels shortened."""
    s = text.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "")
    if s.strip() == "":
        s = "\u2423" * max(len(s), 1)  # a token of spaces shows as visible space marks
    s = "".join(c if has_glyph(c) else f"U+{ord(c):04X}" for c in s)
    return s if len(s) <= LABEL_CHARS else s[: LABEL_CHARS - 1] + "\u2026"


def _font_has_glyph() -> Callable[[str], bool]:
    """Whether matplotlib's default font draws a character (else it draws an empty box and warns)."""
    from matplotlib import font_manager, ft2font

    font = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))
    charmap = font.get_charmap()
    return lambda c: ord(c) in charmap


def select(n: int, wanted: Sequence[int] | None, what: str) -> list[int]:
    """Indices from `wanted` (negative counts from the end) checked against range(n); all of them when empty."""
    if not wanted:
        return list(range(n))
    out = []
    for i in wanted:
        if not -n <= i < n:
            raise UserError(f"{what} {i} does not exist: the model has {n} {what}s (0 to {n - 1})",
                            fix=f"pick {what}s between 0 and {n - 1}, or -1 for the last")
        j = i % n
        if j not in out:
            out.append(j)
    return out


def plot_attention(maps: Sequence[AttentionMap], query_tokens: Sequence[str], key_tokens: Sequence[str],
                   path: str | Path, *, heads: Sequence[int] | None = None, title: str | None = None,
                   batch_index: int = 0) -> Path:
    """One PNG: a grid of heatmaps, a row per map (layer) and a column per head, token labels on the axes.

    `maps` are one stack's maps, in layer order; `heads` picks columns (default: every head). Labels go on the
    left column (queries) and the bottom row (keys), thinned to at most MAX_TICKS per axis for long inputs.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import PowerNorm
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("matplotlib is not installed, so attention maps cannot be drawn",
                        fix="pip install 'lmforge[train]' (or leave attention out of --what)") from None
    from lmforge.atomic import atomic_file

    if not maps:
        raise ValueError("no attention maps to plot")
    head_ids = select(maps[0].probs.shape[1], heads, "head")
    T, S = maps[0].probs.shape[-2:]
    if len(query_tokens) != T or len(key_tokens) != S:
        raise ValueError(f"{len(query_tokens)} x {len(key_tokens)} labels for {T} x {S} attention maps")
    rows, cols = len(maps), len(head_ids)
    # Panels grow with the number of tokens so labels stay legible, within bounds that keep the file sane.
    few = rows * cols <= 4
    width = min(max(3.5 if few else 2.4, 0.16 * S + 1.0), 7.0 if few else 4.5)
    height = max(1.2, width * T / S)  # square cells; a one-query map (a decoder's first step) stays a strip
    font = 7 if max(T, S) <= 24 else 5
    has_glyph = _font_has_glyph()
    # A square-root colour scale: over long inputs most weights are small, and a linear scale shows them all as
    # the same dark colour. The colour bar is labelled in real weights.
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    fig = Figure(figsize=(cols * width + 1.2, rows * height + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)

    def ticks(n: int) -> list[int]:
        return list(range(0, n, math.ceil(n / MAX_TICKS)))

    image = None
    for r, m in enumerate(maps):
        for c, h in enumerate(head_ids):
            ax = axes[r][c]
            image = ax.imshow(m.probs[batch_index, h].numpy(), cmap="viridis", norm=norm, interpolation="nearest",
                              aspect="auto")
            ax.set_title(f"layer {m.layer} head {h}", fontsize=8)
            # Tick labels on the outer panels only: ticks cost most of the drawing time of a large grid.
            xt = ticks(S) if r == rows - 1 else []
            yt = ticks(T) if c == 0 else []
            ax.set_xticks(xt, [token_label(key_tokens[i], has_glyph) for i in xt], rotation=90, fontsize=font)
            ax.set_yticks(yt, [token_label(query_tokens[i], has_glyph) for i in yt], fontsize=font)
            ax.tick_params(length=1.5, pad=1)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png")
    return path
