"""Per-family tables: which Hugging Face tensor and config key each lmforge tensor and option becomes.

The mechanism that reads, renames, fuses, transposes and writes lives in `hf.py` and knows no family. A family is
one `Family` value here: a table of `Rule`s for its backbone (lmforge name <- Hugging Face name(s)), the config
mapping both ways, the options the Hugging Face architecture cannot express, and one `Head` per task head
(`ModelConfig.head`) with a Hugging Face class: that class's name and Auto class, the rules for the head's own
tensors, and the config keys only it has. Four families: GPT-2 and Llama (decoders), BERT (encoder) and T5
(encoder-decoder). Adding one is adding a table, a config mapping and a line in `FAMILIES`; adding a head to a
family is one `Head` entry.

| family | lm                                          | classify                       | span                     |
|--------|---------------------------------------------|--------------------------------|--------------------------|
| gpt    | GPT2LMHeadModel (+ GPT2Model)               | GPT2ForSequenceClassification  | -                        |
| llama  | LlamaForCausalLM (+ LlamaModel)             | LlamaForSequenceClassification | -                        |
| bert   | BertForPreTraining (+ BertForMaskedLM, ...) | BertForSequenceClassification  | BertForQuestionAnswering |
| t5     | T5ForConditionalGeneration                  | -                              | -                        |

(+ ...: further classes imported as that head; export writes the first.)
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

    `when` limits a rule to the configs it holds for (T5 names its MLP `wi` or `wi_0`/`wi_1` by gating). `also`
    names further Hugging Face tensors holding a copy of the same values: all are written on export, and on import
    the first present is read (BERT keeps its output bias both as `decoder.bias` and as `predictions.bias`).
    `zeros` gives the shape of an all-zero tensor to write when the lmforge model has none (BERT always has a
    token-type table; zeros add nothing to the embeddings).
    """

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False
    split: Callable[[ModelConfig], list[int]] | None = None
    when: Callable[[ModelConfig], bool] | None = None
    also: tuple[str, ...] = ()
    zeros: Callable[[ModelConfig], tuple[int, ...]] | None = None


def _no_keys(_: Any) -> dict[str, Any]:
    return {}


def _no_problems(_: dict[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class Head:
    """One task head (`ModelConfig.head`) as a Hugging Face class: the family's backbone rules plus these."""

    architecture: str  # Hugging Face class written to `architectures` on export, what `AutoModelFor*` builds
    auto_class: str  # the transformers Auto class that loads the exported directory, for messages and docs
    rules: tuple[Rule, ...]  # the head's own tensors
    # Further Hugging Face classes imported as this head (`architectures[0]` picks the head on import).
    reads: tuple[str, ...] = ()
    # config.json keys only this head has, and the ModelConfig fields they give back (a classifier's labels).
    config_to_hf: Callable[[ModelConfig], dict[str, Any]] = _no_keys
    config_from_hf: Callable[[dict[str, Any]], dict[str, Any]] = _no_keys
    unsupported_import: Callable[[dict[str, Any]], list[str]] = _no_problems
    # Prefixes of the head's lmforge tensors a checkpoint may lack, e.g. BertForMaskedLM has no pooler or NSP
    # head: imported with lmforge's initialisation, and named in a note.
    optional: tuple[str, ...] = ()
    # Write generation_config.json (heads that generate text).
    generates: bool = False


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model type maps to and from lmforge: its backbone, and a `Head` per task head."""

    lmforge_family: str  # ModelConfig.family exported with this table
    model_type: str  # Hugging Face `model_type`, which picks the table on import
    backbone: tuple[Rule, ...]  # the rules every head shares (embeddings, blocks, final norm)
    heads: dict[str, Head]  # ModelConfig.head -> its Hugging Face class; a head not here does not export
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
    # Older spellings of tensor-name endings, renamed on import (BERT's TensorFlow-era `LayerNorm.gamma`).
    hf_renames: tuple[tuple[str, str], ...] = ()

    def rules(self, head: str) -> tuple[Rule, ...]:
        """The table for a model with task head `head`: the backbone's rules, then the head's."""
        return self.backbone + self.heads[head].rules

    def head_for_architecture(self, architecture: str) -> str | None:
        """The head (`ModelConfig.head`) a Hugging Face class of this family carries; None for one lmforge lacks."""
        return next((name for name, head in self.heads.items()
                     if architecture == head.architecture or architecture in head.reads), None)

    def architectures(self) -> list[str]:
        """Every Hugging Face class this family imports, for messages."""
        return [name for head in self.heads.values() for name in (head.architecture, *head.reads)]


def _module(ours: str, *theirs: str, transpose: bool = False,
            split: Callable[[ModelConfig], list[int]] | None = None) -> tuple[Rule, Rule]:
    """Rules for a layer's weight and bias (a bias-free model simply has no bias tensor to map)."""
    return (Rule(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), transpose, split),
            Rule(f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), False, split))


def _weight(ours: str, *theirs: str, split: Callable[[ModelConfig], list[int]] | None = None,
            when: Callable[[ModelConfig], bool] | None = None) -> Rule:
    """A rule for a bias-free layer's weight (T5 has no biases)."""
    return Rule(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), split=split, when=when)


# Activation names: Hugging Face `ACT2FN` keys <-> lmforge `ModelConfig.activation`.
ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu",
               "swish": "silu", "relu": "relu", "relu2": "relu2"}


def _act_to_hf(activation: str, tanh_name: str) -> str:
    return tanh_name if activation == "gelu_tanh" else activation


def _mismatches(cfg: ModelConfig, **wanted: str) -> list[str]:
    return [f"{name}={getattr(cfg, name)} (needs {value})" for name, value in wanted.items()
            if getattr(cfg, name) != value]


# Options of the shared ModelConfig that belong to other families (BERT, T5): a decoder export needs defaults.
# qk_norm and logit_softcap (training-recipe options) have no GPT-2 or Llama equivalent at all.
_DECODER_DEFAULTS: dict[str, Any] = {"type_vocab_size": 0, "embed_norm": False, "scale_decoder_output": False,
                                     "attn_scale": None, "qk_norm": False, "logit_softcap": None}


def _foreign_options(cfg: ModelConfig) -> list[str]:
    return [f"{name}={getattr(cfg, name)}" for name, default in _DECODER_DEFAULTS.items()
            if getattr(cfg, name, default) != default]


def _flagged(hf: dict[str, Any], *keys: str) -> list[str]:
    return [f"{key}={hf[key]}" for key in keys if hf.get(key)]


# --- task heads shared by families ---------------------------------------------------------------------------

def _labels_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A classifier's labels as transformers writes them (`num_labels` for readers that look for it)."""
    return {"num_labels": len(cfg.labels), "id2label": {str(i): name for i, name in enumerate(cfg.labels)},
            "label2id": {name: i for i, name in enumerate(cfg.labels)},
            **({"problem_type": "multi_label_classification"} if cfg.multi_label else {})}


def _hf_labels(hf: dict[str, Any]) -> list[str]:
    """Class names in index order; transformers leaves id2label out of older two-label configs (LABEL_0, ...)."""
    id2label = hf.get("id2label")
    if id2label:
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    return [f"LABEL_{i}" for i in range(hf.get("num_labels") or 2)]


def _labels_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    return {"labels": _hf_labels(hf), "multi_label": hf.get("problem_type") == "multi_label_classification"}


def _classify_unsupported_import(hf: dict[str, Any]) -> list[str]:
    problem_type = hf.get("problem_type")
    if problem_type == "regression":
        return [f"problem_type={problem_type} (lmforge's classify head picks labels, it predicts no number)"]
    id2label = hf.get("id2label") or {}
    if sorted(str(k) for k in id2label) != sorted(str(i) for i in range(len(id2label))):
        return [f"id2label keys {sorted(str(k) for k in id2label)} (needs 0 to num_labels-1)"]
    labels = _hf_labels(hf)
    if len(labels) < 2:
        return [f"num_labels={len(labels)} (lmforge's classify head picks one of two or more labels)"]
    if len(set(labels)) != len(labels) or not all(labels):
        return [f"id2label {labels} (lmforge's labels are distinct, non-empty names)"]
    return []


def _span_unsupported_import(hf: dict[str, Any]) -> list[str]:
    labels = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels") or 2
    return [] if labels == 2 else [f"num_labels={labels} (lmforge's span head has a start and an end logit)"]


_LM_HEAD = (Rule("lm_head.weight", ("lm_head.weight",)),)  # the next-token projection (GPT-2, Llama, T5)


def _sequence_classifier(architecture: str) -> Head:
    """A decoder's classifier (`score`, no bias, read at the last non-pad token by transformers)."""
    return Head(architecture, "AutoModelForSequenceClassification", (Rule("score.weight", ("score.weight",)),),
                config_to_hf=_labels_to_hf, config_from_hf=_labels_from_hf,
                unsupported_import=_classify_unsupported_import)


# --- GPT-2 (GPT2LMHeadModel, GPT2ForSequenceClassification) --------------------------------------------------------

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
    lmforge_family="gpt", model_type="gpt2", backbone=GPT2_RULES,
    heads={"lm": Head("GPT2LMHeadModel", "AutoModelForCausalLM", _LM_HEAD, reads=("GPT2Model",), generates=True),
           "classify": _sequence_classifier("GPT2ForSequenceClassification")},
    config_to_hf=_gpt2_to_hf, config_from_hf=_gpt2_from_hf,
    unsupported_export=_gpt2_unsupported_export, unsupported_import=_gpt2_unsupported_import,
    hf_prefix="transformer.", hf_ignore=(".attn.bias", ".attn.masked_bias"), zero_missing_bias=True,
)


# --- Llama (LlamaForCausalLM, LlamaForSequenceClassification) ------------------------------------------------------

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
    lmforge_family="llama", model_type="llama", backbone=LLAMA_RULES,
    heads={"lm": Head("LlamaForCausalLM", "AutoModelForCausalLM", _LM_HEAD, reads=("LlamaModel",), generates=True),
           "classify": _sequence_classifier("LlamaForSequenceClassification")},
    config_to_hf=_llama_to_hf, config_from_hf=_llama_from_hf,
    unsupported_export=_llama_unsupported_export, unsupported_import=_llama_unsupported_import,
    hf_prefix="model.", hf_ignore=("rotary_emb.inv_freq",),
)


# --- BERT (BertForPreTraining, BertForSequenceClassification, BertForQuestionAnswering) ----------------------------

def _bert_layer(ours: str, theirs: str) -> tuple[Rule, ...]:
    return _module(f"encoder.blocks.{{i}}.{ours}", f"bert.encoder.layer.{{i}}.{theirs}")


BERT_RULES = (
    Rule("embed.tok.weight", ("bert.embeddings.word_embeddings.weight",)),
    Rule("embed.pos.weight", ("bert.embeddings.position_embeddings.weight",)),
    # BERT always adds a token-type embedding; a model without segments exports one all-zero type.
    Rule("embed.types.weight", ("bert.embeddings.token_type_embeddings.weight",), zeros=lambda cfg: (1, cfg.d_model)),
    *_module("embed.norm", "bert.embeddings.LayerNorm"),
    *_module("encoder.blocks.{i}.attn.wqkv", "bert.encoder.layer.{i}.attention.self.query",
             "bert.encoder.layer.{i}.attention.self.key", "bert.encoder.layer.{i}.attention.self.value",
             split=_qkv_rows),
    *_bert_layer("attn.wo", "attention.output.dense"),
    *_bert_layer("norm1", "attention.output.LayerNorm"),  # post-norm: after the attention residual
    *_bert_layer("mlp.up", "intermediate.dense"),
    *_bert_layer("mlp.down", "output.dense"),
    *_bert_layer("norm2", "output.LayerNorm"),
)
_BERT_POOLER = _module("pooler", "bert.pooler.dense")
BERT_PRETRAINING_RULES = (
    *_BERT_POOLER,
    *_module("mlm_head.dense", "cls.predictions.transform.dense"),
    *_module("mlm_head.norm", "cls.predictions.transform.LayerNorm"),
    Rule("mlm_head.out.weight", ("cls.predictions.decoder.weight",)),
    # transformers ties `decoder.bias` to `predictions.bias` in a tied model; an untied one computes with
    # `decoder.bias` (transformers 5 saves both), so that one is read first and both are written.
    Rule("mlm_head.out.bias", ("cls.predictions.decoder.bias",), also=("cls.predictions.bias",)),
    *_module("nsp_head", "cls.seq_relationship"),
)


def _bert_unsupported_export(cfg: ModelConfig) -> list[str]:
    problems = _mismatches(cfg, norm="layernorm", norm_position="post", pos="learned", mlp="standard")
    if not cfg.embed_norm:
        problems.append("embed_norm=False (BERT normalises the summed embeddings)")
    if cfg.n_kv_head != cfg.n_head:
        problems.append(f"n_kv_head={cfg.n_kv_head} (BERT has no grouped-query attention)")
    if cfg.head_dim * cfg.n_head != cfg.d_model:
        problems.append(f"head_dim={cfg.head_dim} (BERT needs d_model / n_head)")
    if cfg.attn_scale is not None:
        problems.append(f"attn_scale={cfg.attn_scale} (BERT scales attention by 1/sqrt(head_dim))")
    return problems


def _bert_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.d_ff,
        "hidden_act": _act_to_hf(cfg.activation, "gelu_new"),
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": max(cfg.type_vocab_size, 1),
        "layer_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "position_embedding_type": "absolute",  # transformers 4 reads it; 5 knows only absolute positions
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def _bert_unsupported_import(hf: dict[str, Any]) -> list[str]:
    problems = _flagged(hf, "is_decoder", "add_cross_attention")
    position = hf.get("position_embedding_type") or "absolute"
    if position != "absolute":
        problems.append(f"position_embedding_type={position} (lmforge's BERT has learned absolute positions)")
    act = hf.get("hidden_act", "gelu")
    if act not in ACT_FROM_HF:
        problems.append(f"hidden_act={act}")
    return problems


def _bert_from_hf(hf: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        family="bert", vocab_size=hf["vocab_size"], max_seq_len=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"], norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_position="post", mlp="standard", activation=ACT_FROM_HF[hf.get("hidden_act", "gelu")], pos="learned",
        type_vocab_size=hf.get("type_vocab_size", 2), embed_norm=True, bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), dropout=hf.get("hidden_dropout_prob", 0.1),
        init_std=hf.get("initializer_range", 0.02),
    )


BERT = Family(
    lmforge_family="bert", model_type="bert", backbone=BERT_RULES,
    heads={
        # Checkpoints of the base model or of one pretraining head import with the missing heads fresh.
        "lm": Head("BertForPreTraining", "AutoModelForPreTraining", BERT_PRETRAINING_RULES,
                   reads=("BertForMaskedLM", "BertModel", "BertForNextSentencePrediction"),
                   optional=("pooler.", "mlm_head.", "nsp_head.")),
        # [CLS] -> pooler (dense, tanh) -> dropout -> classifier
        "classify": Head("BertForSequenceClassification", "AutoModelForSequenceClassification",
                         (*_BERT_POOLER, *_module("classifier", "classifier")), config_to_hf=_labels_to_hf,
                         config_from_hf=_labels_from_hf, unsupported_import=_classify_unsupported_import),
        # start and end logits on every token; no pooler
        "span": Head("BertForQuestionAnswering", "AutoModelForQuestionAnswering", _module("qa_outputs", "qa_outputs"),
                     unsupported_import=_span_unsupported_import),
    },
    config_to_hf=_bert_to_hf, config_from_hf=_bert_from_hf,
    unsupported_export=_bert_unsupported_export, unsupported_import=_bert_unsupported_import,
    hf_prefix="bert.", hf_ignore=("embeddings.position_ids",), zero_missing_bias=True,
    hf_renames=((".LayerNorm.gamma", ".LayerNorm.weight"), (".LayerNorm.beta", ".LayerNorm.bias")),
)


# --- T5 (T5ForConditionalGeneration) -------------------------------------------------------------------------

def _gated(cfg: ModelConfig) -> bool:
    return cfg.mlp == "gated"


def _standard(cfg: ModelConfig) -> bool:
    return cfg.mlp != "gated"


def _kv_rows(cfg: ModelConfig) -> list[int]:
    return [cfg.n_kv_head * cfg.head_dim] * 2


def _t5_attention(ours: str, theirs: str) -> tuple[Rule, ...]:
    return (_weight(f"{ours}.attn.wqkv", f"{theirs}.q", f"{theirs}.k", f"{theirs}.v", split=_qkv_rows),
            _weight(f"{ours}.attn.wo", f"{theirs}.o"))


def _t5_mlp(ours: str, theirs: str) -> tuple[Rule, ...]:
    """T5 names its MLP by gating: `wi` (standard), or `wi_0` (the activated gate) and `wi_1` (the linear half)."""
    return (_weight(f"{ours}.gate", f"{theirs}.wi_0", when=_gated),
            _weight(f"{ours}.up", f"{theirs}.wi_1", when=_gated),
            _weight(f"{ours}.up", f"{theirs}.wi", when=_standard),
            _weight(f"{ours}.down", f"{theirs}.wo"))


# Encoder blocks are {i}, decoder blocks {j}. Only block 0 of each stack holds the relative-position table in
# Hugging Face; lmforge's stack owns it and adds it in every layer, which is what T5 does with block 0's output.
T5_RULES = (
    Rule("embed.tok.weight", ("shared.weight",)),
    _weight("encoder.rel_bias.bias", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"),
    _weight("encoder.blocks.{i}.norm1", "encoder.block.{i}.layer.0.layer_norm"),
    *_t5_attention("encoder.blocks.{i}", "encoder.block.{i}.layer.0.SelfAttention"),
    _weight("encoder.blocks.{i}.norm2", "encoder.block.{i}.layer.1.layer_norm"),
    *_t5_mlp("encoder.blocks.{i}.mlp", "encoder.block.{i}.layer.1.DenseReluDense"),
    _weight("encoder.norm_f", "encoder.final_layer_norm"),
    _weight("decoder.rel_bias.bias", "decoder.block.0.layer.0.SelfAttention.relative_attention_bias"),
    _weight("decoder.blocks.{j}.norm1", "decoder.block.{j}.layer.0.layer_norm"),
    *_t5_attention("decoder.blocks.{j}", "decoder.block.{j}.layer.0.SelfAttention"),
    _weight("decoder.blocks.{j}.norm_cross", "decoder.block.{j}.layer.1.layer_norm"),
    _weight("decoder.blocks.{j}.cross_attn.wq", "decoder.block.{j}.layer.1.EncDecAttention.q"),
    _weight("decoder.blocks.{j}.cross_attn.wkv", "decoder.block.{j}.layer.1.EncDecAttention.k",
            "decoder.block.{j}.layer.1.EncDecAttention.v", split=_kv_rows),
    _weight("decoder.blocks.{j}.cross_attn.wo", "decoder.block.{j}.layer.1.EncDecAttention.o"),
    _weight("decoder.blocks.{j}.norm2", "decoder.block.{j}.layer.2.layer_norm"),
    *_t5_mlp("decoder.blocks.{j}.mlp", "decoder.block.{j}.layer.2.DenseReluDense"),
    _weight("decoder.norm_f", "decoder.final_layer_norm"),
)


def _t5_unsupported_export(cfg: ModelConfig) -> list[str]:
    problems = _mismatches(cfg, norm="rmsnorm", norm_position="pre", pos="relative")
    if cfg.bias:
        problems.append("bias=True (T5 has no biases)")
    if cfg.attn_scale != 1.0:
        problems.append(f"attn_scale={cfg.attn_scale} (T5 leaves attention scores unscaled: needs 1.0)")
    if cfg.n_kv_head != cfg.n_head:
        problems.append(f"n_kv_head={cfg.n_kv_head} (T5 has no grouped-query attention)")
    if cfg.mlp == "gated" and cfg.activation == "gelu":
        problems.append("mlp=gated with activation=gelu (T5's gated-gelu is the tanh approximation: gelu_tanh)")
    if cfg.scale_decoder_output and not cfg.tie_embeddings:
        problems.append("scale_decoder_output=True with tie_embeddings=False (T5 scales only a tied output "
                        "projection)")
    if cfg.type_vocab_size:
        problems.append(f"type_vocab_size={cfg.type_vocab_size} (T5 has no token types)")
    if cfg.embed_norm:
        problems.append("embed_norm=True (T5 does not normalise embeddings)")
    return problems


def _t5_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.mlp == "gated":
        ff = "gated-gelu" if cfg.activation == "gelu_tanh" else f"gated-{cfg.activation}"
    else:
        ff = _act_to_hf(cfg.activation, "gelu_new")
    return {
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.head_dim,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.n_layer,
        "num_decoder_layers": cfg.n_decoder_layer,
        "num_heads": cfg.n_head,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "feed_forward_proj": ff,
        "layer_norm_epsilon": cfg.norm_eps,
        "dropout_rate": cfg.dropout,
        "initializer_factor": 1.0,
        "n_positions": cfg.max_seq_len,  # T5 has no position limit; older T5 configs carry this, lmforge reads it
        "is_encoder_decoder": True,
        # Older transformers (and other readers) scale the decoder output exactly when tie_word_embeddings is
        # true; transformers 5 reads scale_decoder_outputs. A tied lmforge model without the scaling is written
        # untied, with a copy of the embedding as lm_head: every reader then computes the same logits.
        "tie_word_embeddings": cfg.tie_embeddings and cfg.scale_decoder_output,
        "scale_decoder_outputs": cfg.scale_decoder_output,
    }


def _t5_activation(hf: dict[str, Any]) -> tuple[bool, str]:
    """(gated, Hugging Face activation name) from `feed_forward_proj`, as T5Config reads it."""
    ff = hf.get("feed_forward_proj", "relu")
    parts = ff.split("-")
    return parts[0] == "gated", "gelu_new" if ff == "gated-gelu" else parts[-1]


def _t5_unsupported_import(hf: dict[str, Any]) -> list[str]:
    ff = hf.get("feed_forward_proj", "relu")
    parts = ff.split("-")
    _, act = _t5_activation(hf)
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in ACT_FROM_HF:
        return [f"feed_forward_proj={ff}"]
    return []


def _t5_from_hf(hf: dict[str, Any]) -> ModelConfig:
    gated, act = _t5_activation(hf)
    tie = hf.get("tie_word_embeddings", True)
    return ModelConfig(
        family="t5", vocab_size=hf["vocab_size"], max_seq_len=hf.get("n_positions") or 512,
        n_layer=hf["num_layers"], n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
        n_head=hf["num_heads"], head_dim=hf["d_kv"], d_model=hf["d_model"], d_ff=hf["d_ff"], norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), norm_position="pre", mlp="gated" if gated else "standard",
        activation=ACT_FROM_HF[act], pos="relative", relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), attn_scale=1.0, bias=False,
        # transformers 5 writes scale_decoder_outputs; before it, a tied head meant a scaled one (T5 v1.0) and an
        # untied head an unscaled one (v1.1).
        tie_embeddings=tie, scale_decoder_output=hf.get("scale_decoder_outputs", tie),
        dropout=hf.get("dropout_rate", 0.1), init="t5",  # T5's initialisation, should the model be trained anew
    )


T5 = Family(
    lmforge_family="t5", model_type="t5", backbone=T5_RULES,
    heads={"lm": Head("T5ForConditionalGeneration", "AutoModelForSeq2SeqLM", _LM_HEAD, generates=True)},
    config_to_hf=_t5_to_hf, config_from_hf=_t5_from_hf,
    unsupported_export=_t5_unsupported_export, unsupported_import=_t5_unsupported_import,
    layers=lambda cfg: {"i": cfg.n_layer, "j": cfg.n_decoder_layer},
    # transformers' own copies of the shared embedding, and a table some old checkpoints carry but never use.
    hf_ignore=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
               "EncDecAttention.relative_attention_bias.weight"),
)


FAMILIES: tuple[Family, ...] = (GPT2, LLAMA, BERT, T5)
