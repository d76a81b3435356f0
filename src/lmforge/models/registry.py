"""The model registry: every family declared once, with its kind, its class, its heads and what it can do.

Code outside `models/` (and `interop/`, whose tables are per family by nature) never compares family names: it asks
what a model *can do* (`can(cfg, GENERATE)`, `require(cfg, CLASSIFY, ...)`) or what *kind* it is (`kind_of(cfg)`),
so adding a family is one `Family` entry here, a config preset, and (for Hugging Face interop) one table in
`interop/families.py`. This mirrors torchtitan's `ModelSpec` registry: a small value per family, no `if` chains.

Capabilities follow from the kind and the head a config asks for (`ModelConfig.head`):

| kind            | head `lm`                         | head `classify` | head `span`    |
|-----------------|-----------------------------------|-----------------|----------------|
| decoder         | generate, score                   | classify        | -              |
| encoder         | fill_mask, embed                  | classify        | extract_span   |
| encoder_decoder | generate                          | -               | -              |
| recurrent       | score                             | classify        | -              |

The n-gram baseline (`models.ngram`) is a kind too: it scores text, counted rather than trained, and has no
`ModelConfig` family.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from lmforge.models.config import ModelConfig


class Kind(StrEnum):
    DECODER = "decoder"  # causal Transformer: idx (B, T) -> next-token logits (B, T, V)
    ENCODER = "encoder"  # bidirectional Transformer: hidden states for every token, read by heads
    ENCODER_DECODER = "encoder_decoder"  # source -> encoder; target decoded with cross-attention
    RECURRENT = "recurrent"  # LSTM baseline, same next-token interface as a decoder
    NGRAM = "ngram"  # counted n-gram baseline (numpy), scores text


# What a consumer asks of a model.
GENERATE = "generate"  # write text token by token (lmforge generate, the inference engine, the server)
SCORE = "score"  # next-token log-likelihood of a text (perplexity, bits/byte)
FILL_MASK = "fill_mask"  # predictions for masked tokens (the MLM head)
EMBED = "embed"  # one vector per text (mean-pooled encoder states)
CLASSIFY = "classify"  # one label per text (the sequence-classification head)
EXTRACT_SPAN = "extract_span"  # start/end logits over a text (the extractive-QA span head)

HEADS = ("lm", "classify", "span")
# How messages say each capability: "perplexity needs a model that can <phrase>".
PHRASES = {GENERATE: "generate text", SCORE: "predict the next token (a causal language model)",
           FILL_MASK: "fill in masked tokens", EMBED: "embed texts (an encoder)", CLASSIFY: "classify texts",
           EXTRACT_SPAN: "extract answer spans"}

_LM_CAPABILITIES: dict[Kind, frozenset[str]] = {
    Kind.DECODER: frozenset({GENERATE, SCORE}),
    Kind.ENCODER: frozenset({FILL_MASK, EMBED}),
    Kind.ENCODER_DECODER: frozenset({GENERATE}),
    Kind.RECURRENT: frozenset({SCORE}),
    Kind.NGRAM: frozenset({SCORE}),
}
_HEAD_CAPABILITIES = {"classify": frozenset({CLASSIFY}), "span": frozenset({EXTRACT_SPAN})}


@dataclass(frozen=True)
class Family:
    """One model family: its kind, where its class lives, the heads it can carry, and a preset to suggest."""

    name: str  # ModelConfig.family
    kind: Kind
    module: str  # module of the model class inside lmforge.models (imported when a model is built)
    cls: str  # the class built; it reads `cfg.head` and carries the heads it names
    heads: tuple[str, ...]
    preset: str  # the smallest preset of the family, for messages
    summary: str
    head_classes: Mapping[str, str] = field(default_factory=dict)  # another class for some head

    def model_class(self, head: str = "lm") -> type[nn.Module]:
        name = self.head_classes.get(head, self.cls)
        return getattr(importlib.import_module(f"lmforge.models.{self.module}"), name)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gpt", Kind.DECODER, "decoder", "DecoderLM", ("lm", "classify"), "tiny",
           "GPT-2-style decoder (LayerNorm, GELU, learned positions)"),
    Family("llama", Kind.DECODER, "decoder", "DecoderLM", ("lm", "classify"), "llama-tiny",
           "Llama-style decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention)"),
    Family("bert", Kind.ENCODER, "encoder", "EncoderModel", ("lm", "classify", "span"), "bert-tiny",
           "BERT-style encoder (segments, pooler; MLM + NSP pretraining heads)"),
    Family("t5", Kind.ENCODER_DECODER, "encoder_decoder", "EncoderDecoderLM", ("lm",), "t5-tiny",
           "T5-style encoder-decoder (relative positions, cross-attention)"),
    Family("lstm", Kind.RECURRENT, "lstm", "LSTMLM", ("lm", "classify"), "lstm-tiny",
           "LSTM recurrent baseline", head_classes={"classify": "LSTMClassifier"}),
)}


def family(name_or_cfg: str | ModelConfig) -> Family:
    name = name_or_cfg if isinstance(name_or_cfg, str) else name_or_cfg.family
    if name not in FAMILIES:
        raise UserError(f"unknown model family '{name}'", fix=f"choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def kind_of(cfg: ModelConfig) -> Kind:
    return family(cfg).kind


def capabilities(cfg: ModelConfig) -> frozenset[str]:
    """What a model of `cfg` can do: its kind's language-model abilities, or its task head's."""
    if cfg.head == "lm":
        return _LM_CAPABILITIES[kind_of(cfg)]
    return _HEAD_CAPABILITIES[cfg.head]


def can(cfg: ModelConfig, capability: str) -> bool:
    return capability in capabilities(cfg)


def describe(cfg: ModelConfig) -> str:
    """'a bert encoder with a classify head', for messages."""
    noun = {Kind.ENCODER_DECODER: "encoder-decoder", Kind.RECURRENT: "recurrent model"}.get(kind_of(cfg),
                                                                                            kind_of(cfg).value)
    return f"a {cfg.family} {noun}" + ("" if cfg.head == "lm" else f" with a {cfg.head} head")


def text_frame(cfg: ModelConfig, special_ids: Mapping[str, int]) -> tuple[list[int], list[int]]:
    """Token ids put before and after a text so that a model of `cfg` reads it as it was pretrained on text.

    Next-token models (decoders, LSTMs) read it after `<eos>` (documents follow an `<eos>` in the training stream);
    encoders as `<cls> text <sep>` when the tokenizer has both; an encoder-decoder's encoder reads the bare text.
    The one framing of training (classification), explanation and, later, serving.
    """
    kind = kind_of(cfg)
    if kind in (Kind.DECODER, Kind.RECURRENT) and "eos" in special_ids:
        return [special_ids["eos"]], []
    if kind == Kind.ENCODER and "cls" in special_ids and "sep" in special_ids:
        return [special_ids["cls"]], [special_ids["sep"]]
    return [], []


def families_that(capability: str) -> list[Family]:
    """Families some head of which gives `capability`."""
    out = []
    for f in FAMILIES.values():
        if capability in _LM_CAPABILITIES[f.kind] or any(capability in _HEAD_CAPABILITIES.get(h, ()) for h in f.heads):
            out.append(f)
    return out


def require(cfg: ModelConfig, capability: str, *, needed_for: str, where: str | Path | None = None,
            fix: str | None = None) -> None:
    """One line when a model of `cfg` cannot do `capability` (e.g. `needed_for="perplexity"`)."""
    if can(cfg, capability):
        return
    able = families_that(capability)
    default_fix = f"use a checkpoint of family {', '.join(f.name for f in able)}" if able else None
    raise UserError(f"{needed_for} needs a model that can {PHRASES[capability]}; this checkpoint is "
                    f"{describe(cfg)}", where=where, fix=fix or default_fix)


def require_kind(cfg: ModelConfig, kinds: Iterable[Kind], *, user: str, fix: str | None = None) -> None:
    """One line when a model's kind is not one `user` (e.g. "objective 'mlm'") works with."""
    kinds = tuple(kinds)
    if kind_of(cfg) in kinds:
        return
    names = " or ".join(k.value.replace("_", "-") for k in kinds)
    presets = ", ".join(f.preset for f in FAMILIES.values() if f.kind in kinds)
    raise UserError(f"{user} trains {names} models, but the model is {describe(cfg)}",
                    fix=fix or f"pass --preset {presets.split(', ')[0]} (or another preset of that kind: {presets})")


__all__ = ["CLASSIFY", "EMBED", "EXTRACT_SPAN", "FAMILIES", "FILL_MASK", "GENERATE", "HEADS", "SCORE", "Family",
           "Kind", "can", "capabilities", "describe", "families_that", "family", "kind_of", "require", "require_kind",
           "text_frame"]
