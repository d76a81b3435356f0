"""`explain(cfg)`: a checkpoint and a text in, attention maps, a surprise page and attributions out.

Everything a user can get wrong (checkpoint, tokenizer, text, layers, heads, target) is checked before any file
is written, so a bad input leaves nothing behind; every file is then written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from lmforge.config import Config, field
from lmforge.device import DEVICES
from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.registry import Kind, kind_of

OUTPUTS = ("attention", "surprise", "attribution")


@dataclass
class ExplainConfig(Config):
    checkpoint: str = field("runs/quickstart/train", "checkpoint directory, or a run directory (uses its best)")
    text: str = field("", "the text to explain (usually given as the positional argument)")
    out: str = field("runs/explain", "directory the files are written to (created if needed)")
    what: list[str] = field(default_factory=list, help="outputs to make, from attention, surprise, attribution "
                                                       "(default: all that the model supports)")
    layers: list[int] = field(default_factory=list, help="attention: layers to plot (default: all; -1 = last)")
    heads: list[int] = field(default_factory=list, help="attention: heads to plot (default: all; -1 = last)")
    method: str = field("ig", "attribution method: ig (integrated gradients) or grad_x_input (gradient x "
                                     "input)",
                        choices=("ig", "grad_x_input"))
    target: str | None = field(None, "attribution: the prediction to explain. Decoders: the next token, as text "
                                     "(' mat', mind the leading space) or its vocabulary spelling; bert: the "
                                     "next-sentence class, 0/next or 1/random (default: the model's top choice)")
    ig_steps: int = field(32, "integrated gradients: interpolation steps (more = smaller completeness error)",
                        min=1)
    baseline: str = field("zero", "integrated gradients: baseline embeddings at the text's tokens, zero or pad "
                                       "(the pad token's)", choices=("zero", "pad"))
    units: str = field("bits", "surprise units: bits or nats", choices=("bits", "nats"))
    top_k: int = field(5, "surprise: top predictions shown when hovering a token", min=1)
    device: str = field("auto", "device to run on", choices=DEVICES)


@dataclass
class ExplainResult:
    files: list[Path]
    surprise_mean: float | None = None  # in cfg.units per token
    target: str | None = None  # the attributed prediction, as a label
    target_prob: float | None = None


def _wanted(cfg: ExplainConfig, mcfg: ModelConfig, tokenizer: Tokenizer) -> list[str]:
    """The outputs to make: those asked for (an error if the model cannot give one), else all it can give."""
    from lmforge.explain.attention import stack_layers
    from lmforge.explain.surprise import unsupported
    from lmforge.progress import console

    unknown = [w for w in cfg.what if w not in OUTPUTS]
    if unknown:
        raise UserError(f"unknown output {', '.join(map(repr, unknown))} in --what",
                        fix=f"choose from {', '.join(OUTPUTS)}")
    why_not = {"attention": None if stack_layers(mcfg) else f"a {mcfg.family} model has no attention",
               "surprise": unsupported(mcfg, tokenizer),
               "attribution": None}
    if cfg.what:
        for w in cfg.what:
            if why_not[w]:
                raise UserError(why_not[w], fix=f"ask for --what {' '.join(o for o in OUTPUTS if not why_not[o])}")
        return [w for w in OUTPUTS if w in cfg.what]
    for w, reason in why_not.items():
        if reason:
            console.print(f"[yellow]no {w} output: {reason}[/yellow]")
    return [w for w in OUTPUTS if not why_not[w]]


def explain(cfg: ExplainConfig) -> ExplainResult:
    """Write the outputs `cfg.what` asks for into `cfg.out`; returns their paths (attention PNGs, HTML, JSON)."""
    from lmforge.atomic import write_json, write_text
    from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from lmforge.device import pick_device
    from lmforge.explain.attention import plot_attention, run_for_attention, select, stack_layers
    from lmforge.explain.attribution import (
        attribute,
        attribution_json,
        attribution_page,
        resolve_target,
        target_label,
    )
    from lmforge.explain.inputs import check_text, decoder_start_id, encode_text
    from lmforge.explain.surprise import UNITS, surprise_json, surprise_page, token_surprise

    # --- check everything a user can get wrong before writing anything ---
    check_text(cfg.text)  # before loading anything
    path = resolve_checkpoint(cfg.checkpoint)
    model, mcfg = load_model(path, pick_device(cfg.device))
    tokenizer = load_checkpoint_tokenizer(path, mcfg)
    wanted = _wanted(cfg, mcfg, tokenizer)
    enc = encode_text(tokenizer, cfg.text, mcfg)
    stacks = stack_layers(mcfg)
    if "attention" in wanted:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("matplotlib is not installed, so attention maps cannot be drawn",
                            fix="pip install 'lmforge[train]', or pass --what surprise attribution") from None
        for n in stacks.values():
            select(n, cfg.layers, "layer")
        select(mcfg.n_head, cfg.heads, "head")
    if "attribution" in wanted:
        resolve_target(cfg.target, tokenizer, mcfg)

    out = Path(cfg.out)
    result = ExplainResult(files=[])
    device = next(model.parameters()).device
    start = decoder_start_id(tokenizer)

    if "attention" in wanted:
        chosen = {stack: select(n, cfg.layers, "layer") for stack, n in stacks.items()}
        maps = run_for_attention(model, enc.tensor(device), token_types=enc.types_tensor(device),
                                 decoder_start=start, where=lambda stack, layer: layer in chosen[stack])
        text = [enc.shown(i) for i in range(len(enc))]
        first = [tokenizer.id_to_token(start) or str(start)]  # what an encoder-decoder's decoder read
        for stack in stacks:
            picked = [m for m in maps if m.stack == stack]
            encoder_decoder = kind_of(mcfg) == Kind.ENCODER_DECODER
            queries = first if encoder_decoder and stack != "encoder" else text
            keys = first if encoder_decoder and stack == "decoder" else text
            result.files.append(plot_attention(picked, queries, keys, out / f"attention_{stack}.png",
                                               heads=cfg.heads, title=f"{stack} attention: {path}"))

    if "surprise" in wanted:
        s = token_surprise(model, tokenizer, enc, top_k=cfg.top_k)
        result.surprise_mean = s.mean_nats() * UNITS[cfg.units] if s.scored() else None
        write_text(out / "surprise.html", surprise_page(s, enc, units=cfg.units))
        write_json(out / "surprise.json", surprise_json(s, units=cfg.units))
        result.files += [out / "surprise.html", out / "surprise.json"]

    if "attribution" in wanted:
        a = attribute(model, tokenizer, enc, method=cfg.method, target=cfg.target, steps=cfg.ig_steps,
                      baseline=cfg.baseline)
        label = target_label(a, tokenizer, mcfg)
        write_text(out / "attribution.html", attribution_page(a, enc, label, baseline=cfg.baseline))
        write_json(out / "attribution.json", attribution_json(a, enc, label, baseline=cfg.baseline))
        result.files += [out / "attribution.html", out / "attribution.json"]
        result.target, result.target_prob = label, a.target_prob
    return result
