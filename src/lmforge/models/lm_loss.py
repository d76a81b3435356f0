"""The language-model head and its cross-entropy in one step, a chunk of rows at a time (the chunked loss of
liger-kernel's `FusedLinearCrossEntropy` and torchtitan's loss-parallel idea, written for any device in PyTorch).

The plain path (`lm_head(h)` then `F.cross_entropy`) writes the logits of the whole batch (N x V floats), keeps
them for the backward pass, and passes over them again four times: log-softmax, the loss gather, the scatter of
its gradient and the log-softmax backward. Here each chunk of rows computes its logits, its loss and the gradient
of the loss with respect to them in the forward pass, then folds that gradient straight into the gradients of the
hidden states and the head weight (two matrix products) and drops the logits: no (N, V) tensor lives past one
chunk, and the backward pass only scales the two gradients by the upstream one. The matrix products are the
plain path's three (logits, grad of h, grad of W); what goes is the memory traffic and the peak memory.

PyTorch has no fused linear + cross-entropy (torch.nn.functional.linear_cross_entropy is not in torch 2.13) and
liger-kernel's is Triton-only (CUDA), so this is written here; its loss and gradients equal the plain path's to
float32 rounding (tests/models/test_lm_loss.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # the cross-entropy default: targets with this id (padding) are not predicted
# Where the chunked path pays (benchmarks/head_loss_cpu.py, 2026-12-02, one thread, process CPU time): at a
# vocabulary of 8,192 the head is about half of a 4 x 256 step and the chunks save 2-4 % of the step (18 % of the
# head + loss alone); the fast recipe's soft-capped head at 4,096 makes the step 1.26x faster; at a character
# vocabulary (65) the logits are small and it saved nothing (-8 % to +5 % across runs), so smaller vocabularies
# take the plain path.
CHUNKED_FROM_VOCAB = 2048
CHUNK_ELEMENTS = 1 << 21  # logits per chunk (8 MiB of float32): rows = this // vocab, at least 32


def _chunk_rows(vocab_size: int) -> int:
    return max(32, CHUNK_ELEMENTS // vocab_size)


def _chunk_logits(h: Tensor, weight: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """Float32 logits of the rows `h` (n, C), soft-capped; with the cap, also tanh(raw / cap) for the gradient."""
    z = (h @ weight.t()).float()
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _chunk_nll(z: Tensor, targets: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(summed NLL of the valid rows, log-sum-exp of every row) for float32 logits z (n, V)."""
    lse = torch.logsumexp(z, dim=-1)
    picked = z.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(valid, lse - picked, 0.0).sum(), lse


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
        rows = _chunk_rows(weight.shape[0])
        grad_h = torch.empty_like(h)
        # The head's gradient sums over chunks: in float32 whatever the weight's dtype (bf16 under FSDP2's policy).
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], rows):
            hc, tc = h[s:s + rows], targets[s:s + rows]
            valid = tc != IGNORE_INDEX
            z, t = _chunk_logits(hc, weight, softcap)
            loss, lse = _chunk_nll(z, tc, valid)
            total += loss
            # d loss / d logits = softmax - one_hot(target), zero on ignored rows; in place over z.
            g = z.sub_(lse[:, None]).exp_()
            g.scatter_add_(1, tc.clamp(min=0)[:, None], torch.full_like(lse, -1.0)[:, None])
            g.mul_(valid[:, None])
            if t is not None:  # through cap * tanh(raw / cap): times 1 - tanh^2
                g.mul_(1.0 - t * t)
            g = g.to(h.dtype)
            grad_h[s:s + rows] = g @ weight
            if grad_w is not None and hc.dtype == torch.float32:
                grad_w.addmm_(g.t(), hc)
            elif grad_w is not None:
                grad_w += g.t() @ hc
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, None if grad_w is None else grad_w * grad_out, None, None


def next_token_nll(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy of `targets` (B, T) under `logits` (B, T, V), and how many targets were predicted.

    Summed, not averaged, so that totals over many batches give the exact token-weighted mean over a split; the
    softmax in float32 whatever the autocast dtype. Training, evaluation and `lmforge eval` all score with this
    (through `eval.metrics`), or with `chunked_lm_loss`, its equal without the logits.
    """
    loss_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum",
                               ignore_index=IGNORE_INDEX)
    return loss_sum, (targets != IGNORE_INDEX).sum()


def chunked_lm_loss(h: Tensor, weight: Tensor, targets: Tensor, softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy of `targets` (B, T) under the head `weight` (V, C) applied to hidden states
    `h` (B, T, C), optionally soft-capped (`softcap * tanh(logits / softcap)`), and how many targets were predicted:
    what `next_token_nll(lm_head(h), targets)` gives, without the (B, T, V) logits."""
    h2, t2 = h.flatten(0, 1), targets.flatten()
    count = (t2 != IGNORE_INDEX).sum()
    if torch.is_grad_enabled() and (h2.requires_grad or weight.requires_grad):
        return _ChunkedHeadLoss.apply(h2, weight, t2, softcap), count
    total = torch.zeros((), dtype=torch.float32, device=h.device)  # evaluation: the loss alone, chunk by chunk
    rows = _chunk_rows(weight.shape[0])
    for s in range(0, h2.shape[0], rows):
        tc = t2[s:s + rows]
        total += _chunk_nll(_chunk_logits(h2[s:s + rows], weight, softcap)[0], tc, tc != IGNORE_INDEX)[0]
    return total, count
