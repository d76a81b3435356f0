"""Pure metric functions shared by training objectives and evaluation: one definition of each loss and score.

Summed, not averaged, where totals over batches make the exact token-weighted mean over a split.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # the cross-entropy default: targets with this id (padding) are not predicted


def next_token_nll(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy of `targets` (B, T) under `logits` (B, T, V), and how many targets were predicted.

    Summed, not averaged, so that totals over many batches give the exact token-weighted mean over a split; the
    softmax in float32 whatever the autocast dtype. Training, evaluation and `lmforge eval` all score with this.
    """
    loss_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum",
                               ignore_index=IGNORE_INDEX)
    return loss_sum, (targets != IGNORE_INDEX).sum()


def lm_metrics(loss: float, bytes_per_token: float | None) -> dict[str, float | None]:
    """{loss, ppl, bpb} from the mean loss in nats per token; bpb None when the bytes per token are unknown."""
    # bits per byte = (nats per token / ln 2) * (tokens / bytes): comparable across tokenizers.
    bpb = loss / math.log(2) / bytes_per_token if bytes_per_token else None
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": bpb}
