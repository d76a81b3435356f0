"""Per-family tables: which Hugging Face tensor and config key each lmforge tensor and option becomes.

The mechanism that reads, renames, fuses, transposes and writes lives in `hf.py` and knows no family. A family is
one `Family` value here: a table of `Rule`s (lmforge name <- Hugging Face name(s)), the config mapping both ways,
and the options the Hugging Face architecture cannot express. Adding a family (BERT, T5) is adding one more table
and config mapping, and a line in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.models.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    """One lmforge tensor and the Hugging Face tensor(s) it is made of.

    Names may hold placeholders (`{i}`, the layer index) that `Family.layers` counts. Several Hugging Face names
    are concatenated along dim 0 into the one lmforge tensor (lmforge fuses q|k|v into one matmul); `split` gives
    their row counts from the config, to cut it apart again on export. `transpose` marks GPT-2's `Conv1D`, which
    stores its weight as (in, out) where `nn.Linear` stores (out, in).
    """

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False
    split: Callable[[ModelConfig], list[int]] | None = None


@dataclass(frozen=True)
class Family:
    """How one Hugging Face architecture maps to and from lmforge."""

    lmforge_family: str  # ModelConfig.family exported with this table
    model_type: str  # Hugging Face `model_type`, which picks the table on import
    architecture: str  # Hugging Face class in `architectures`, what `AutoModelFor*` instantiates
    rules: tuple[Rule, ...]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    config_from_hf: Callable[[dict[str, Any]], ModelConfig]
    # Options of one side the other side cannot express; each a short phrase for the one-line error.
    unsupported_export: Callable[[ModelConfig], list[str]]
    unsupported_import: Callable[[dict[str, Any]], list[str]]
    # Placeholder -> how many; a rule with `{i}` is repeated for i in range(layers(cfg)["i"]).
    layers: Callable[[ModelConfig], dict[str, int]] = lambda cfg: {"i": cfg.n_layer}
    # Prefix of the base model's tensors. Checkpoints saved from the base class (GPT2Model, LlamaModel) and the
    # original GPT-2 release lack it; the importer adds it back when no tensor carries it.
    hf_prefix: str = ""
    # Suffixes of non-parameter buffers some checkpoints carry (causal masks, rotary tables); dropped on import.
    hf_ignore: tuple[str, ...] = ()
    # The Hugging Face architecture always has biases: export a bias-free lmforge model with zero biases.
    zero_missing_bias: bool = False


def _module(ours: str, *theirs: str, transpose: bool = False,
            split: Callable[[ModelConfig], list[int]] | None = None) -> tuple[Rule, Rule]:
    """Rules for a layer's weight and bias (a bias-free model simply has no bias tensor to map)."""
    return (Rule(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), transpose, split),
            Rule(f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), False, split))


# Activation names: Hugging Face `ACT2FN` keys <-> lmforge `ModelConfig.activation`.
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu",
               "swish": "silu", "relu": "relu"}


def _act_to_hf(activation: str, tanh_name: str) -> str:
    return tanh_name if activation == "gelu_tanh" else activation


def _mismatches(cfg: ModelConfig, **wanted: str) -> list[str]:
    return [f"{name}={getattr(cfg, name)} (needs {value})" for name, value in wanted.items()
            if getattr(cfg, name) != value]


# Options of the shared ModelConfig that belong to other families (BERT, T5): a decoder export needs defaults.
_DECODER_DEFAULTS: dict[str, Any] = {"type_vocab_size": 0, "embed_norm": False, "scale_decoder_output": False,
                                     "attn_scale": None}


def _foreign_options(cfg: ModelConfig) -> list[str]:
    return [f"{name}={getattr(cfg, name)}" for name, default in _DECODER_DEFAULTS.items()
            if getattr(cfg, name, default) != default]


def _flagged(hf: dict[str, Any], *keys: str) -> list[str]:
    return [f"{key}={hf[key]}" for key in keys if hf.get(key)]


# --- GPT-2 (GPT2LMHeadModel) ---------------------------------------------------------------------------------

GPT2_RULES = (
    Rule("embed.tok.weight", ("transformer.wte.weight",)),
    Rule("embed.pos.weight", ("transformer.wpe.weight",)),
    *_module("blocks.{i}.norm1", "transformer.h.{i}.ln_1"),
    *_module("blocks.{i}.attn.wqkv", "transformer.h.{i}.attn.c_attn", transpose=True),  # already fused q|k|v
    *_module("blocks.{i}.attn.wo", "transformer.h.{i}.attn.c_proj", transpose=True),
    *_module("blocks.{i}.norm2", "transformer.h.{i}.ln_2"),
    *_module("blocks.{i}.mlp.up", "transformer.h.{i}.mlp.c_fc", transpose=True),
    *_module("blocks.{i}.mlp.down", "transformer.h.{i}.mlp.c_proj", transpose=True),
    *_module("norm_f", "transformer.ln_f"),
    Rule("lm_head.weight", ("lm_head.weight",)),
)


def _gpt2_unsupported_export(cfg: ModelConfig) -> list[str]:
    problems = _mismatches(cfg, norm="layernorm", norm_position="pre", pos="learned", mlp="standard")
    if cfg.n_kv_head != cfg.n_head:
        problems.append(f"n_kv_head={cfg.n_kv_head} (GPT-2 has no grouped-query attention)")
    if cfg.head_dim * cfg.n_head != cfg.d_model:
        problems.append(f"head_dim={cfg.head_dim} (GPT-2 needs d_model / n_head)")
    return problems + _foreign_options(cfg)


def _gpt2_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_ctx": cfg.max_seq_len,  # older readers of GPT-2 configs still look for it
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.d_ff,
        "activation_function": _act_to_hf(cfg.activation, "gelu_new"),
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def _gpt2_unsupported_import(hf: dict[str, Any]) -> list[str]:
    problems = _flagged(hf, "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention")
    if hf.get("scale_attn_weights", True) is False:
        problems.append("scale_attn_weights=false")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACT_FROM_HF:
        problems.append(f"activation_function={act}")
    return problems


def _gpt2_from_hf(hf: dict[str, Any]) -> ModelConfig:
    d = hf["n_embd"]
    return ModelConfig(
        family="gpt", vocab_size=hf["vocab_size"], max_seq_len=hf["n_positions"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], d_model=d, d_ff=hf.get("n_inner") or 4 * d, norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_position="pre", mlp="standard",
        activation=ACT_FROM_HF[hf.get("activation_function", "gelu_new")], pos="learned", bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("resid_pdrop", 0.0),
        init_std=hf.get("initializer_range", 0.02),
    )


GPT2 = Family(
    lmforge_family="gpt", model_type="gpt2", architecture="GPT2LMHeadModel", rules=GPT2_RULES,
    config_to_hf=_gpt2_to_hf, config_from_hf=_gpt2_from_hf,
    unsupported_export=_gpt2_unsupported_export, unsupported_import=_gpt2_unsupported_import,
    hf_prefix="transformer.", hf_ignore=(".attn.bias", ".attn.masked_bias"), zero_missing_bias=True,
)


# --- Llama (LlamaForCausalLM) --------------------------------------------------------------------------------

def _qkv_rows(cfg: ModelConfig) -> list[int]:
    kv = cfg.n_kv_head * cfg.head_dim
    return [cfg.n_head * cfg.head_dim, kv, kv]


LLAMA_RULES = (
    Rule("embed.tok.weight", ("model.embed_tokens.weight",)),
    Rule("blocks.{i}.norm1.weight", ("model.layers.{i}.input_layernorm.weight",)),
    # Both use the rotate-half RoPE pairing, so q and k rows need no permutation, only fusing.
    *_module("blocks.{i}.attn.wqkv", "model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj",
             "model.layers.{i}.self_attn.v_proj", split=_qkv_rows),
    *_module("blocks.{i}.attn.wo", "model.layers.{i}.self_attn.o_proj"),
    Rule("blocks.{i}.norm2.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
    *_module("blocks.{i}.mlp.gate", "model.layers.{i}.mlp.gate_proj"),
    *_module("blocks.{i}.mlp.up", "model.layers.{i}.mlp.up_proj"),
    *_module("blocks.{i}.mlp.down", "model.layers.{i}.mlp.down_proj"),
    Rule("norm_f.weight", ("model.norm.weight",)),
    Rule("lm_head.weight", ("lm_head.weight",)),
)


def _llama_unsupported_export(cfg: ModelConfig) -> list[str]:
    return _mismatches(cfg, norm="rmsnorm", norm_position="pre", pos="rope", mlp="gated") + _foreign_options(cfg)


def _llama_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": _act_to_hf(cfg.activation, "gelu_pytorch_tanh"),
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers 5 reads `rope_parameters`; older transformers, vLLM and llama.cpp's converter read
        # `rope_theta` / `rope_scaling`. Writing both keeps every reader on the same (unscaled) RoPE.
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        # lmforge's `bias` covers every linear layer; RMSNorm has none either way.
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "initializer_range": cfg.init_std,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def _llama_rope(hf: dict[str, Any]) -> tuple[float, str | None]:
    """RoPE base and, when not plain RoPE, the scaling type (from transformers 5 or older key names)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    return float(theta), None if kind in (None, "default") else kind


def _llama_unsupported_import(hf: dict[str, Any]) -> list[str]:
    problems = []
    _, scaling = _llama_rope(hf)
    if scaling:
        problems.append(f"rope scaling '{scaling}'")
    if bool(hf.get("attention_bias")) != bool(hf.get("mlp_bias")):
        problems.append(f"attention_bias={hf.get('attention_bias')} with mlp_bias={hf.get('mlp_bias')} "
                        "(lmforge has biases on all linear layers or none)")
    act = hf.get("hidden_act", "silu")
    if act not in ACT_FROM_HF:
        problems.append(f"hidden_act={act}")
    if (hf.get("pretraining_tp") or 1) > 1:
        problems.append(f"pretraining_tp={hf['pretraining_tp']}")
    return problems


def _llama_from_hf(hf: dict[str, Any]) -> ModelConfig:
    theta, _ = _llama_rope(hf)
    return ModelConfig(
        family="llama", vocab_size=hf["vocab_size"], max_seq_len=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], d_model=hf["hidden_size"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_position="pre", mlp="gated", activation=ACT_FROM_HF[hf.get("hidden_act", "silu")], pos="rope",
        rope_theta=theta, bias=bool(hf.get("attention_bias")),
        tie_embeddings=hf.get("tie_word_embeddings", False), dropout=hf.get("attention_dropout") or 0.0,
        init_std=hf.get("initializer_range", 0.02),
    )


LLAMA = Family(
    lmforge_family="llama", model_type="llama", architecture="LlamaForCausalLM", rules=LLAMA_RULES,
    config_to_hf=_llama_to_hf, config_from_hf=_llama_from_hf,
    unsupported_export=_llama_unsupported_export, unsupported_import=_llama_unsupported_import,
    hf_prefix="model.", hf_ignore=("rotary_emb.inv_freq",),
)


FAMILIES: tuple[Family, ...] = (GPT2, LLAMA)
