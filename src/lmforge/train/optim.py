"""Optimizers (AdamW, or Muon for the hidden matrices with AdamW for the rest) and learning-rate schedules as pure
functions of the step."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lmforge.models.heads import HEAD_MODULES
from lmforge.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, leave_out: list[nn.Parameter] = ()) -> list[dict]:
    """Split trainable parameters by rule (nanoGPT): matrices and embeddings decay; vectors (biases, norms) don't.

    `named_parameters` yields a tied weight once, so a shared embedding / output matrix is in one group only.
    `leave_out`: parameters another optimizer updates (Muon's matrices).
    """
    skip = {id(p) for p in leave_out}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights of the Linear layers inside the backbone: what Muon orthogonalises.

    By rule, not by name: the weight of an `nn.Linear` that is neither part of a head (`HEAD_MODULES`, the output
    projection included) nor an embedding (a tied output projection is the embedding). Muon's authors keep
    embeddings, the output head and every vector on AdamW (Jordan et al., "Muon", 2024).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    found, seen = [], set()
    for name, module in model.named_modules():
        top = name.split(".")[0]
        if isinstance(module, nn.Linear) and top not in HEAD_MODULES and module.weight.requires_grad:
            w = module.weight
            if id(w) not in embeddings and id(w) not in seen:
                seen.add(id(w))
                found.append(w)
    return found


class MuonWithAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` on the hidden matrices and `torch.optim.AdamW` on every other parameter, as one optimizer.

    The trainer, the grad scaler, the LR scheduler and the checkpoints (`get_optimizer_state_dict`, keyed by
    parameter names) all see one `Optimizer`: its param groups and state *are* the two inner optimizers' (the same
    objects), Muon's groups first. Muon (Jordan et al. 2024: momentum, then its Newton-Schulz orthogonalisation,
    github.com/KellerJordan/Muon) takes 2-D parameters only, hence the pair.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon: dict[str, Any],
                 adamw: dict[str, Any]) -> None:
        self.muon = torch.optim.Muon(muon_groups, **muon)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw)
        self.n_muon_groups = len(self.muon.param_groups)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})
        self._link()

    def _link(self) -> None:
        """Make the inner optimizers work on this one's group dicts and state (after init and after loading)."""
        self.muon.param_groups = self.param_groups[: self.n_muon_groups]
        self.adamw.param_groups = self.param_groups[self.n_muon_groups:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.param_groups and self.state by new objects
        self._link()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused CUDA kernel does the whole AdamW update in one launch; elsewhere the default (foreach) path is used.
    adamw = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=device.type == "cuda")
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **adamw)
    matrices = hidden_matrices(model)
    muon_groups = [{"params": matrices, "lr": cfg.muon_lr, "weight_decay": cfg.muon_weight_decay}]
    return MuonWithAdamW(muon_groups, param_groups(model, cfg.weight_decay, leave_out=matrices),
                         muon=dict(lr=cfg.muon_lr, momentum=cfg.muon_momentum, nesterov=True), adamw=adamw)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then the schedule."""
    warmup = cfg.warmup_steps or 0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    floor = cfg.min_lr_ratio
    after = step - warmup
    progress = min(1.0, after / max(1, total_steps - warmup))
    if cfg.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    if cfg.schedule == "step":
        return max(floor, cfg.gamma ** (after // cfg.step_size))
    if cfg.schedule == "exponential":
        return max(floor, cfg.gamma ** (after / cfg.step_size))
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":  # warmup-stable-decay (Hu et al., "MiniCPM", 2024): flat, then a linear cool-down
        decay_steps = max(1, round(cfg.decay_fraction * total_steps))
        into_decay = step - (total_steps - decay_steps)
        return 1.0 if into_decay < 0 else 1.0 - (1.0 - floor) * min(1.0, (into_decay + 1) / decay_steps)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR over `lr_factor`; its state (the step count) saves and restores with the checkpoint.

    A closure, not a callable object, so LambdaLR does not pickle the schedule's parameters into its state: a
    resumed run with more `--steps` follows the new schedule instead of the old one.
    """
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
