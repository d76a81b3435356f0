"""Pruning a model's linear layers from outside it: magnitude (unstructured, global or per layer) and 2:4.

    from lmforge.compress.prune import PruneSpec, prune_model

    masks = prune_model(model, PruneSpec.parse("0.5"))             # the smallest 50% of all linear weights
    masks = prune_model(model, PruneSpec.parse("0.5", "layer"))    # 50% of each layer
    masks = prune_model(model, PruneSpec.parse("2:4"))             # 2 of every 4 consecutive inputs per row

The same layers as quantisation (every `nn.Linear` but a tied output projection, which is the embedding). Magnitude
pruning uses `torch.nn.utils.prune` (L1 = magnitude, `global_unstructured` for one threshold over every layer) and
makes it permanent; 2:4 (NVIDIA's semi-structured sparsity: in each run of 4 weights of a row, the 2 largest stay)
has no method there and is the few lines of `_two_of_four`. The pruned weights are zeros in an ordinary dense
checkpoint: smaller only once compressed or run on sparse kernels (`torch.sparse.to_sparse_semi_structured` is
CUDA-only), which docs/compression.md says plainly. `masks` (True = kept) say which; a recovery fine-tune keeps
the zeros with `--finetune.keep-zeros` (`lmforge.finetune.masks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from lmforge.errors import UserError
from lmforge.models.io import tied_names

SCOPES = ("global", "layer")
TWO_FOUR = "2:4"


@dataclass(frozen=True)
class PruneSpec:
    sparsity: float | None  # fraction of the weights set to zero; None for 2:4
    scope: str = "global"  # magnitude: one threshold over all layers, or the same fraction in each

    @classmethod
    def parse(cls, level: str, scope: str = "global") -> PruneSpec:
        """"0.5" (a sparsity in [0, 1)) or "2:4"; one line for anything else."""
        if scope not in SCOPES:
            raise UserError(f"pruning scope '{scope}' is unknown", fix="pass --scope global or --scope layer")
        if level.strip() == TWO_FOUR:
            return cls(None, scope)
        try:
            sparsity = float(level)
        except ValueError:
            raise UserError(f"sparsity '{level}' is not a number or 2:4",
                            fix="pass a fraction in [0, 1), e.g. 0.5, or 2:4") from None
        if not 0 <= sparsity < 1:
            raise UserError(f"sparsity {level} is outside [0, 1): pruning every weight leaves no model",
                            fix="pass a fraction in [0, 1), e.g. 0.5, or 2:4")
        return cls(sparsity, scope)

    @property
    def name(self) -> str:
        if self.sparsity is None:
            return TWO_FOUR
        return f"{self.sparsity:.0%}" + ("" if self.scope == "global" else " per layer")


def prunable_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Name -> linear layer: every one but a layer whose weight is tied to another tensor."""
    tied = {name.removesuffix(".weight") for name in tied_names(model)}
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in tied}


def _two_of_four(weight: Tensor) -> Tensor:
    """Mask keeping the 2 largest-magnitude weights of every 4 consecutive inputs of each row."""
    out_f, in_f = weight.shape
    groups = weight.detach().abs().reshape(out_f, in_f // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).reshape(out_f, in_f)


def prune_model(model: nn.Module, spec: PruneSpec) -> dict[str, Tensor]:
    """Zero `model`'s smallest linear weights in place as `spec` says; returns name -> mask (True = kept)."""
    layers = prunable_layers(model)
    if not layers:
        raise UserError("the model has no linear layers to prune", fix="prune a Transformer checkpoint")
    if spec.sparsity is None:
        uneven = [n for n, m in layers.items() if m.in_features % 4]
        if uneven:
            raise UserError(f"2:4 pruning needs input widths divisible by 4; {uneven[0]} has "
                            f"{layers[uneven[0]].in_features}", fix="use magnitude pruning (a sparsity) instead")
        masks = {name: _two_of_four(m.weight) for name, m in layers.items()}
        with torch.no_grad():
            for name, m in layers.items():
                m.weight.mul_(masks[name])
        return masks
    if spec.sparsity > 0:
        if spec.scope == "global":
            prune.global_unstructured([(m, "weight") for m in layers.values()], pruning_method=prune.L1Unstructured,
                                      amount=spec.sparsity)
        else:
            for m in layers.values():
                prune.l1_unstructured(m, "weight", amount=spec.sparsity)
    masks = {name: getattr(m, "weight_mask", torch.ones_like(m.weight)).bool() for name, m in layers.items()}
    for m in layers.values():
        if prune.is_pruned(m):
            prune.remove(m, "weight")  # weight = weight_orig * mask, as a plain parameter again
    return masks


def sparsity(model: nn.Module) -> float:
    """Fraction of the prunable linear weights that are exactly zero."""
    layers = prunable_layers(model).values()
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / max(sum(m.weight.numel() for m in layers), 1)


__all__ = ["SCOPES", "TWO_FOUR", "PruneSpec", "prunable_layers", "prune_model", "sparsity"]
