"""The runtime of one process: device, precision (autocast), compile and rank, shared by training and evaluation.

`local_runtime` is the one-process runtime evaluation and sampling use: it never joins a process group, even under
`torchrun`. Training joins one through `lmforge.train.runtime.setup_runtime`, which builds the same `Runtime`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lmforge import parallel as lparallel
from lmforge.errors import UserError
from lmforge.parallel.parallelize import ParallelConfig, resolve_strategy

# Compute precisions of a run (autocast dtype; fp16 with loss scaling). FSDP's parameter dtype has its own list,
# without fp16: `lmforge.parallel.parallelize.FSDP_PRECISIONS`.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    use_grad_scaler: bool  # fp16 needs loss scaling; bf16 and fp32 don't
    compile: bool
    rank: int = 0
    world_size: int = 1
    strategy: str = "none"  # data parallelism: none, ddp or fsdp (`ParallelConfig.strategy`, resolved)

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
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last micro-batch of a step."""
        return lparallel.no_grad_sync(model, enabled=not sync)

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


def local_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """A one-process runtime for evaluation and sampling: eager, and never joins a process group, even when
    started by `torchrun` (scoring a checkpoint is one process's job; nothing to `teardown`)."""
    from lmforge.parallel.env import resolve_device

    env = lparallel.DistEnv(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    return build_runtime(env, precision, False, ParallelConfig())


def build_runtime(env: lparallel.DistEnv, precision: str, compile: bool | None, parallel: ParallelConfig) -> Runtime:
    """The runtime of process `env`: precision resolved for its device, strategy for its world size."""
    dev = env.device
    cuda = dev.type == "cuda"
    if precision == "auto":
        # bf16 needs Ampere or newer; older GPUs get fp16 with loss scaling. CPU and MPS train in fp32.
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp16" and dev.type == "cpu":
        raise UserError("fp16 training is not supported on the CPU", fix="use --precision bf16 or fp32")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError(f"bf16 is not supported on {torch.cuda.get_device_name(dev)}",
                        fix="use --precision fp16 (with loss scaling) or fp32")
    strategy = resolve_strategy(parallel, env)
    if strategy == "fsdp" and precision == "fp16":
        # torch.amp.GradScaler finds overflows per process; with sharded gradients the ranks could disagree.
        raise UserError("fp16 loss scaling does not work with sharded gradients (parallel.strategy fsdp)",
                        fix="use --precision bf16 (Ampere GPUs or newer) or fp32, or --parallel.strategy ddp")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (the fp32 parts of autocast)
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=dev, autocast_dtype=dtype, use_grad_scaler=precision == "fp16",
                   compile=cuda if compile is None else compile, rank=env.rank, world_size=env.world_size,
                   strategy=strategy)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
