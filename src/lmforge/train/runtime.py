"""Where and how a run executes: device, precision, compile, and (later) the process group.

Everything the loop needs to know about devices and ranks is here, so that multi-GPU training is a local change:
`setup_runtime` would read RANK / WORLD_SIZE / LOCAL_RANK (torchrun) and init the process group, `parallelize`
would wrap the model (DDP or FSDP2, activation checkpointing) around the compile already done here, and
`reduce_sum` already all-reduces when a process group is up. The loop logs and saves only where `is_main`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmforge.errors import UserError


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    use_grad_scaler: bool  # fp16 needs loss scaling; bf16 and fp32 don't
    compile: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.use_grad_scaler)

    def no_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step (DDP)."""
        if sync or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum additive statistics over ranks (identity on one process)."""
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def setup_runtime(device: str = "auto", precision: str = "auto", compile: bool | None = None) -> Runtime:
    from lmforge.device import pick_device

    dev = pick_device(device)
    cuda = dev.type == "cuda"
    if precision == "auto":
        # bf16 needs Ampere or newer; older GPUs get fp16 with loss scaling. CPU and MPS train in fp32.
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp16" and dev.type == "cpu":
        raise UserError("fp16 training is not supported on the CPU", fix="use --precision bf16 or fp32")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError(f"bf16 is not supported on {torch.cuda.get_device_name(dev)}",
                        fix="use --precision fp16 (with loss scaling) or fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (the fp32 parts of autocast)
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=dev, autocast_dtype=dtype, use_grad_scaler=precision == "fp16",
                   compile=cuda if compile is None else compile)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """All global RNG states (python, numpy, torch, CUDA), for exact resume.

    Plain Python values and tensors only, so the checkpoint loads with `torch.load(weights_only=True)`.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss,
                                                    gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def parallelize(model: nn.Module, rt: Runtime) -> nn.Module:
    """The module the training step calls: compiled (and, later, wrapped for data parallelism) from outside.

    The returned module shares parameters with `model`; checkpoints and evaluation use `model` itself.
    """
    if rt.compile:
        model = torch.compile(model)
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
