"""Model checkpoints on disk: `model.safetensors` + `config.json` (+ the tokenizer files), nothing else.

This is the format every later stage reads (generation, serving, evaluation, export); it knows nothing of
training state, which lives beside it in the trainer's own file, nor of sharded checkpoints: `lmforge.checkpoints`
loads either layout. Writes are atomic (a whole directory appears, or the old one stays).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.atomic import atomic_directory, disk_full_as_user_error
from lmforge.errors import UserError
from lmforge.models.config import ModelConfig

WEIGHTS, CONFIG = "model.safetensors", "config.json"
SHARDS_METADATA = ".metadata"  # written last by torch.distributed.checkpoint: a complete sharded checkpoint
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def state_dict_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, with tied weights stored once (safetensors refuses shared storage)."""
    out, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if t.numel() and key in seen:
            continue  # e.g. lm_head.weight tied to the embedding; restored by the model's own tying
        seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    return out


def write_model_files(directory: Path, model: nn.Module, cfg: ModelConfig, tokenizer_dir: Path | None) -> None:
    """Write weights, config and tokenizer files into an existing directory (the caller makes it atomic)."""
    save_file(state_dict_for_save(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    cfg.save(directory / CONFIG)
    copy_tokenizer_files(tokenizer_dir, directory)


def copy_tokenizer_files(tokenizer_dir: str | Path | None, directory: Path) -> None:
    """Put the tokenizer beside the weights, so a checkpoint directory is all that generation or export needs."""
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy2(Path(tokenizer_dir) / name, directory / name)


def save_model(path: str | Path, model: nn.Module, cfg: ModelConfig, tokenizer_dir: str | Path | None = None) -> Path:
    """Save a model checkpoint directory atomically; a full disk is one line (and the old directory stays)."""
    need = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with disk_full_as_user_error(path, "a model checkpoint", need=need), atomic_directory(path) as tmp:
        write_model_files(tmp, model, cfg, Path(tokenizer_dir) if tokenizer_dir else None)
    return Path(path)


def load_state(model: nn.Module, path: Path) -> None:
    """Load `model.safetensors` into `model`, with one clear line for a truncated or mismatched file."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"model weights are unreadable or truncated ({e})", where=path,
                        fix="re-save the checkpoint, or use an earlier one") from None
    check_weights(model, state, path,
                  fix="the checkpoint comes from another model family or config; use its own config.json")
    model.load_state_dict(state, strict=False)


def check_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path, fix: str | None = None) -> None:
    """`state` must hold exactly `model`'s tensors, names and shapes; a tied copy (`tied_names`) may be left out.

    `model` may live on the meta device (shapes only). One line naming the first few mismatches, else nothing.
    """
    expected = model.state_dict()
    tied = tied_names(model)
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (config: {tuple(expected[k].shape)})" for k in state
             if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", wrong)) if keys)
        raise UserError(f"weights do not match the model config ({detail})", where=where, fix=fix)


def tied_names(model: nn.Module) -> dict[str, str]:
    """Tensors that are an earlier one (a tied output projection: `lm_head.weight`, BERT's `mlm_head.out.weight`),
    which a checkpoint holds once, under the first name: {copy: source}. Works on a meta-device model."""
    first: dict[int, str] = {}
    tied = {}
    for name, t in model.state_dict(keep_vars=True).items():
        source = first.setdefault(id(t), name)
        if source != name:
            tied[name] = source
    return tied
