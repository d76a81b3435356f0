"""Checkpoints of (possibly) parallelized models, through torch.distributed.checkpoint (DCP).

Two forms:
- full state (`model_state`, `optimizer_state`, `full_model`): unsharded CPU tensors keyed by the plain model's
  names, gathered on rank 0, for the single-file checkpoints of `lmforge.models.io` and the trainer; they load into
  any world size and strategy.
- sharded checkpoints (`save_sharded`, `load_sharded`): every rank writes its own shards in parallel, with no
  rank ever holding the whole model; a later run may load them on another world size (DCP reshards on load).
  `export_single_file` turns one into an ordinary `model.safetensors` + `config.json` directory.

Plain, DDP and FSDP2 models are handled alike: the state-dict helpers of `torch.distributed.checkpoint.state_dict`
strip wrappers' prefixes and gather or scatter the shards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmforge.atomic import atomic_directory
from lmforge.checksums import write_checksums
from lmforge.errors import UserError
from lmforge.models.io import CONFIG, copy_tokenizer_files
from lmforge.models.io import SHARDS_METADATA as METADATA  # written by DCP last: marks a complete checkpoint
from lmforge.parallel.env import Place, barrier, broadcast_object
from lmforge.parallel.parallelize import is_fsdp, unwrap

EXTRA = "extra.pt"
# cpu_offload with full_state_dict gathers onto rank 0 only (the other ranks get {}), so a large model never sits
# whole in every rank's memory.
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU state dict with the plain model's keys; collective: call on every rank.

    Under a process group only rank 0 gets the tensors (the others get an empty dict).
    """
    return get_model_state_dict(model, options=FULL)


def full_model(model: nn.Module, env: Place) -> nn.Module | None:
    """On rank 0, the plain model with the full weights, to write or evaluate as one file; None on other ranks.

    Collective: call on every rank. Unsharded models (single process, DDP) are returned as they are (unwrapped,
    no copy); an FSDP model's shards are gathered into a fresh CPU copy built from its `cfg`. Read it, don't train it.
    """
    if not is_fsdp(model):
        return unwrap(model) if env.rank == 0 else None
    from lmforge.models import build_model

    state = model_state(model)
    if env.rank != 0:
        return None
    plain = build_model(unwrap(model).cfg)
    plain.load_state_dict(state)
    return plain


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter names (not positions), so it loads into any world size or strategy.

    Collective; under a process group only rank 0 gets it. An optimizer that has not stepped yet gives {}.
    """
    if not optimizer.state:
        # Asking torch for the state of a fresh optimizer makes it initialise one with a zero-gradient step, which
        # counts as AdamW's first step and changes every later update.
        return {}
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (e.g. `model_state` output, or a `model.safetensors`) into a plain, DDP or FSDP2 model.

    Collective under a process group: every rank passes the same full dict.
    """
    set_model_state_dict(model, state, options=FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state (from `optimizer_state`) into `optimizer` over `model`'s parameters.

    Collective under a process group: every rank passes the same dict. {} (saved before the first step) leaves the
    optimizer fresh.
    """
    if not state:
        optimizer.state.clear()
        return
    set_optimizer_state_dict(model, optimizer, state, options=FULL)


# --- sharded checkpoints -------------------------------------------------------------------------------------

def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    # A fresh optimizer is left out (see `optimizer_state`); loading such a checkpoint leaves the optimizer fresh.
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None and optimizer.state:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    return state


def save_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 extra: dict[str, Any] | None, env: Place, tokenizer_dir: str | Path | None = None) -> Path:
    """Save model, optimizer and `extra` (rank 0's) as a DCP checkpoint directory, atomically; call on every rank.

    Every rank writes its shards into one temporary directory that rank 0 created; after all have finished, rank 0
    renames it into place. A crash at any point leaves the previous checkpoint at `path` intact. `extra` (step,
    data position, ...) must be torch.load-able with weights_only: plain Python values and tensors. Only rank 0's
    is written, so put per-rank state (a data loader's RNG) in it gathered: `all_gather_object(state, env)`.
    `config.json` of the model is written beside the shards when the model has a `cfg`, and the tokenizer files
    of `tokenizer_dir` with them, so that the directory loads like any checkpoint (`lmforge.checkpoints.load_model`) and
    generation or export need nothing else.
    """

    path = Path(path)
    state = _sharded_state(model, optimizer)
    with atomic_directory(path) if env.rank == 0 else contextlib.nullcontext() as tmp:
        tmp = Path(broadcast_object(str(tmp) if env.rank == 0 else None, env))
        with _single_process_ok():
            dcp.save(state, checkpoint_id=tmp, no_dist=not _has_group())
        if env.rank == 0:
            torch.save(extra or {}, tmp / EXTRA)
            cfg = getattr(unwrap(model), "cfg", None)
            if hasattr(cfg, "save"):
                cfg.save(tmp / CONFIG)
            copy_tokenizer_files(tokenizer_dir, tmp)
        # All ranks' shards are written before rank 0 leaves the block and renames the directory.
        barrier(env)
        if env.rank == 0:  # then every file's sha256, last, as a single-file checkpoint records its own
            write_checksums(tmp, sorted(p.name for p in tmp.iterdir() if p.is_file()))
    # ... and nobody goes on (to load it, or delete an older one) before the rename.
    barrier(env)
    return path


def _has_group() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    # Without a process group DCP warns on every save and load that it assumes one process; here that is intended.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _check_sharded(path: Path) -> None:
    if not (path / METADATA).is_file():
        raise UserError("not a complete sharded checkpoint (no .metadata)", where=path,
                        fix="point at a directory written by save_sharded, or use an earlier checkpoint")


def load_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                 env: Place) -> dict[str, Any]:
    """Load a `save_sharded` checkpoint into `model` (and `optimizer`) and return its `extra`; call on every rank.

    Works for any world size and strategy: a checkpoint saved by 2 FSDP ranks loads into 1 plain process and back.
    The optimizer must be built over `model`'s (parallelized) parameters already. A checkpoint saved before the
    optimizer's first step (or without one) leaves it fresh.
    """
    path = Path(path)
    _check_sharded(path)
    saved_optim = optimizer is not None and any(
        key.startswith("optim.") for key in dcp.FileSystemReader(path).read_metadata().state_dict_metadata)
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if saved_optim:
        state["optim"] = get_optimizer_state_dict(model, optimizer)  # the buffers to read into (initialises them)
    try:
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path, no_dist=not _has_group())
    except dcp.api.CheckpointException as e:
        raise UserError(f"sharded checkpoint does not match the model ({_first_line(e)})", where=path,
                        fix="load it into the model config it was saved from (see its config.json)") from None
    set_model_state_dict(model, state["model"])
    if saved_optim:
        set_optimizer_state_dict(model, optimizer, state["optim"])
    elif optimizer is not None:
        optimizer.state.clear()
    return read_extra(path)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def export_single_file(sharded_path: str | Path, out_dir: str | Path, cfg: Any = None,
                       tokenizer_dir: str | Path | None = None) -> Path:
    """Turn a sharded checkpoint into an ordinary model directory (`model.safetensors` + `config.json`).

    Runs in one process, any time after training (no process group needed; if one exists, call on rank 0 only).
    The model config comes from the checkpoint's own config.json unless `cfg` (a ModelConfig) is given. The result
    loads with `lmforge.checkpoints.load_model`.
    """
    from lmforge.models import build_model
    from lmforge.models.config import ModelConfig
    from lmforge.models.io import save_model

    sharded_path = Path(sharded_path)
    _check_sharded(sharded_path)
    if cfg is None:
        if not (sharded_path / CONFIG).is_file():
            raise UserError(f"no {CONFIG} beside the shards to say which model they hold", where=sharded_path,
                            fix="pass the model config the checkpoint was trained with")
        cfg = ModelConfig.load(sharded_path / CONFIG)
    model = build_model(cfg)
    read_model_shards(sharded_path, model)
    return save_model(out_dir, model, cfg, tokenizer_dir or sharded_path)


def read_model_shards(path: str | Path, model: nn.Module) -> None:
    """Read a sharded checkpoint's model entries into a whole (unparallelized) `model`, in this one process.

    The optimizer's shards stay on disk. `no_dist` because this is a job for one process even when the caller is
    part of a process group (export, generation after training).
    """
    path = Path(path)
    _check_sharded(path)
    state = {"model": model.state_dict()}
    try:
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path, no_dist=True)
    except dcp.api.CheckpointException as e:
        raise UserError(f"sharded checkpoint does not match the model config ({_first_line(e)})",
                        where=path, fix="pass the config the checkpoint was trained with") from None
    model.load_state_dict(state["model"])


def read_extra(path: str | Path) -> dict[str, Any]:
    """The `extra` of a sharded checkpoint without loading any weights (e.g. to find the latest step)."""
    path = Path(path)
    _check_sharded(path)
    extra_path = path / EXTRA
    return torch.load(extra_path, weights_only=True) if extra_path.is_file() else {}


__all__ = ["export_single_file", "full_model", "load_model_state", "load_optimizer_state",
           "load_sharded", "model_state", "optimizer_state", "read_extra", "save_sharded"]
