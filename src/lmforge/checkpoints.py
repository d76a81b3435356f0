"""Load a model checkpoint of either layout: the single-file one (`lmforge.models.io`) or DCP shards
(`lmforge.parallel.checkpoint`, written with `--parallel.sharded-checkpoints`).

    from lmforge.checkpoints import load_model, resolve_checkpoint

    model, cfg = load_model(resolve_checkpoint("runs/train"), device="cuda", dtype=torch.bfloat16)

The one loader every later stage uses (generation, evaluation, explanation, export). It sits above `models` and
`parallel`, so the model code knows nothing of sharding; torch.distributed.checkpoint is imported only when a
checkpoint really is sharded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from lmforge.atomic import write_json
from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.io import CONFIG, SHARDS_METADATA, WEIGHTS, load_state


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a complete sharded checkpoint (DCP writes its `.metadata` last)."""
    return (Path(path) / SHARDS_METADATA).is_file()


CHECKSUMS = "checksums.json"  # sha256 of a checkpoint's weight files, written last
CHECKSUMS_FORMAT = "lmforge-checksums/1"


class CorruptCheckpoint(UserError):
    """A checkpoint file whose bytes are not those that were written (a flipped byte, a truncated copy)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(directory: str | Path, names: list[str], **extra: str | None) -> None:
    """Record the sha256 of `directory`'s files `names` in `directory/checksums.json` (after they are written)."""
    directory = Path(directory)
    write_json(directory / CHECKSUMS, {"format": CHECKSUMS_FORMAT,
                                       "sha256": {n: file_sha256(directory / n) for n in names},
                                       **{k: v for k, v in extra.items() if v is not None}})


def read_checksums(directory: str | Path) -> dict | None:
    """`checksums.json` of a checkpoint; None for one written before checkpoints carried it."""
    path = Path(directory) / CHECKSUMS
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{CHECKSUMS} is unreadable ({type(e).__name__})", where=path,
                                fix="use an earlier checkpoint, or pass --no-verify to load it unchecked") from None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), dict):
        raise CorruptCheckpoint(f"{CHECKSUMS} is not an lmforge checksum file", where=path,
                                fix="use an earlier checkpoint, or pass --no-verify to load it unchecked")
    return record


def verify_checksums(directory: str | Path, names: list[str] | None = None) -> bool:
    """Check `directory`'s files (`names`, default every one recorded) against `checksums.json`.

    True when they match, False when the checkpoint has no checksums (older than them: nothing to check);
    CorruptCheckpoint, one line naming the file, when one differs or is missing.
    """
    directory = Path(directory)
    record = read_checksums(directory)
    if record is None:
        return False
    for name in names if names is not None else list(record["sha256"]):
        expected = record["sha256"].get(name)
        if expected is None:
            continue
        try:
            actual = file_sha256(directory / name)
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{name} is missing", where=directory,
                                    fix="use an earlier checkpoint") from None
        if actual != expected:
            raise CorruptCheckpoint(f"{name} does not match its recorded sha256 (damaged or truncated)",
                                    where=directory / name,
                                    fix="use an earlier checkpoint, or pass --no-verify to load it unchecked")
    return True


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, verify: bool = True) -> tuple[nn.Module, ModelConfig]:
    """Build the model described by `path/config.json` and load its weights; eval mode, on `device`.

    `path` may also be a sharded checkpoint (`--parallel.sharded-checkpoints`, torch.distributed.checkpoint):
    its shards are read into the one whole model, whatever number of processes wrote them. `dtype` casts the
    floating-point weights after loading (integer buffers keep theirs); None keeps the checkpoint's dtype.
    `verify`: check the weights against the checkpoint's `checksums.json` first (when it has one).
    """
    from lmforge.models import build_model

    path = Path(path)
    if not path.is_dir():
        raise UserError("checkpoint directory not found", where=path,
                        fix="pass a directory holding model.safetensors and config.json")
    cfg = ModelConfig.load(path / CONFIG)
    model = build_model(cfg)
    if is_sharded_checkpoint(path):
        from lmforge.parallel.checkpoint import read_model_shards  # torch.distributed.checkpoint only when needed

        read_model_shards(path, model)
    else:
        if verify:
            verify_checksums(path, [WEIGHTS])
        load_state(model, path / WEIGHTS)
    return model.to(device=device, dtype=dtype).eval(), cfg


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a training run directory (its best checkpoint, else its latest)."""
    path = Path(path)
    if (path / CONFIG).is_file():
        return path
    ckpts = path / "checkpoints"
    if (ckpts / "best" / CONFIG).is_file():
        return ckpts / "best"
    latest = ckpts / "latest"
    if latest.is_file():
        candidate = ckpts / latest.read_text(encoding="utf-8").strip()
        if (candidate / CONFIG).is_file():
            return candidate
    raise UserError("no model checkpoint here", where=path,
                    fix="pass a checkpoint directory (with config.json and model.safetensors) or a training run "
                        "directory made by `lmforge train`")
