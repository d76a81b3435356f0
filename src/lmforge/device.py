"""Choosing the device: `auto` takes CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

from lmforge.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = preference.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible", fix="use --device cpu or auto")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' was asked for but Apple MPS is not available", fix="use --device cpu or auto")
    if kind not in DEVICES:
        raise UserError(f"unknown device '{preference}'", fix=f"choose one of {', '.join(DEVICES)}")
    return torch.device(preference)
