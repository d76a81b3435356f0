"""Where and how a training run executes: the process group (`lmforge.parallel`), seeds, and the step model.

Everything the loop needs to know about devices and ranks is here or in `lmforge.runtime` (the `Runtime` itself,
shared with evaluation). `setup_runtime` joins the process group when the run was started by `torchrun` (and is
one process otherwise), `parallelize` applies activation checkpointing, compilation and DDP / FSDP2 to the model
from outside, `no_sync` and `reduce_sum` are no-ops on one process. The loop logs and writes human-facing files
only where `is_main`.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
from torch import nn

from lmforge import parallel as lparallel
from lmforge.parallel.parallelize import ParallelConfig
from lmforge.runtime import Runtime, build_runtime


def setup_runtime(device: str = "auto", precision: str = "auto", compile: bool | None = None,
                  parallel: ParallelConfig | None = None) -> Runtime:
    """The run's runtime; joins the process group when started by `torchrun` (leave it with `teardown`)."""
    env = lparallel.setup(device)
    try:
        return build_runtime(env, precision, compile, parallel or ParallelConfig())
    except BaseException:
        lparallel.teardown(env, clean=False)
        raise


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
