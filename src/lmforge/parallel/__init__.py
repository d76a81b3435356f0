"""Distributed training, applied to a built model from outside (torchtitan-style).

- `env`: join the torchrun process group (or not), pick the device, small collectives that are no-ops alone.
- `parallelize`: activation checkpointing -> torch.compile -> FSDP2 or DDP, per Transformer block.
- `checkpoint`: full and sharded (DCP) checkpoints that load into any world size, and export to one file.

Launch: `torchrun --nproc_per_node N ...`; without torchrun everything here runs as a single process.

The `checkpoint` functions load on first use: torch.distributed.checkpoint takes about a second to import, and
every `lmforge` command imports this package (through `TrainConfig.parallel`), most of them never to save a shard.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmforge.parallel.env import (
    DistEnv,
    Place,
    all_gather_object,
    all_reduce_max,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    record,
    setup,
    teardown,
)
from lmforge.parallel.parallelize import (
    ParallelConfig,
    clip_grad_norm_,
    is_fsdp,
    no_grad_sync,
    parallelize,
    reshard,
    transformer_blocks,
    unwrap,
)

__all__ = [
    "DistEnv",
    "ParallelConfig",
    "Place",
    "all_gather_object",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "clip_grad_norm_",
    "export_single_file",
    "full_model",
    "is_fsdp",
    "load_model_state",
    "load_optimizer_state",
    "load_sharded",
    "model_state",
    "no_grad_sync",
    "optimizer_state",
    "parallelize",
    "read_extra",
    "record",
    "reshard",
    "save_sharded",
    "setup",
    "teardown",
    "transformer_blocks",
    "unwrap",
]

_CHECKPOINT = ("export_single_file", "full_model", "load_model_state", "load_optimizer_state", "load_sharded",
               "model_state", "optimizer_state", "read_extra", "save_sharded")


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT:
        return getattr(importlib.import_module("lmforge.parallel.checkpoint"), name)
    raise AttributeError(f"module 'lmforge.parallel' has no attribute {name!r}")
