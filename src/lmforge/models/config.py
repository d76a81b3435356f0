"""Model configuration: one dataclass for every Transformer family, plus named presets.

A family is a config (and, at most, a small module): GPT-2-style and Llama-style decoders are the same code with
different norms, MLPs, positions and biases. Presets are plain functions in a registry (torchtitan-style), so a
user's YAML can start from one and override fields.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import field
from lmforge.errors import UserError

FAMILIES = ("gpt", "llama")


@dataclass
class ModelConfig:
    family: str = field("gpt", "model family: gpt (GPT-2-style) or llama (Llama-style)", choices=FAMILIES)
    vocab_size: int = field(8192, "vocabulary size (set from the tokenizer when training)")
    max_seq_len: int = field(256, "longest sequence the model accepts (learned positions, cache size)")
    n_layer: int = field(4, "number of Transformer blocks")
    n_head: int = field(4, "attention heads")
    n_kv_head: int | None = field(None, "key/value heads for grouped-query attention (default: n_head)")
    d_model: int = field(256, "residual stream width")
    d_ff: int | None = field(None, "MLP hidden width (default: 4*d_model, or 8/3*d_model rounded for gated MLPs)")
    norm: str = field("layernorm", "normalisation layer", choices=("layernorm", "rmsnorm"))
    norm_eps: float = field(1e-5, "epsilon of the normalisation layers")
    norm_position: str = field("pre", "normalise before (pre) or after (post, original BERT) each sublayer",
                               choices=("pre", "post"))
    mlp: str = field("standard", "MLP kind: standard (up, act, down) or gated (SwiGLU/GeGLU)",
                     choices=("standard", "gated"))
    activation: str = field("gelu_tanh", "MLP activation", choices=("gelu", "gelu_tanh", "silu", "relu"))
    pos: str = field("learned", "position information", choices=("learned", "sinusoidal", "rope", "none"))
    rope_theta: float = field(10000.0, "RoPE base")
    bias: bool = field(True, "biases in linear and norm layers")
    tie_embeddings: bool = field(True, "share the input embedding and output projection weights")
    dropout: float = field(0.0, "dropout on embeddings, attention and residual branches")
    init_std: float = field(0.02, "standard deviation of the weight initialisation")

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            if self.mlp == "gated":  # keep parameter count ~ a 4x standard MLP (Llama), rounded to 64
                self.d_ff = 64 * ((int(8 * self.d_model / 3) + 63) // 64)
            else:
                self.d_ff = 4 * self.d_model
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def validate(self) -> None:
        problems = []
        if self.d_model % self.n_head:
            problems.append(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.pos == "rope" and self.head_dim % 2:
            problems.append(f"RoPE needs an even head dimension, got {self.head_dim}")
        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems),
                            fix="adjust the model options (see `lmforge train --help`)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        from lmforge.config import from_dict

        return from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        from lmforge.atomic import write_json

        write_json(path, {"format": "lmforge-model/1", **self.to_dict()})

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError("model config not found", where=path, fix="point at an lmforge checkpoint directory") \
                from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"model config is not valid JSON ({e})", where=path) from None
        data.pop("format", None)
        return cls.from_dict(data)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count from the config alone (matches `sum(p.numel())` of the built model)."""
        d, f, L = self.d_model, self.d_ff, self.n_layer
        kv = self.n_kv_head * self.head_dim
        b = 1 if self.bias else 0
        norm = d * (2 if self.norm == "layernorm" and self.bias else 1)
        attn = d * (d + 2 * kv) + b * (d + 2 * kv) + d * d + b * d
        mlp = (3 if self.mlp == "gated" else 2) * d * f + b * (f * (2 if self.mlp == "gated" else 1) + d)
        n = L * (attn + mlp + 2 * norm) + norm
        if include_embeddings:
            n += self.vocab_size * d
            if not self.tie_embeddings:
                n += self.vocab_size * d
            if self.pos == "learned":
                n += self.max_seq_len * d
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L d T."""
        t = seq_len or self.max_seq_len
        return 6 * self.num_params(include_embeddings=False) + 6 * self.vocab_size * self.d_model \
            + 12 * self.n_layer * self.d_model * t


PRESETS: dict[str, Callable[[], ModelConfig]] = {}


def preset(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    PRESETS[fn.__name__.replace("_", "-")] = fn
    return fn


def _gpt(**kw) -> ModelConfig:
    return ModelConfig(family="gpt", norm="layernorm", mlp="standard", activation="gelu_tanh", pos="learned",
                       bias=True, tie_embeddings=True, **kw)


def _llama(**kw) -> ModelConfig:
    return ModelConfig(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope",
                       bias=False, tie_embeddings=False, norm_eps=1e-5, **kw)


@preset
def tiny() -> ModelConfig:
    """~1M-parameter GPT for tests and CPU quickstarts."""
    return _gpt(n_layer=4, n_head=4, d_model=128, max_seq_len=256)


@preset
def small() -> ModelConfig:
    """~10M parameters: Tiny-Shakespeare-class runs on a laptop or a GPU in minutes."""
    return _gpt(n_layer=6, n_head=6, d_model=384, max_seq_len=256)


@preset
def gpt2_124m() -> ModelConfig:
    return _gpt(n_layer=12, n_head=12, d_model=768, max_seq_len=1024, vocab_size=50304)


@preset
def gpt2_350m() -> ModelConfig:
    return _gpt(n_layer=24, n_head=16, d_model=1024, max_seq_len=1024, vocab_size=50304)


@preset
def llama_tiny() -> ModelConfig:
    return _llama(n_layer=4, n_head=4, n_kv_head=2, d_model=128, max_seq_len=256)


@preset
def llama_small() -> ModelConfig:
    """~110M-parameter Llama-style model (GQA, RoPE, SwiGLU, RMSNorm)."""
    return _llama(n_layer=12, n_head=12, n_kv_head=4, d_model=768, max_seq_len=2048, vocab_size=32000)


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown model preset '{name}'", fix=f"choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
