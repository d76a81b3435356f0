"""Sampling: small pure functions over a batch of next-token logits (B, V).

No host synchronisation in the sample itself (the exponential-race trick replaces `torch.multinomial`), so a
decode step can later be captured by `torch.compile` / CUDA graphs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lmforge.config import Config, field


@dataclass
class SamplingConfig(Config):
    temperature: float = field(0.8, "softmax temperature; 0 means greedy (argmax)", min=0)
    top_k: int = field(0, "keep only the k most likely tokens (0 = off)", min=0)
    top_p: float = field(1.0, "nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)",
                         gt=0, max=1)
    min_p: float = field(0.0, "drop tokens less likely than min_p times the most likely one (0 = off)",
                         min=0, max=1)
    repetition_penalty: float = field(1.0, "penalise tokens already seen: positive logits / p, negative * p (1 = off)",
                                      gt=0)


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty on tokens marked in `seen` (B, V) bool."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> Tensor:
    """Set to -inf every logit outside the top-k / nucleus / min-p sets (each optional)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the most likely token always stays).
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: Tensor, cfg: SamplingConfig, seen: Tensor | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Next token ids (B,) from logits (B, V)."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.temperature <= 0.0:
        return logits.argmax(-1)
    logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
    probs = logits.softmax(-1)
    # argmax(p / E) with E ~ Exp(1) draws from p (the "exponential race"), without a device->host sync.
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(-1)
