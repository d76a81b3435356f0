"""Looking inside a model: attention maps, per-token surprise and token attributions (`lmforge explain`).

- `attention`: capture the real attention weights of every layer from outside the model, and plot them.
- `surprise`: -log p of every token of a text, as an HTML page.
- `attribution`: integrated gradients and gradient x input on the input embeddings, for any
  `logits_fn(embeddings) -> logits`.
- `report.explain(cfg)`: all of it for a checkpoint and a text, the library function behind the CLI verb.
"""

from __future__ import annotations

from lmforge.explain.attention import AttentionMap, attention_weights, capture_attention, plot_attention
from lmforge.explain.attribution import (
    Attribution,
    attribute,
    gradient_x_input,
    integrated_gradients,
    model_logits_fn,
    substitute_embeddings,
)
from lmforge.explain.inputs import Encoded, encode_text
from lmforge.explain.report import ExplainConfig, ExplainResult, explain
from lmforge.explain.surprise import Surprise, token_surprise

__all__ = [
    "AttentionMap", "Attribution", "Encoded", "ExplainConfig", "ExplainResult", "Surprise", "attention_weights",
    "attribute", "capture_attention", "encode_text", "explain", "gradient_x_input", "integrated_gradients",
    "model_logits_fn", "plot_attention", "substitute_embeddings", "token_surprise",
]
