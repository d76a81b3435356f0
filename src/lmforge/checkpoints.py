"""Load a model checkpoint of either layout: the single-file one (`lmforge.models.io`) or DCP shards
(`lmforge.parallel.checkpoint`, written with `--parallel.sharded-checkpoints`).

    from lmforge.checkpoints import load_model, resolve_checkpoint

    model, cfg = load_model(resolve_checkpoint("runs/train"), device="cuda", dtype=torch.bfloat16)

The one loader every later stage uses (generation, evaluation, explanation, export). It sits above `models` and
`parallel`, so the model code knows nothing of sharding; torch.distributed.checkpoint is imported only when a
checkpoint really is sharded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.checksums import (  # re-exported: the loader's public names
    CHECKSUMS,
    CHECKSUMS_FORMAT,
    CorruptCheckpoint,
    file_sha256,
    read_checksums,
    verify_checksums,
    write_checksums,
)
from lmforge.errors import UserError
from lmforge.finetune.adapter import (
    ADAPTER_WEIGHTS,
    attach_adapter,
    is_adapter_checkpoint,
    read_adapter_config,
    weights_sha256,
)
from lmforge.finetune.lora import merge_lora
from lmforge.models.config import ModelConfig
from lmforge.models.io import CONFIG, SHARDS_METADATA, WEIGHTS, load_state


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a complete sharded checkpoint (DCP writes its `.metadata` last)."""
    return (Path(path) / SHARDS_METADATA).is_file()


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, verify: bool = True) -> tuple[nn.Module, ModelConfig]:
    """Build the model described by `path/config.json` and load its weights; eval mode, on `device`.

    `path` may also be a sharded checkpoint (`--parallel.sharded-checkpoints`, torch.distributed.checkpoint):
    its shards are read into the one whole model, whatever number of processes wrote them. `dtype` casts the
    floating-point weights after loading (integer buffers keep theirs); None keeps the checkpoint's dtype.
    `verify`: check the weights (a sharded checkpoint: every file) against the checkpoint's `checksums.json` first
    (when it has one). A quantised checkpoint (`lmforge quantize`: a `quantization.json` beside the config) gets
    its quantised layers swapped in before its integer weights load.
    """
    from lmforge.compress.quantize import apply_layout, read_spec
    from lmforge.models import build_model

    path = Path(path)
    if not path.is_dir():
        raise UserError("checkpoint directory not found", where=path,
                        fix="pass a directory holding model.safetensors and config.json")
    if is_adapter_checkpoint(path):
        return load_adapted(path, device=device, dtype=dtype, verify=verify)
    cfg = ModelConfig.load(path / CONFIG)
    model = build_model(cfg)
    quantization = read_spec(path)
    if quantization is not None:
        apply_layout(model, quantization, path)
    if is_sharded_checkpoint(path):
        from lmforge.parallel.checkpoint import read_model_shards  # torch.distributed.checkpoint only when needed

        if verify:
            verify_checksums(path)  # every shard file, as recorded
        read_model_shards(path, model)
    else:
        if verify:
            verify_checksums(path, [WEIGHTS])
        try:
            load_state(model, path / WEIGHTS)
        except UserError as e:
            if e.where is None:  # a quantised layer's dtype check knows the tensor, not the directory
                raise UserError(e.what, where=path / WEIGHTS, fix=e.fix) from None
            raise
    return model.to(device=device, dtype=dtype).eval(), cfg


def load_adapted(adapter: str | Path, base: str | Path | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, verify: bool = True, merge: bool = True,
                 ) -> tuple[nn.Module, ModelConfig]:
    """A LoRA adapter checkpoint (`lmforge.finetune.adapter`) on its base model: the base loaded (from `base`, else
    the path the adapter records), checked to be the one the adapter was trained on, the adapter attached and, with
    `merge`, folded into plain weights (what generation, evaluation, export and serving want). One line when the
    base is missing or is another model."""
    adapter = Path(adapter)
    record = read_adapter_config(adapter)
    base_path = Path(base) if base is not None else Path(record.get("base", ""))
    if not (base_path / CONFIG).is_file() or not (base_path / WEIGHTS).is_file():
        raise UserError(f"the adapter's base checkpoint is not at {base_path}", where=adapter,
                        fix="put the base model back there, or load the adapter with the base given "
                            "(lmforge merge ADAPTER --base CKPT)")
    if verify:
        verify_checksums(adapter, [ADAPTER_WEIGHTS])
    model, _ = load_model(base_path, verify=verify)
    cfg = ModelConfig.load(adapter / CONFIG)
    if cfg.vocab_size != model.cfg.vocab_size:
        raise UserError(f"the adapter's model has {cfg.vocab_size} tokens but the base {model.cfg.vocab_size}",
                        where=adapter, fix=f"load it onto its own base, {record.get('base')}")
    attach_adapter(model, adapter, weights_sha256(base_path))
    model.cfg = cfg  # the run's config: the context it trained on (trained_seq_len)
    if merge:
        merge_lora(model)
    return model.to(device=device, dtype=dtype).eval(), cfg


def merge_adapter(adapter: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """Write the adapter checkpoint `adapter`, merged into its base, as a plain checkpoint `out` (with the adapter
    run's tokenizer and chat template), which every verb and `lmforge export` read as any other."""
    from lmforge.models.io import save_model

    adapter = resolve_checkpoint(adapter)
    if not is_adapter_checkpoint(adapter):
        raise UserError("not a LoRA adapter checkpoint (no adapter.json)", where=adapter,
                        fix="pass a checkpoint of a `lmforge train --finetune.method lora` run")
    model, cfg = load_adapted(adapter, base)
    path = save_model(out, model, cfg, tokenizer_dir=adapter)
    write_checksums(path, [WEIGHTS])
    return path


def load_checkpoint_tokenizer(path: str | Path, cfg: ModelConfig):
    """The tokenizer saved with checkpoint `path`, checked against its model in one line: the one check every verb
    that pairs a checkpoint's tokenizer with its model makes (ids past the embedding table would be an IndexError,
    and a tokenizer swapped under a run means other tokens)."""
    from lmforge.data.tokenizer import check_vocab_fits, load_tokenizer

    tokenizer = load_tokenizer(path)
    check_vocab_fits(tokenizer.get_vocab_size(), cfg.vocab_size, model="the model's vocabulary", where=path,
                     fix="this tokenizer is not the one the model was trained with: put the run's own "
                         "(OUT/tokenizer/tokenizer.json) beside the weights")
    return tokenizer


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


__all__ = ["CHECKSUMS", "CHECKSUMS_FORMAT", "CorruptCheckpoint", "file_sha256", "is_adapter_checkpoint",
           "is_sharded_checkpoint", "load_adapted", "load_checkpoint_tokenizer", "load_model", "merge_adapter",
           "read_checksums", "resolve_checkpoint", "verify_checksums", "write_checksums"]
