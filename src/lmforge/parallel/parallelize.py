"""Apply parallelism to a built model from outside, in torchtitan's order.

    activation checkpointing (per block) -> torch.compile (per block) -> FSDP2 (per block, then the root) or DDP

The model stays single-device code that knows nothing of this. All it must offer is its Transformer layers in
`nn.ModuleList`s named `blocks` (DecoderLM.blocks; EncoderModel.encoder.blocks; EncoderDecoderLM.encoder.blocks and
.decoder.blocks). Checkpointing and compilation change blocks in place, so parameter names and state-dict keys are
the same as the plain model's; FSDP2 also works in place (it swaps the module's class), and only DDP adds a
wrapper, which `unwrap` removes.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge.config import Config, field
from lmforge.errors import UserError
from lmforge.parallel.env import Place

STRATEGIES = ("auto", "none", "ddp", "fsdp")
FSDP_PRECISIONS = ("auto", "fp32", "bf16")  # FSDP compute dtype; no fp16 (its loss scaling is per process)


@dataclass
class ParallelConfig(Config):
    strategy: str = field("auto", "data parallelism: auto (ddp under torchrun with 2+ processes, else none), none, "
                          "ddp (replicate the model), fsdp (shard parameters, gradients and optimizer state)",
                          choices=STRATEGIES)
    activation_checkpointing: bool = field(False, "recompute each Transformer block's activations in the backward "
                                           "pass: less memory, about a third more compute")
    fsdp_cpu_offload: bool = field(False, "fsdp: keep sharded parameters, gradients and optimizer state in CPU "
                                   "memory and run the optimizer step there (saves accelerator memory)")
    fsdp_reshard_after_forward: bool = field(True, "fsdp: free gathered block parameters after the forward pass "
                                             "and gather them again for the backward (less memory, more traffic)")
    mixed_precision: str = field("auto", "fsdp: dtype of the gathered parameters used for compute; gradients are "
                                 "reduced and master weights kept in fp32 (auto: `lmforge train` follows "
                                 "--precision; lmforge.parallel.parallelize alone: bf16 on CUDA, fp32 elsewhere)",
                                 choices=FSDP_PRECISIONS)
    sharded_checkpoints: bool = field(False, "save checkpoints as torch.distributed.checkpoint shards that every "
                                      "rank writes at once, never gathering the model in one process (for models "
                                      "too large for that); they resume on any number of processes, and "
                                      "lmforge.parallel.export_single_file turns one into a model directory")


def resolve_strategy(cfg: ParallelConfig, env: Place) -> str:
    """The strategy that `parallelize` will apply: auto resolved, and impossible combinations reported."""
    strategy = cfg.strategy
    if strategy == "auto":
        strategy = "ddp" if env.world_size > 1 else "none"
    if strategy == "none" and env.world_size > 1:
        raise UserError(f"parallel.strategy 'none' with {env.world_size} processes would train "
                        f"{env.world_size} unrelated models", fix="use ddp or fsdp, or run a single process")
    if strategy in ("ddp", "fsdp") and not (dist.is_available() and dist.is_initialized()):
        raise UserError(f"parallel.strategy '{strategy}' needs a process group",
                        fix="launch with `torchrun --nproc_per_node N -m lmforge train ...`, or pass "
                            "--parallel.strategy none (also to continue a multi-process run in one process)")
    return strategy


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every Transformer layer of `model`: the members of each `blocks` ModuleList, in the order they run.

    Empty for models without any (the n-gram and LSTM baselines): FSDP then shards the model as one unit.
    """
    return [block for name, module in unwrap(model).named_modules()
            if (name == "blocks" or name.endswith(".blocks")) and isinstance(module, nn.ModuleList)
            for block in module]


# --- activation checkpointing --------------------------------------------------------------------------------

class _CheckpointedForward:
    """Mixin put in front of a block's class: the forward runs under non-reentrant `torch.utils.checkpoint`.

    Swapping the class (as FSDP2 itself does) instead of wrapping the module keeps parameter names and state-dict
    keys unchanged. Non-reentrant checkpointing replays the same ops with the saved RNG state, so gradients are
    identical to running without it. Outside training (eval, no_grad, KV-cache decoding) the block runs as is:
    there is nothing to save memory on, and a replay would write the KV cache twice.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(*args, **kwargs)
        return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)


_CHECKPOINTED_CLASSES: dict[type, type] = {}


def apply_activation_checkpointing(model: nn.Module) -> None:
    blocks = transformer_blocks(model)
    if not blocks:
        raise UserError(f"activation checkpointing needs Transformer blocks, and a {type(unwrap(model)).__name__} "
                        "has none", fix="drop --parallel.activation-checkpointing for this model")
    for block in blocks:
        cls = type(block)
        if issubclass(cls, _CheckpointedForward):
            continue
        if cls not in _CHECKPOINTED_CLASSES:
            _CHECKPOINTED_CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_CheckpointedForward, cls), {})
        block.__class__ = _CHECKPOINTED_CLASSES[cls]


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (`Module.compile`): identical blocks share one compiled graph, and names stay."""
    for block in transformer_blocks(model):
        block.compile()


# --- data parallelism ----------------------------------------------------------------------------------------

def _param_dtype(cfg: ParallelConfig, env: Place) -> torch.dtype | None:
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if env.device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None  # None: compute in the parameters' own dtype


def _broadcast_from_rank0(model: nn.Module) -> None:
    # FSDP2 keeps each rank's own slice of its own tensors; unlike DDP it does not broadcast. Ranks that built the
    # model from different seeds would otherwise train a silently inconsistent model.
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t, src=0)


def apply_fsdp(model: nn.Module, cfg: ParallelConfig, env: Place) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=_param_dtype(cfg, env), reduce_dtype=torch.float32)
    # Offloading keeps the shards, gradients and optimizer state in CPU memory, pinned for fast copies to the
    # accelerator. On a CPU device they are there already and pinning needs an accelerator: the policy then only
    # runs FSDP's offload code path, unpinned (which keeps the option testable without a GPU).
    offload = (CPUOffloadPolicy(pin_memory=env.device.type != "cpu") if cfg.fsdp_cpu_offload
               else OffloadPolicy())
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        # The last block to run forward is the first the backward needs, so keeping it gathered
        # saves one all-gather for little memory (torchtitan does the same).
        reshard = cfg.fsdp_reshard_after_forward and i < len(blocks) - 1
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp, offload_policy=offload)
    # The root groups everything outside the blocks (embeddings, final norm, head). A tied embedding / output
    # weight is one parameter of this group, so it is sharded, gathered and reduced once.
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)


def parallelize(model: nn.Module, cfg: ParallelConfig, env: Place, compile: bool = False) -> nn.Module:
    """Make `model` (built on the CPU, in fp32) ready to train on `env`.

    Returns the model to call (a DDP wrapper, or `model` itself, changed in place); `unwrap` gives the module.
    Build the optimizer right after this and before any forward pass: FSDP replaces the parameters with sharded
    ones, and a forward without a backward (evaluation) leaves the root module's parameters gathered until the
    next backward, when `model.parameters()` yields those instead of the shards.
    """
    strategy = resolve_strategy(cfg, env)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    model.to(env.device)
    if strategy == "fsdp":
        _broadcast_from_rank0(model)
        apply_fsdp(model, cfg, env)
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # The model's buffers are constants (masks, position tables): no need to broadcast them before every
        # forward. (torch 2.13 renamed the option; the old name still works there, with a warning.)
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync_buffers = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                       **no_sync_buffers)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model's own module: DDP's and a whole-model compile's wrappers removed (FSDP2 works in place)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile(model) wrapper
            model = model._orig_mod
        else:
            return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter inside (gradient accumulation's non-final micro-batches)."""
    if not enabled:
        yield
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    inner = unwrap(model)
    if is_fsdp(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
        return
    yield


def reshard(model: nn.Module) -> None:
    """Free the parameters an FSDP2 forward left gathered (no-op otherwise).

    A forward without a backward (evaluation) leaves the root's parameters, and those of a block not resharded
    after forward, gathered until the next backward; meanwhile `model.parameters()` and the state dict yield the
    gathered tensors instead of the shards. Call after evaluating, before a checkpoint or the next step.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in unwrap(model).modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def clip_grad_norm_(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (over all ranks' shards under FSDP) and return it as a float.

    With max_norm <= 0 only measures. The norm is the same number on every rank.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2: the total over all shards
    return float((full() if full is not None else norm).item())
