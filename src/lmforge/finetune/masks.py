"""Keeping a pruned model's zeros through a fine-tune, from outside the model: each linear weight that holds exact
zeros gets a gradient hook (`Tensor.register_hook`) that multiplies its gradient by the mask of the weights kept.

Why a gradient hook and not re-zeroing after each step or `torch.nn.utils.parametrize`: a zero gradient keeps a zero
weight exactly zero under AdamW and SGD (the moments of a weight whose gradient is always zero stay zero, decoupled
weight decay scales zero to zero, clipping scales the gradient), and the optimizer's moments never see the pruned
weights, so the kept ones train as if the others were absent; a parametrization would rename the parameters in
every checkpoint (`weight` -> `parametrizations.weight.original`). Muon's orthogonalised update is not masked by a
masked gradient: `TrainConfig` refuses the pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class KeptZeros:
    layers: int  # linear layers with at least one zero weight (each hooked)
    zeros: int  # weights held at zero, over all of them


def keep_zeros(model: nn.Module) -> KeptZeros:
    """Hook every linear weight with exact zeros so that those stay zero while the rest trains."""
    layers = zeros = 0
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, nn.Linear) or id(module.weight) in seen or not module.weight.requires_grad:
            continue
        seen.add(id(module.weight))  # a tied weight once
        kept = module.weight.detach() != 0
        pruned = int(kept.numel() - kept.sum())
        if pruned == 0:
            continue
        module.weight.register_hook(_masked_gradient(kept.to(module.weight.dtype)))
        layers, zeros = layers + 1, zeros + pruned
    return KeptZeros(layers, zeros)


def _masked_gradient(kept: Tensor) -> Callable[[Tensor], Tensor]:
    """`kept` is made once in the weight's dtype and device, as its gradient is, so a step casts nothing."""
    def hook(grad: Tensor) -> Tensor:
        return grad * kept
    return hook


__all__ = ["KeptZeros", "keep_zeros"]
