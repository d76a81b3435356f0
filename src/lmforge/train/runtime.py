"""Where and how a run executes: device, precision, compile, and the process group (`lmforge.parallel`).

Everything the loop needs to know about devices and ranks is here. `setup_runtime` joins the process group when
the run was started by `torchrun` (and is one process otherwise), `parallelize` applies activation checkpointing,
compilation and DDP / FSDP2 to the model from outside, `no_sync` and `reduce_sum` are no-ops on one process. The
loop logs and writes human-facing files only where `is_main`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmforge import parallel as lparallel
from lmforge.errors import UserError
from lmforge.parallel.parallelize import ParallelConfig, resolve_strategy


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


def setup_runtime(device: str = "auto", precision: str = "auto", compile: bool | None = None,
                  parallel: ParallelConfig | None = None) -> Runtime:
    """The run's runtime; joins the process group when started by `torchrun` (leave it with `teardown`)."""
    env = lparallel.setup(device)
    try:
        return _runtime(env, precision, compile, parallel or ParallelConfig())
    except BaseException:
        lparallel.teardown(env, clean=False)
        raise


def local_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """A one-process runtime for evaluation and sampling: eager, and never joins a process group, even when
    started by `torchrun` (scoring a checkpoint is one process's job; nothing to `teardown`)."""
    from lmforge.parallel.env import resolve_device

    return _runtime(lparallel.DistEnv(rank=0, world_size=1, local_rank=0, device=resolve_device(device)), precision,
                    False, ParallelConfig())


def _runtime(env: lparallel.DistEnv, precision: str, compile: bool | None, parallel: ParallelConfig) -> Runtime:
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


def teardown(rt: Runtime, clean: bool = True) -> None:
    """Leave the process group `setup_runtime` joined (no-op on one process); `clean=False` after an error."""
    lparallel.teardown(rt, clean=clean)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def seed_rank(seed: int, rt: Runtime) -> None:
    """Give each rank but the first its own global RNG streams (dropout), once every rank has built the model.

    All ranks build the model from `seed` (DDP and FSDP also broadcast rank 0's weights); after that, ranks
    sharing one stream would draw the same dropout masks for different rows. Rank 0 keeps its stream, so a
    single-process run is unchanged.
    """
    if rt.rank:
        seed_everything(int(np.random.SeedSequence([seed, rt.rank]).generate_state(1)[0]))


def rng_state() -> dict:
    """All global RNG states (python, numpy, torch, CUDA), for exact resume.

    Plain Python values and tensors only, so the checkpoint loads with `torch.load(weights_only=True)`.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss,
                                                    gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's GPU only: asking for every GPU's state would make each rank create a context on all.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def parallelize(model: nn.Module, rt: Runtime, parallel: ParallelConfig | None = None) -> nn.Module:
    """The module the training step calls: `model` moved to the device, checkpointed, compiled and wrapped.

    FSDP2 and activation checkpointing change `model` in place; DDP and a one-process compile return a wrapper
    that shares its parameters. Checkpoints and evaluation use `model` itself (`lmforge.parallel.unwrap`).

    One process compiles the whole model (one graph, embeddings and head included); DDP and FSDP compile each
    Transformer block inside the wrapper, as torchtitan does, so that compilation composes with the sharding.
    """
    cfg = dataclasses.replace(parallel or ParallelConfig(), strategy=rt.strategy)
    if cfg.mixed_precision == "auto":  # FSDP computes in the run's precision unless told otherwise
        cfg.mixed_precision = "bf16" if rt.autocast_dtype is torch.bfloat16 else "fp32"
    whole = rt.compile and rt.strategy == "none"
    step_model = lparallel.parallelize(model, cfg, rt, compile=rt.compile and not whole)
    return torch.compile(step_model) if whole else step_model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
