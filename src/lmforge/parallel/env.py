"""The process's place in a (possibly) distributed run: rank, world size, device, and a few collectives.

A run started by `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) joins the process group; a plain
`python -m lmforge ...` run gets world size 1 and no process group, and every collective here is then a no-op, so
the trainer calls the same functions either way.

Every function of `lmforge.parallel` that needs to know where it runs takes a `Place`: anything with `rank`,
`world_size` and `device` attributes, so the trainer can pass its own runtime object instead of a `DistEnv`.

Failing fast: a rank that dies (crash, OOM kill, uncaught exception) ends the job at once, because torchrun stops
the other workers as soon as one exits with an error, and its summary lists each failed rank with its exit code. A
rank that hangs while alive is caught by the process group's timeout (LMFORGE_DIST_TIMEOUT seconds): its peers'
next collective raises, and torchrun then stops the job. Decorate the entry point with `record` so that the summary
also shows each failed rank's exception.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist

import lmforge.device
from lmforge.atomic import write_json
from lmforge.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

# Long enough for rank 0 to write a single-file checkpoint while the others wait in a barrier, short enough that a
# hung peer ends the job in minutes rather than after the backends' defaults (NCCL 10 minutes, gloo 30).
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "LMFORGE_DIST_TIMEOUT"


class Place(Protocol):
    """Where a process runs; `DistEnv` is one, and so is any object with these attributes."""

    rank: int
    world_size: int
    device: torch.device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """The process that logs, writes single-file checkpoints and talks to the user."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process: collectives do real work."""
        return self.world_size > 1


def record(fn: F) -> F:
    """Decorate a torchrun entry point: a rank's uncaught exception then shows in torchrun's failure summary.

    torchrun reads each failed rank's exception from the file named by TORCHELASTIC_ERROR_FILE. This is
    `torch.distributed.elastic.multiprocessing.errors.record`, except that the file is written atomically: when a
    peer fails at the same moment, torchrun may kill this rank mid-write, and torch's version then leaves an empty
    file on which torchrun's own summary crashes (seen in this package's tests on busy cores).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            path = os.environ.get("TORCHELASTIC_ERROR_FILE")
            if path:
                with contextlib.suppress(OSError):
                    write_json(path, {"message": {"message": f"{type(e).__name__}: {e}", "extraInfo": {
                        "py_callstack": traceback.format_exc(), "timestamp": str(int(time.time()))}}})
            raise

    return wrapper  # type: ignore[return-value]


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds",
                        fix=f"set {TIMEOUT_ENV} to e.g. 300, or unset it")
    return value


def resolve_device(device: str = "auto", local_rank: int = 0, distributed: bool = False) -> torch.device:
    """`lmforge.device.pick_device`, plus what a distributed run needs: each rank on its own GPU, and no MPS."""
    if distributed and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"  # MPS has no distributed backend
    dev = lmforge.device.pick_device(device)  # looked up when called, so tests can pretend a GPU is there
    if not distributed:
        return dev
    if dev.type == "mps":
        raise UserError("MPS has no distributed backend", fix="run a single process, or use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU (only {torch.cuda.device_count()} visible)",
                            fix="start torchrun with --nproc_per_node at most the number of GPUs")
        dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun; otherwise a single-process environment.

    The backend follows the device: NCCL for CUDA, gloo for CPU. Collectives time out after LMFORGE_DIST_TIMEOUT
    seconds (default 300), so a hung peer fails the job instead of blocking it.
    """
    if not launched_by_torchrun():
        return DistEnv(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device, local_rank, distributed=True)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before init, so NCCL and every later `.cuda()` use this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_seconds()))
        _joined.append(True)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


_joined: list[bool] = []  # set once `setup` joined a process group in this process


def joined_process_group() -> bool:
    """Whether this process joined a torchrun process group (through `setup`) at some point."""
    return bool(_joined)


def teardown(env: Place, clean: bool = True) -> None:
    """Leave the process group (if any); safe to call twice.

    On a clean exit all ranks meet in a barrier first: a rank that destroys its group while a peer is still
    finishing (and a DDP model still alive) can leave that peer hanging at exit (seen with gloo, about one run in
    four). After an error pass `clean=False`: the peers may be stuck elsewhere, so no barrier; torchrun stops them.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if clean:
        barrier(env)
    dist.destroy_process_group()


def _active(env: Place) -> bool:
    return env.world_size > 1 and dist.is_available() and dist.is_initialized()


def _as_tensor(value: float | torch.Tensor, env: Place) -> torch.Tensor:
    # fp64 so that sums of many per-rank losses or token counts stay exact enough to compare across world sizes.
    t = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)
    dtype = torch.float32 if env.device.type == "mps" else torch.float64
    return t.to(device=env.device, dtype=dtype).reshape(())


def all_reduce_sum(value: float | torch.Tensor, env: Place) -> float:
    """Sum of a scalar over all ranks (the value itself in a single process)."""
    t = _as_tensor(value, env)
    if _active(env):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_reduce_mean(value: float | torch.Tensor, env: Place) -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    return all_reduce_sum(value, env) / (env.world_size if _active(env) else 1)


def all_reduce_max(value: float | torch.Tensor, env: Place) -> float:
    """Largest value over all ranks, e.g. for "did any rank see a non-finite loss"."""
    t = _as_tensor(value, env)
    if _active(env):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier(env: Place) -> None:
    if _active(env):
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def _object_device(env: Place) -> torch.device | None:
    # NCCL moves pickled objects through the GPU; gloo through the CPU.
    return env.device if env.device.type == "cuda" else None


def broadcast_object(obj: Any, env: Place, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank (e.g. a run directory name chosen on rank 0)."""
    if not _active(env):
        return obj
    box = [obj if env.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_object_device(env))
    return box[0]


def all_gather_object(obj: Any, env: Place) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank (`[obj]` alone): e.g. per-rank data positions."""
    if not _active(env):
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)  # with NCCL through the current GPU, which `setup` set to this rank's
    return out


__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "DistEnv", "Place", "all_gather_object", "all_reduce_max",
           "all_reduce_mean", "all_reduce_sum", "barrier", "broadcast_object", "launched_by_torchrun", "record",
           "resolve_device", "setup", "teardown", "timeout_seconds"]
