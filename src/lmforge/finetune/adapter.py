"""LoRA adapter checkpoints: the adapters alone, small, tied to the base model they were trained on.

A LoRA run's checkpoint directory holds `adapter.safetensors` (the adapter tensors, by target name, see
`lora.adapter_state`), `adapter.json` (rank, alpha, dropout, patterns, targets, and the base checkpoint's path and
the sha256 of its `model.safetensors`), the model's `config.json` and the tokenizer files, instead of
`model.safetensors`. `lmforge.checkpoints.load_model` reads such a directory by loading the base and attaching the
adapter (`attach_adapter`), which refuses an adapter for another base in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.atomic import write_json
from lmforge.checksums import file_sha256, read_checksums
from lmforge.errors import UserError
from lmforge.finetune.lora import adapter_state, apply_lora, load_adapter_state
from lmforge.models.config import ModelConfig
from lmforge.models.io import CONFIG, WEIGHTS, copy_tokenizer_files

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"
ADAPTER_FORMAT = "lmforge-lora/1"


def weights_sha256(checkpoint_dir: str | Path) -> str:
    """The sha256 of a checkpoint's `model.safetensors` (an lmforge or a Hugging Face directory): the base
    model's identity an adapter records. Read from `checksums.json` when recorded, else hashed."""
    directory = Path(checkpoint_dir)
    record = read_checksums(directory)
    if record is not None and WEIGHTS in record["sha256"]:
        return record["sha256"][WEIGHTS]
    if not (directory / WEIGHTS).is_file():
        raise UserError(f"no {WEIGHTS} to adapt", where=directory,
                        fix="LoRA adapts a single-file checkpoint (not a sharded one): pass its directory")
    return file_sha256(directory / WEIGHTS)


def is_adapter_checkpoint(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file() and not (Path(path) / WEIGHTS).is_file()


def write_adapter_files(directory: Path, model: nn.Module, cfg: ModelConfig, tokenizer_dir: Path | None,
                        info: dict[str, Any]) -> None:
    """Write an adapter checkpoint into an existing directory (the caller makes it atomic). `info`: what
    `adapter_info` returns for the run (rank, alpha, patterns, base, base_sha256)."""
    state = adapter_state(model)
    save_file(state, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    write_json(directory / ADAPTER_CONFIG, {**info, "targets": targets})
    cfg.save(directory / CONFIG)
    copy_tokenizer_files(tokenizer_dir, directory)


def adapter_info(rank: int, alpha: float, dropout: float, patterns: list[str], base: str | Path) -> dict[str, Any]:
    """The adapter.json record of a run adapting the checkpoint `base`."""
    return {"format": ADAPTER_FORMAT, "rank": rank, "alpha": alpha, "dropout": dropout, "patterns": list(patterns),
            "base": str(base), "base_sha256": weights_sha256(base)}


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    where = Path(path) / ADAPTER_CONFIG
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"the adapter config is unreadable ({type(e).__name__})", where=where) from None
    if not isinstance(record, dict) or record.get("format") != ADAPTER_FORMAT:
        raise UserError("not an lmforge LoRA adapter config", where=where,
                        fix="pass an adapter checkpoint written by `lmforge train --finetune.method lora`")
    return record


def attach_adapter(model: nn.Module, path: str | Path, base_sha256: str) -> dict[str, Any]:
    """Add the adapter saved in `path` to `model`, the base model whose weights hash to `base_sha256`; returns the
    adapter's config. One line when the adapter was trained on another base."""
    record = read_adapter_config(path)
    if record["base_sha256"] != base_sha256:
        raise UserError(f"this adapter was trained on another base model (base sha256 {record['base_sha256'][:12]}"
                        f", this one's {base_sha256[:12]})", where=path,
                        fix=f"load it onto its own base, {record.get('base')}")
    try:
        state = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"adapter weights are unreadable or truncated ({e})", where=Path(path) / ADAPTER_WEIGHTS,
                        fix="use an earlier checkpoint") from None
    apply_lora(model, record["targets"], int(record["rank"]), float(record["alpha"]), float(record["dropout"]))
    load_adapter_state(model, state, str(path))
    return record


__all__ = ["ADAPTER_CONFIG", "ADAPTER_FORMAT", "ADAPTER_WEIGHTS", "adapter_info", "attach_adapter",
           "is_adapter_checkpoint", "read_adapter_config", "weights_sha256", "write_adapter_files"]
