"""Checkpoints of a training run.

    OUT/checkpoints/
        step_000100/            model.safetensors, config.json, tokenizer files  (the model format, models/io.py)
                                train_state.pt  (optimizer, schedule, grad scaler, RNG states, data position, ...)
        step_000200/
        best/                   model files + metrics.json: the lowest val loss so far
        latest                  text file naming the newest step directory

Each single-file checkpoint ends with checksums.json, written last: the sha256 of model.safetensors (and of
train_state.pt) and of the tokenizer the run trained with (`lmforge.checkpoints.verify_checksums` checks them).
The tokenizer files come from the run's own copy (OUT/tokenizer, made when the run started), never from the data
directory, which may have been prepared again since.

Every directory is built in a temporary sibling and renamed into place (`lmforge.atomic`), so a process killed at
any moment leaves the previous checkpoint intact; `--resume` takes the newest complete one. A step directory is a
model checkpoint every other verb reads; the training state sits beside the weights in its own file.

With `--parallel.sharded-checkpoints` a step directory (and best/) holds instead the shards every rank wrote
(torch.distributed.checkpoint: .metadata + *.distcp, model and optimizer), config.json, the tokenizer files, and
the rest of the training state in extra.pt. Every verb reads one as it is (`lmforge.checkpoints.load_model` gathers the
shards into one model); `lmforge.parallel.export_single_file` turns one into the single-file format. `--resume`
reads either layout, on any number of processes.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge import parallel as lparallel
from lmforge.atomic import atomic_directory, disk_full_as_user_error, write_json, write_text
from lmforge.checkpoints import CorruptCheckpoint, is_sharded_checkpoint, verify_checksums, write_checksums
from lmforge.data.tokenizer import tokenizer_hash
from lmforge.errors import UserError
from lmforge.finetune.adapter import ADAPTER_WEIGHTS, is_adapter_checkpoint, write_adapter_files
from lmforge.finetune.lora import has_lora, load_adapter_state
from lmforge.models.config import ModelConfig
from lmforge.models.io import CONFIG, WEIGHTS, load_state, write_model_files
from lmforge.parallel.checkpoint import EXTRA, METADATA

STATE = "train_state.pt"
STATE_FORMAT = "lmforge-train-state/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")

# Options that define the model or the training data stream: a checkpoint resumes only under the same values.
# batch_size is compared as the global batch, batch_size x processes: a run may resume on another world size.
# select_by: the best value so far (Progress.best_val) is of that metric.
RESUME_MUST_MATCH = ("objective", "objective_options", "batch_size", "seq_len", "grad_accum", "finetune", "select_by")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


class Checkpointer:
    """Writes, lists and prunes the checkpoints under `root` (OUT/checkpoints)."""

    def __init__(self, root: str | Path, keep_last: int = 0, tokenizer_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.tokenizer_dir = tokenizer_dir
        # A LoRA run's adapter.json record (`lmforge.finetune.adapter.adapter_info`): its checkpoints then hold the
        # adapters alone. None: whole models.
        self.adapter: dict[str, Any] | None = None

    @property
    def tokenizer_dir(self) -> Path | None:
        return self._tokenizer_dir

    @tokenizer_dir.setter
    def tokenizer_dir(self, value: Path | None) -> None:
        self._tokenizer_dir = value
        # What each checkpoint records as the tokenizer it was trained with.
        self.tokenizer_sha256 = (tokenizer_hash(value) if value is not None and (Path(value) / "tokenizer.json")
                                 .is_file() else None)

    def steps(self) -> list[tuple[int, Path]]:
        """Complete step checkpoints, oldest first."""
        found = []
        if self.root.is_dir():
            for d in self.root.iterdir():
                m = _STEP_DIR.match(d.name)
                if m and any(all((d / f).is_file() for f in files) for files in ((WEIGHTS, CONFIG, STATE),
                                                                                 (ADAPTER_WEIGHTS, CONFIG, STATE),
                                                                                 (METADATA, CONFIG, EXTRA))):
                    found.append((int(m.group(1)), d))
        return sorted(found)

    def latest(self) -> Path | None:
        steps = self.steps()
        return steps[-1][1] if steps else None

    def remove_stale(self) -> None:
        """Clean up after a save that was killed half-way (see `lmforge.atomic.atomic_directory`).

        `.NAME.XXXX.tmp` is an unfinished save (or a pruned directory not yet deleted): removed. `.NAME.old` is
        the previous NAME (e.g. best/), moved aside just before the new one was renamed in: put back if the kill
        came between the two renames, else removed.
        """
        if not self.root.is_dir():
            return
        for d in self.root.glob(".*.tmp"):
            _remove(d)
        for d in self.root.glob(".*.old"):
            target = self.root / d.name[1:-len(".old")]
            if target.exists():
                _remove(d)
            else:
                os.replace(d, target)

    def problem(self, path: Path, verify: bool = True) -> str | None:
        """Why checkpoint `path` cannot be resumed from (damaged, truncated), or None when it can.

        With its checksums (and `verify`) the files are checked byte for byte; an older checkpoint without them,
        or with `verify=False`, is checked for what a truncated copy breaks: the weights' header, the state file.
        """
        try:
            if is_sharded_checkpoint(path):
                if verify:
                    verify_checksums(path)  # every shard file (older sharded checkpoints have none to check)
                load_train_state(path)
                return None
            weights = ADAPTER_WEIGHTS if is_adapter_checkpoint(path) else WEIGHTS
            if verify and verify_checksums(path, [weights, STATE]):
                return None
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path / weights), "pt"):
                    pass
            except (SafetensorError, OSError) as e:
                raise CorruptCheckpoint(f"{weights} is unreadable or truncated ({e})", where=path) from None
            load_train_state(path)
        except UserError as e:
            return e.what
        return None

    def save(self, step: int, model: nn.Module, model_cfg: ModelConfig, train_state: dict[str, Any]) -> Path:
        _check_finite(model)
        path = self.root / step_dir_name(step)
        # The weights, and the optimizer's two moments of each in the state file.
        with disk_full_as_user_error(self.root, f"checkpoint {path.name}", need=3 * _tensor_bytes(model)):
            with atomic_directory(path) as tmp:
                weights = self._write_weights(tmp, model, model_cfg)
                torch.save({"format": STATE_FORMAT, "model_config": model_cfg.to_dict(),
                            "tokenizer_sha256": self.tokenizer_sha256, **train_state}, tmp / STATE)
                write_checksums(tmp, [weights, STATE], tokenizer_sha256=self.tokenizer_sha256)
            write_text(self.root / "latest", path.name + "\n")
        self.prune()
        return path

    def save_sharded(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig,
                     train_state: dict[str, Any], env: lparallel.Place) -> Path:
        """A step checkpoint as shards (model, optimizer) + extra.pt (the rest); collective: call on every rank."""
        path = self.root / step_dir_name(step)
        extra = {"format": STATE_FORMAT, "model_config": model_cfg.to_dict(),
                 "tokenizer_sha256": self.tokenizer_sha256, **train_state}
        lparallel.save_sharded(path, model, optimizer, extra, env, self.tokenizer_dir)
        if env.rank == 0:
            write_text(self.root / "latest", path.name + "\n")
            self.prune()
        return path

    def save_best_sharded(self, model: nn.Module, metrics: dict[str, Any], env: lparallel.Place) -> Path:
        """best/ as shards of the model alone, its metrics in extra.pt; collective."""
        return lparallel.save_sharded(self.root / "best", model, None, {"metrics": metrics}, env, self.tokenizer_dir)

    def save_best(self, model: nn.Module, model_cfg: ModelConfig, metrics: dict[str, Any]) -> Path:
        _check_finite(model)
        path = self.root / "best"
        with disk_full_as_user_error(self.root, "checkpoint best", need=_tensor_bytes(model)), \
                atomic_directory(path) as tmp:
            weights = self._write_weights(tmp, model, model_cfg)
            write_json(tmp / "metrics.json", metrics)
            write_checksums(tmp, [weights], tokenizer_sha256=self.tokenizer_sha256)
        return path

    def _write_weights(self, directory: Path, model: nn.Module, model_cfg: ModelConfig) -> str:
        """The model files of a checkpoint (a LoRA run's: its adapters alone); returns the weights' file name."""
        if self.adapter is not None and has_lora(model):
            write_adapter_files(directory, model, model_cfg, self.tokenizer_dir, self.adapter)
            return ADAPTER_WEIGHTS
        write_model_files(directory, model, model_cfg, self.tokenizer_dir)
        return WEIGHTS

    def prune(self) -> None:
        if self.keep_last <= 0:
            return
        for _, d in self.steps()[: -self.keep_last]:
            # Renamed out of the way first, so that a kill during the deletion never leaves a half-deleted
            # directory that still looks like a checkpoint.
            doomed = d.with_name(f".{d.name}.pruned.tmp")
            os.replace(d, doomed)
            _remove(doomed)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_finite(model: nn.Module) -> None:
    # The loop never applies a non-finite update; this guards the guarantee that no checkpoint holds garbage.
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise RuntimeError(f"refusing to checkpoint non-finite parameters: {', '.join(bad[:4])}")


def load_train_state(ckpt: Path) -> dict[str, Any]:
    """Read `ckpt/train_state.pt` (extra.pt of a sharded checkpoint), with one clear line for a missing,
    truncated or foreign file."""
    path = Path(ckpt) / (EXTRA if is_sharded_checkpoint(ckpt) else STATE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError("training state not found", where=path,
                        fix="resume from a step checkpoint made by `lmforge train`") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise UserError(f"training state is unreadable or truncated ({type(e).__name__})", where=path,
                        fix="delete this checkpoint directory to resume from the one before it") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError("not an lmforge training state", where=path,
                        fix="resume only from checkpoints written by `lmforge train`")
    return state


class CheckpointMismatch(UserError):
    """Resuming a checkpoint under another model or data stream than it was trained with."""


def check_compatible(state: dict[str, Any], model_cfg: ModelConfig, train_cfg: dict[str, Any], where: Path,
                     world_size: int = 1) -> None:
    """Refuse to resume a checkpoint under a different model or data stream, in one line.

    `world_size`: processes of the resuming run. The checkpoint may come from another number of processes if the
    global batch (batch_size x processes) stays the same.
    """
    saved = state["model_config"]
    fix = "resume with the run's own config (--config OUT/config.yaml) or use a new --out"
    if saved.get("family") != model_cfg.family:
        raise CheckpointMismatch(f"checkpoint holds a '{saved.get('family')}' model but the config asks for "
                        f"'{model_cfg.family}'", where=where, fix=fix)
    current = model_cfg.to_dict()
    defaults = ModelConfig().to_dict()  # a field added since the checkpoint was written holds its default there
    diff = [f"model.{k} {saved.get(k, defaults.get(k))!r} -> {v!r}" for k, v in current.items()
            if saved.get(k, defaults.get(k)) != v]
    old = state.get("train_config", {})
    saved_world = int(state.get("world_size", 1))
    for k in RESUME_MUST_MATCH:
        if k not in old:
            continue
        if k == "batch_size" and saved_world != world_size:
            before, after = old[k] * saved_world, train_cfg.get(k) * world_size
            if before != after:
                diff.append(f"global batch {old[k]} x {_processes(saved_world)} -> {train_cfg.get(k)} x "
                            f"{_processes(world_size)}")
                if before % world_size == 0:
                    fix = (f"pass --batch-size {before // world_size} to keep the global batch of {before} "
                           f"sequences, or resume on {_processes(saved_world)}")
        elif k == "objective_options":
            diff += _options_diff(old[k] or {}, train_cfg.get(k) or {})
        elif old.get(k) != train_cfg.get(k):
            diff.append(f"{k} {old.get(k)!r} -> {train_cfg.get(k)!r}")
    # The optimizer's state has the shape of its kind (Muon's momentum is not AdamW's moments): same kind only.
    old_optimizer = (old.get("optim") or {}).get("name", "adamw")
    new_optimizer = (train_cfg.get("optim") or {}).get("name", "adamw")
    if old and old_optimizer != new_optimizer:
        diff.append(f"optim.name {old_optimizer!r} -> {new_optimizer!r}")
    if diff:
        raise CheckpointMismatch(f"config does not match the checkpoint ({'; '.join(diff[:4])}"
                        f"{' ...' if len(diff) > 4 else ''})", where=where, fix=fix)


def _options_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The objective's options that changed, compared on those both configs have: a checkpoint written before each
    objective had its own options holds every objective's (the others never did anything), and an option added
    since the checkpoint was written is not in it."""
    return [f"objective_options.{k} {saved[k]!r} -> {v!r}" for k, v in current.items() if k in saved and saved[k] != v]


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def load_weights(ckpt: Path, model: nn.Module) -> None:
    """A checkpoint's weights into the run's model; a LoRA run's adapters into its adapted model."""
    if is_adapter_checkpoint(ckpt):
        from safetensors.torch import load_file

        load_adapter_state(model, load_file(str(Path(ckpt) / ADAPTER_WEIGHTS)), str(ckpt))
        return
    load_state(model, Path(ckpt) / WEIGHTS)
