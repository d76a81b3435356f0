"""Attention maps, read from the model's own attention modules.

The models attend through `F.scaled_dot_product_attention`, which never materialises the attention weights. Each
`Attention` module (`lmforge.models.blocks`) also has an eager path, switched on by setting its `on_weights`
callable: it computes softmax(q k^T * scale + mask) explicitly, hands the weights out, and applies those same
weights to the values for its output. So a map is exactly what produced the module's output (fused or cross
projections, RoPE, grouped-query heads, T5's relative bias, causal or padding masks, KV-cached decoding steps),
with no second copy of the attention math here to drift from the model's. (With dropout in training mode they
are the weights before dropout.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.models.blocks import Attention
from lmforge.models.config import ModelConfig
from lmforge.models.registry import Kind, kind_of


@dataclass
class AttentionMap:
    """The attention weights of one module for one forward call."""

    name: str  # module path, e.g. "blocks.0.attn" or "decoder.blocks.1.cross_attn"
    stack: str  # "decoder", "encoder" or "decoder-cross" (cross-attention of an encoder-decoder)
    layer: int
    probs: Tensor  # (B, H, T, S) float32: row t is query t's distribution over the S keys
    values: Tensor | None = None  # (B, H, S, D) the values, heads repeated for GQA (keep_values=True only)


@contextlib.contextmanager
def _weights_to(module: Attention, sink: Callable[[Tensor, Tensor], None]) -> Iterator[None]:
    """Run `module` on its eager path, its weights and values going to `sink`, inside the `with` block."""
    previous, module.on_weights = module.on_weights, sink
    try:
        yield
    finally:
        module.on_weights = previous


def attention_weights(attn: Attention, x: Tensor, *, rope: tuple[Tensor, Tensor] | None = None,
                      mask: Tensor | None = None, input_pos: Tensor | None = None,
                      context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The attention of `attn` on these forward inputs: (probs (B, H, T, S), values (B, H, S, D)).

    Calls the module's own forward on its eager path, so the weights are the ones its output comes from. With a
    KV cache, that call writes this step's keys and values into the cache, as the model's own call does.
    """
    got: list[tuple[Tensor, Tensor]] = []
    with _weights_to(attn, lambda probs, values: got.append((probs.detach(), values.detach()))):
        attn(x, rope=rope, mask=mask, input_pos=input_pos, context=context)
    return got[0]


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
    Captured modules attend eagerly rather than through SDPA, so they are slower and use more memory.
    """
    maps: list[AttentionMap] = []

    def sink_for(name: str) -> Callable[[Tensor, Tensor], None]:
        stack, layer = _place(name)

        def sink(probs: Tensor, values: Tensor) -> None:
            maps.append(AttentionMap(name, stack, layer, probs.detach().cpu(),
                                     values.detach().float().cpu() if keep_values else None))

        return sink

    with contextlib.ExitStack() as on:
        for name, module in model.named_modules():
            if isinstance(module, Attention) and (where is None or where(*_place(name))):
                on.enter_context(_weights_to(module, sink_for(name)))
        yield maps


def run_for_attention(model: nn.Module, ids: Tensor, *, token_types: Tensor | None = None,
                      decoder_start: int = 0, where: Callable[[str, int], bool] | None = None
                      ) -> list[AttentionMap]:
    """The attention maps of one forward pass over ids (1, T), by model kind (`where`: as `capture_attention`).

    Decoders and encoders read the text; an encoder-decoder's encoder reads it and its decoder takes one step
    from `decoder_start`, so its cross-attention shows which input tokens that first step looks at.
    """
    kind = kind_of(model.cfg)
    with torch.no_grad(), capture_attention(model, where=where) as maps:
        if kind == Kind.ENCODER_DECODER:
            start = torch.full((ids.shape[0], 1), decoder_start, dtype=torch.long, device=ids.device)
            model.decode(start, model.encode(ids))
        elif kind == Kind.ENCODER:
            model(ids, token_types=token_types)
        else:
            model(ids)
    return maps


def stack_layers(cfg: ModelConfig) -> dict[str, int]:
    """The attention stacks of a model of `cfg` (as `AttentionMap.stack` names them) and their layer counts."""
    kind = kind_of(cfg)
    if kind == Kind.ENCODER_DECODER:
        return {"encoder": cfg.n_layer, "decoder": cfg.n_decoder_layer, "decoder-cross": cfg.n_decoder_layer}
    if kind == Kind.ENCODER:
        return {"encoder": cfg.n_layer}
    if kind == Kind.DECODER:
        return {"decoder": cfg.n_layer}
    return {}  # recurrent: no attention


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
