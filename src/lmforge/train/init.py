"""Start a run from a checkpoint's weights (`lmforge train --init-from CKPT`): the fine-tuning entry point.

The run's model takes the checkpoint's architecture (`config_defaults` in `train/config.py` starts the model config
from the checkpoint's instead of a preset) and the head its objective asks for. Every tensor whose name and shape
the checkpoint has is loaded; the rest (a new task head) keeps its fresh initialisation; checkpoint tensors the
model has no place for (pretraining heads a classifier drops) are left out. One line reports the three, e.g.

    init from runs/bert/checkpoints/best: loaded 31 tensors (embed, encoder, pooler; 1.49M parameters); new:
    classifier (2 tensors); dropped: mlm_head, nsp_head (7 tensors)

A backbone tensor of the same name and another shape is an error (the checkpoint is another model), never silently
skipped; a head tensor of another shape (a classifier fine-tuned onto another set of labels) starts fresh and is
reported as such.

The checkpoint may be an lmforge checkpoint or run directory (single-file or sharded) or a Hugging Face model
directory (read through `lmforge.interop`, no conversion step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.heads import HEAD_MODULES
from lmforge.models.io import tied_names


@dataclass
class InitReport:
    source: Path
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)  # vocabulary tables with rows added: "embed +4 tokens"
    loaded_params: int = 0

    def line(self) -> str:
        def modules(names: list[str]) -> str:
            return ", ".join(dict.fromkeys(n.split(".")[0] for n in names))

        parts = [f"init from {self.source}: loaded {len(self.loaded)} tensors ({modules(self.loaded)}; "
                 f"{_millions(self.loaded_params)} parameters)"]
        if self.new:
            parts.append(f"new: {modules(self.new)} ({len(self.new)} tensors)")
        if self.dropped:
            parts.append(f"dropped: {modules(self.dropped)} ({len(self.dropped)} tensors)")
        if self.grown:
            parts.append(f"grown: {', '.join(dict.fromkeys(self.grown))} (new rows start fresh)")
        return "; ".join(parts)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n:,}"


def source_config(path: str | Path) -> ModelConfig:
    """The model config of the checkpoint to start from (lmforge or Hugging Face), as a base for the run's."""
    from lmforge.interop.hf import is_hf_directory, read_hf_config

    path = Path(path)
    if not path.exists():
        raise UserError("checkpoint to start from not found", where=path,
                        fix="pass --init-from an lmforge checkpoint or run directory, or a Hugging Face model "
                            "directory")
    if is_hf_directory(path):
        return read_hf_config(path)
    from lmforge.checkpoints import resolve_checkpoint
    from lmforge.models.io import CONFIG

    return ModelConfig.load(resolve_checkpoint(path) / CONFIG)


def source_state(path: str | Path) -> tuple[Path, dict[str, Tensor], list[str]]:
    """(the checkpoint directory read, its tensors by lmforge name, heads it lacked and that are fresh)."""
    from lmforge.interop.hf import is_hf_directory, read_hf_model

    path = Path(path)
    if is_hf_directory(path):
        _, state, fresh = read_hf_model(path)
        return path, state, fresh
    from lmforge.checkpoints import load_model, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model, _ = load_model(ckpt)  # single-file or sharded, checked against its own config
    tied = tied_names(model)  # stored once, under the tensor they are tied to
    return ckpt, {k: v for k, v in model.state_dict().items() if k not in tied}, []


def _grown_vocabulary(source: Tensor, target: Tensor, vocab_size: int) -> bool:
    """Whether `target` is a vocabulary table (embedding or output rows) with more rows than `source`."""
    return (target.dim() == 2 and target.shape[0] == vocab_size and source.dim() == 2
            and source.shape[0] < target.shape[0] and source.shape[1] == target.shape[1])


def init_from(model: nn.Module, path: str | Path, *, data: str | Path | None = None) -> InitReport:
    """Load into `model` every tensor of the checkpoint at `path` that it has a place for; see the module doc.

    `data`: the run's prepared data, which must be encoded by the checkpoint's tokenizer (one line otherwise).
    """
    ckpt, state, fresh = source_state(path)
    if data is not None:
        from lmforge.data.loaders import TokenDataset
        from lmforge.eval.perplexity import check_data_matches

        check_data_matches(ckpt, model.cfg, TokenDataset.open(data, "train"))
    report = InitReport(source=ckpt)
    target = model.state_dict()
    tied = tied_names(model)
    reshaped = [k for k in target if k in state and state[k].shape != target[k].shape]
    # A vocabulary grown by added tokens (chat_sft's): the checkpoint's rows load, the new rows keep their init.
    grown = [k for k in reshaped if _grown_vocabulary(state[k], target[k], model.cfg.vocab_size)]
    reshaped = [k for k in reshaped if k not in grown]
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(target[k].shape)})" for k in reshaped
             if k.split(".")[0] not in HEAD_MODULES]
    if wrong:
        raise UserError(f"the checkpoint's weights do not fit this model ({'; '.join(wrong[:3])}"
                        f"{' ...' if len(wrong) > 3 else ''})", where=ckpt,
                        fix="leave the model.* architecture options out with --init-from: the architecture comes "
                            "from the checkpoint")
    take = {}
    for name, t in target.items():
        if name in tied:
            continue  # loaded through the tensor it is tied to
        if name in grown:
            rows = state[name].shape[0]
            take[name] = torch.cat([state[name].to(t.dtype), t.detach()[rows:]])
            report.grown.append(f"{name.split('.')[0]} +{t.shape[0] - rows} tokens")
            report.loaded.append(name)
            report.loaded_params += state[name].numel()
        elif name in state and name not in reshaped and not any(name.startswith(f"{head}.") for head in fresh):
            take[name] = state[name]
            report.loaded.append(name)
            report.loaded_params += t.numel()
        else:
            report.new.append(name)
    report.dropped = [k for k in state if k not in target]
    with torch.no_grad():
        model.load_state_dict(take, strict=False)
    return report


__all__ = ["InitReport", "init_from", "source_config", "source_state"]
