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

from lmforge.config import Config, field
from lmforge.errors import UserError
from lmforge.models.registry import FAMILIES, HEADS


@dataclass
class ModelConfig(Config):
    family: str = field("gpt", "model family: gpt / llama (decoders), bert (encoder), t5 (encoder-decoder), "
                                "lstm (recurrent baseline)", choices=tuple(FAMILIES))
    vocab_size: int = field(8192, "vocabulary size (set from the tokenizer when training)", min=1)
    max_seq_len: int = field(256, "longest sequence the model accepts (learned positions, cache size)",
                             min=1)
    n_layer: int = field(4, "number of Transformer blocks", min=1)
    n_head: int = field(4, "attention heads", min=1)
    n_kv_head: int | None = field(None, "key/value heads for grouped-query attention (default: n_head)",
                                   min=1)
    head_dim: int | None = field(None, "width of each attention head (default: d_model / n_head)", min=1)
    d_model: int = field(256, "residual stream width", min=1)
    d_ff: int | None = field(None, "MLP hidden width (default: 4*d_model, or 8/3*d_model rounded for gated MLPs)",
                              min=1)
    norm: str = field("layernorm", "normalisation layer", choices=("layernorm", "rmsnorm"))
    norm_eps: float = field(1e-5, "epsilon of the normalisation layers", gt=0)
    norm_position: str = field("pre", "normalise before (pre) or after (post, original BERT) each sublayer",
                               choices=("pre", "post"))
    mlp: str = field("standard", "MLP kind: standard (up, act, down) or gated (SwiGLU/GeGLU)",
                     choices=("standard", "gated"))
    activation: str = field("gelu_tanh", "MLP activation (relu2: ReLU squared, as modded-nanogpt's MLP)",
                            choices=("gelu", "gelu_tanh", "silu", "relu", "relu2"))
    pos: str = field("learned", "position information (relative: T5 bucketed attention biases)",
                     choices=("learned", "sinusoidal", "rope", "relative", "none"))
    rope_theta: float = field(10000.0, "RoPE base", gt=0)
    relative_buckets: int = field(32, "relative positions: number of buckets", min=1)
    relative_max_distance: int = field(128, "relative positions: distance beyond which all share a bucket",
                                       min=1)
    qk_norm: bool = field(False, "RMS-normalise each head's queries and keys before attention (and before RoPE), "
                                 "with a learned scale per channel: steadier logits at high learning rates "
                                 "(modded-nanogpt, OLMo 2, Qwen3); no GPT-2 / Llama equivalent")
    attn_scale: float | None = field(None, "attention score scale (default 1/sqrt(head_dim); T5 uses 1)", gt=0)
    type_vocab_size: int = field(0, "segment (token type) embeddings, as BERT's sentence A/B (0 = none)",
                                 min=0)
    embed_norm: bool = field(False, "normalise the summed embeddings (BERT)")
    n_decoder_layer: int | None = field(None, "encoder-decoder: decoder blocks (default: n_layer)", min=0)
    scale_decoder_output: bool = field(False, "multiply the last hidden state by d_model**-0.5 before a tied output "
                                              "projection (T5)")
    bias: bool = field(True, "biases in linear and norm layers")
    tie_embeddings: bool = field(True, "share the input embedding and output projection weights")
    logit_softcap: float | None = field(None, "cap the output logits smoothly at +-this value (cap * tanh(logits / "
                                              "cap), as Gemma 2 and modded-nanogpt); None: no cap; no GPT-2 / "
                                              "Llama equivalent", gt=0)
    dropout: float = field(0.0, "dropout on embeddings, attention and residual branches",
                            min=0, lt=1)
    init_std: float = field(0.02, "standard deviation of the weight initialisation (init normal)", min=0)
    init: str = field("normal", "weight initialisation: normal (GPT-2's: N(0, init_std), residual projections by "
                                "1/sqrt(2 n_layer)) or t5 (T5's, as transformers' T5: each matrix N(0, 1/fan_in), "
                                "queries another 1/head_dim for the attention scale T5 leaves out, embeddings "
                                "N(0, 1); encoder-decoders only)", choices=("normal", "t5"))
    head: str = field("lm", "the task head on the backbone: lm (the family's language-model head(s): next-token "
                            "for decoders, MLM + NSP for bert), classify (one logit per label), span (start/end "
                            "logits for extractive QA)", choices=HEADS)
    pooling: str = field("auto", "classify head: how a text's states become one vector: first ([CLS]), mean (of "
                                 "the real tokens), last (real token) or max (of each channel over the real "
                                 "tokens); auto: last for decoders, first for "
                                 "encoders (through BERT's pooler, as BertForSequenceClassification), mean for lstm",
                         choices=("auto", "first", "mean", "last", "max"))
    trained_seq_len: int | None = field(None, "sequence length the model was trained at (set by `lmforge train`): "
                                              "`eval` scores windows of it by default and `generate` warns past "
                                              "it; None: not recorded (the model is taken at max_seq_len)")
    labels: list[str] = field(default_factory=list,
                              help="class names, in the order of the logits: a sequence classifier over them (as "
                                   "Hugging Face's id2label; the classification objective sets them from its "
                                   "labelled file); empty: a language model")
    bidirectional: bool = field(False, "lstm classify head: a second LSTM reads the text right to left and the head "
                                "reads both directions' states (twice the LSTM's cost; a language model cannot "
                                "look ahead, so only a classifier takes it)")
    multi_label: bool = field(False, "classify head: the labels are independent (a sigmoid each; a text may have "
                                     "none, one or several), as Hugging Face's problem_type "
                                     "multi_label_classification; off: exactly one label per text (softmax)")

    def __post_init__(self) -> None:
        if self.labels and self.head == "lm":  # configs written before `head` named a classifier by its labels
            self.head = "classify"
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_head > 0 and self.d_model % self.n_head:
                raise UserError(f"invalid model config: d_model {self.d_model} is not divisible by n_head "
                                f"{self.n_head}", fix="adjust d_model or n_head, or set head_dim explicitly")
            self.head_dim = self.d_model // max(self.n_head, 1)
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.d_ff is None:
            if self.mlp == "gated":  # keep parameter count ~ a 4x standard MLP (Llama), rounded to 64
                self.d_ff = 64 * ((int(8 * self.d_model / 3) + 63) // 64)
            else:
                self.d_ff = 4 * self.d_model
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.n_head % self.n_kv_head:
            problems.append(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.pos == "rope" and self.head_dim % 2:
            problems.append(f"RoPE needs an even head dimension, got {self.head_dim}")
        from lmforge.models.registry import Kind, family

        if self.head not in family(self.family).heads:
            problems.append(f"a {self.family} model has no '{self.head}' head (it has: "
                            f"{', '.join(family(self.family).heads)})")
        if self.head == "classify" and not self.labels:
            problems.append("a classify head needs labels (the class names)")
        if self.labels and self.head != "classify":
            problems.append(f"labels are for a classify head, not '{self.head}'")
        if self.multi_label and self.head != "classify":
            problems.append(f"multi_label is for a classify head, not '{self.head}'")
        if self.pooling == "first" and family(self.family).kind in (Kind.DECODER, Kind.RECURRENT):
            problems.append("pooling 'first' reads one token in a causal model: use last or mean")
        if self.bidirectional and family(self.family).kind is not Kind.RECURRENT:
            problems.append(f"bidirectional is for a recurrent (lstm) classifier, not a {self.family} model")
        if self.init == "t5" and family(self.family).kind is not Kind.ENCODER_DECODER:
            problems.append(f"init 't5' is T5's initialisation, for encoder-decoders (a {self.family} model takes "
                            "init 'normal')")
        if (self.qk_norm or self.logit_softcap is not None) and family(self.family).kind is not Kind.DECODER:
            problems.append(f"qk_norm and logit_softcap are decoder options (a {self.family} model takes neither)")
        if self.labels and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels) or not all(self.labels)):
            problems.append(f"labels must be two or more distinct non-empty names, got {self.labels}")
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
        """Parameter count, exact for every family: the model is built on the meta device (no memory)."""
        import torch

        from lmforge.models import build_model

        with torch.device("meta"):
            model = build_model(self)
        n = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
        if not include_embeddings:
            n -= sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L d T."""
        from lmforge.models.registry import Kind, kind_of

        t = seq_len or self.max_seq_len
        kind = kind_of(self)
        layers = self.n_layer + (self.n_decoder_layer if kind == Kind.ENCODER_DECODER else 0)
        attention = 0 if kind == Kind.RECURRENT else 12 * layers * self.d_model * t
        # Only an lm head projects onto the vocabulary (a task head is small and counted in num_params).
        output = 6 * self.vocab_size * self.d_model if self.head == "lm" else 0
        return 6 * self.num_params(include_embeddings=False) + output + attention


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


def _bert(**kw) -> ModelConfig:
    return ModelConfig(family="bert", norm="layernorm", norm_eps=1e-12, norm_position="post", mlp="standard",
                       activation="gelu", pos="learned", bias=True, tie_embeddings=True, type_vocab_size=2,
                       embed_norm=True, **kw)


def _t5(**kw) -> ModelConfig:
    """T5 v1.1: RMSNorm, no biases, relative positions, unscaled attention, gated-GELU."""
    return ModelConfig(family="t5", norm="rmsnorm", norm_eps=1e-6, mlp="gated", activation="gelu_tanh",
                       pos="relative", attn_scale=1.0, bias=False, tie_embeddings=True, scale_decoder_output=True,
                       init="t5", **kw)


@preset
def bert_tiny() -> ModelConfig:
    return _bert(n_layer=2, n_head=2, d_model=128, max_seq_len=256)


@preset
def bert_base() -> ModelConfig:
    return _bert(n_layer=12, n_head=12, d_model=768, max_seq_len=512, vocab_size=30528)


@preset
def t5_tiny() -> ModelConfig:
    return _t5(n_layer=2, n_head=4, d_model=128, max_seq_len=256)


@preset
def t5_small() -> ModelConfig:
    return _t5(n_layer=6, n_head=8, d_model=512, d_ff=1024, max_seq_len=512, vocab_size=32128)


@preset
def llama_small() -> ModelConfig:
    """~110M-parameter Llama-style model (GQA, RoPE, SwiGLU, RMSNorm)."""
    return _llama(n_layer=12, n_head=12, n_kv_head=4, d_model=768, max_seq_len=2048, vocab_size=32000)


def _lstm(**kw) -> ModelConfig:
    """Recurrent baseline (attention fields unused). Embeddings start at std 0.25, not a Transformer's 0.02: an
    LSTM fed near-zero input vectors lingers at the unigram loss far longer."""
    return ModelConfig(family="lstm", max_seq_len=256, tie_embeddings=True, init_std=0.25, **kw)


@preset
def lstm_tiny() -> ModelConfig:
    """A 1-layer LSTM of width 256, for CPU comparisons with the tiny Transformer."""
    return _lstm(n_layer=1, d_model=256)


@preset
def lstm_small() -> ModelConfig:
    """A 2-layer LSTM of width 512 with dropout between layers."""
    return _lstm(n_layer=2, d_model=512, dropout=0.1)


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        from lmforge.config import suggest

        raise UserError(f"unknown model preset '{name}'{suggest(name, PRESETS)}",
                        fix=f"choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
