"""A task checkpoint opened for scoring or predicting a file: the model, its config, its tokenizer and the runtime.

    from lmforge.eval.task_checkpoint import open_task_checkpoint, require_file

    file = require_file("dev.tsv", "labelled file", fix="pass --file FILE")
    ckpt = open_task_checkpoint("runs/sst2", capability=CLASSIFY, needed_for="classification",
                                fix="pass a checkpoint trained with --objective classification")
    ckpt.model, ckpt.cfg, ckpt.tokenizer, ckpt.special, ckpt.runtime

The one way `lmforge eval --task ...` and `lmforge predict` open a checkpoint (the classification, QA and seq2seq
scorers and `predict_file` all did the same five steps): a missing path is one error line, a run directory
resolves to its best checkpoint (`checkpoints.resolve_checkpoint`), the model loads through the one loader
(`checkpoints.load_model`) on the local runtime's device, the capability the task needs is required of it
(`models.registry.require`), and the tokenizer saved beside it is checked against the model
(`checkpoints.load_checkpoint_tokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch import nn

    from lmforge.models.config import ModelConfig
    from lmforge.runtime import Runtime


@dataclass
class TaskCheckpoint:
    path: Path  # the checkpoint directory (a run directory resolved to its best, else its latest)
    model: nn.Module  # in eval mode, on runtime.device
    cfg: ModelConfig
    tokenizer: Tokenizer
    special: dict[str, int]  # the tokenizer's special-token ids by name (`data.tokenizer.special_token_ids`)
    runtime: Runtime


def require_file(file: str | Path, what: str, *, fix: str) -> Path:
    """`file` as a Path, or one error line ("WHAT not found") when it is not a file."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"{what} not found", where=file, fix=fix)
    return file


def open_task_checkpoint(checkpoint: str | Path, *, capability: str | None = None, needed_for: str = "",
                         fix: str = "", device: str = "auto", precision: str = "auto",
                         verify: bool = True) -> TaskCheckpoint:
    """Load `checkpoint` (a checkpoint or a run directory) with its tokenizer on the local runtime; with
    `capability`, one error line (naming `needed_for` and `fix`) when its model cannot do it."""
    from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from lmforge.data.tokenizer import special_token_ids
    from lmforge.models.registry import require
    from lmforge.runtime import local_runtime

    if not Path(checkpoint).exists():
        raise UserError("checkpoint not found", where=checkpoint,
                        fix="pass a checkpoint directory or a run directory made by `lmforge train`")
    path = resolve_checkpoint(checkpoint)
    runtime = local_runtime(device, precision)
    model, cfg = load_model(path, runtime.device, verify=verify)
    if capability is not None:
        require(cfg, capability, needed_for=needed_for, where=path, fix=fix)
    tokenizer = load_checkpoint_tokenizer(path, cfg)
    return TaskCheckpoint(path=path, model=model, cfg=cfg, tokenizer=tokenizer, special=special_token_ids(tokenizer),
                          runtime=runtime)


__all__ = ["TaskCheckpoint", "open_task_checkpoint", "require_file"]
