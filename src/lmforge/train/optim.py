"""AdamW with decay / no-decay groups, and learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lmforge.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters by rule (nanoGPT): matrices and embeddings decay; vectors (biases, norms) don't.

    `named_parameters` yields a tied weight once, so a shared embedding / output matrix is in one group only.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    # The fused CUDA kernel does the whole update in one launch; elsewhere the default (foreach) path is used.
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, fused=device.type == "cuda")


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
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR over `lr_factor`; its state (the step count) saves and restores with the checkpoint.

    A closure, not a callable object, so LambdaLR does not pickle the schedule's parameters into its state: a
    resumed run with more `--steps` follows the new schedule instead of the old one.
    """
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
