"""A LoRA adapter checkpoint as a `peft` adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
for the Hugging Face export of its base: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE_HF),
OUT)` then computes what lmforge's adapted model computes.

Names map through the family's table (`interop.families`): an adapted linear layer becomes the Hugging Face module
its weight is exported to. A part of lmforge's fused q|k|v projection becomes Llama's own `q_proj` / `k_proj` /
`v_proj`; where Hugging Face fuses them too (GPT-2's `c_attn`), the parts adapted become one adapter of rank
r x parts on the fused module, A stacked and B block-diagonal, alpha scaled alike, so the update is exactly the
sum of the parts' (`rank_pattern` / `alpha_pattern` say so to peft). Written without peft itself: safetensors and
JSON, as the model export.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from lmforge.atomic import atomic_directory, write_json
from lmforge.checkpoints import is_adapter_checkpoint, resolve_checkpoint
from lmforge.errors import UserError
from lmforge.finetune.adapter import ADAPTER_WEIGHTS, read_adapter_config
from lmforge.finetune.lora import fused_parts
from lmforge.interop.hf import family_for_lmforge, head_for_lmforge, meta_model, name_rules
from lmforge.models.config import ModelConfig
from lmforge.models.io import CONFIG

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."  # peft's names of the wrapped model's modules


def _hf_modules(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """lmforge linear layer -> (the Hugging Face modules its weight is exported to, transposed (Conv1D))."""
    family = family_for_lmforge(cfg)
    out = {}
    for rule, ours, theirs, _ in name_rules(family, cfg):
        if ours.endswith(".weight"):
            out[ours.removesuffix(".weight")] = (tuple(t.removesuffix(".weight") for t in theirs), rule.transpose)
    return out


def peft_adapter(cfg: ModelConfig, record: dict, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """(adapter_config.json, tensors) in peft's format for an lmforge adapter (`adapter.json`, its tensors)."""
    rank, alpha = int(record["rank"]), float(record["alpha"])
    modules = _hf_modules(cfg)
    meta = meta_model(cfg)
    parts_of = {}  # lmforge target name -> (lmforge module, part, rows)
    for prefix, module in meta.named_modules():
        for attr, parts in fused_parts(module).items():
            for part, rows in parts.items():
                parts_of[f"{prefix}.{part}" if prefix else part] = (f"{prefix}.{attr}" if prefix else attr, part, rows)
    grouped: dict[str, list[tuple[str, tuple[int, int], str]]] = {}  # lmforge module -> [(part, rows, target)]
    for target in record["targets"]:
        module, part, rows = parts_of.get(target, (target, "", None))
        grouped.setdefault(module, []).append((part, rows, target))
    tensors: dict[str, Tensor] = {}
    ranks, alphas, fan_in_fan_out = {}, {}, False
    for module, parts in grouped.items():
        if module not in modules:
            raise UserError(f"the adapted layer {module} has no Hugging Face counterpart to map the adapter onto",
                            fix="adapt attention and MLP projections only, or merge (lmforge merge) and export")
        theirs, transposed = modules[module]
        fan_in_fan_out |= transposed
        a = {t: state[f"{t}.lora_A.weight"] for _, _, t in parts}
        b = {t: state[f"{t}.lora_B.weight"] for _, _, t in parts}
        if len(theirs) > 1:  # Hugging Face splits this fused layer (Llama's q_proj, k_proj, v_proj): one each
            names = dict(zip(("q", "k", "v") if len(theirs) == 3 else ("k", "v"), theirs))
            for part, _, t in parts:
                tensors[f"{_PREFIX}{names[part]}.lora_A.weight"] = a[t]
                tensors[f"{_PREFIX}{names[part]}.lora_B.weight"] = b[t]
            continue
        hf = theirs[0]
        if len(parts) == 1 and parts[0][1] is None:  # a whole layer: the same adapter
            t = parts[0][2]
            tensors[f"{_PREFIX}{hf}.lora_A.weight"], tensors[f"{_PREFIX}{hf}.lora_B.weight"] = a[t], b[t]
            continue
        # Parts of a layer Hugging Face fuses too (GPT-2's c_attn): one adapter of rank r x parts.
        out_rows = meta.get_submodule(module).out_features
        stacked_a = torch.cat([a[t] for _, _, t in parts])
        stacked_b = torch.zeros(out_rows, rank * len(parts), dtype=stacked_a.dtype)
        for j, (_, (start, end), t) in enumerate(parts):
            stacked_b[start:end, j * rank:(j + 1) * rank] = b[t]
        tensors[f"{_PREFIX}{hf}.lora_A.weight"], tensors[f"{_PREFIX}{hf}.lora_B.weight"] = stacked_a, stacked_b
        if len(parts) > 1:
            ranks[hf], alphas[hf] = rank * len(parts), alpha * len(parts)
    head = head_for_lmforge(family_for_lmforge(cfg), cfg)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if head.generates else None,
        "r": rank, "lora_alpha": alpha, "lora_dropout": float(record.get("dropout", 0.0)),
        "target_modules": sorted({k.removeprefix(_PREFIX).rsplit(".lora_", 1)[0] for k in tensors}),
        "rank_pattern": ranks, "alpha_pattern": alphas, "fan_in_fan_out": fan_in_fan_out, "bias": "none",
        "base_model_name_or_path": None, "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
        "use_dora": False, "modules_to_save": None,
    }
    return config, {k: v.contiguous() for k, v in tensors.items()}


def export_peft(adapter_dir: str | Path, out_dir: str | Path, base_hf: str | Path | None = None) -> Path:
    """Write the lmforge adapter checkpoint `adapter_dir` as a peft adapter directory `out_dir`. `base_hf`: the
    Hugging Face export of its base, recorded as `base_model_name_or_path`."""
    ckpt = resolve_checkpoint(adapter_dir)
    if not is_adapter_checkpoint(ckpt):
        raise UserError("not a LoRA adapter checkpoint (no adapter.json)", where=ckpt,
                        fix="pass a checkpoint of a `lmforge train --finetune.method lora` run")
    cfg = ModelConfig.load(ckpt / CONFIG)
    config, tensors = peft_adapter(cfg, read_adapter_config(ckpt), load_file(str(ckpt / ADAPTER_WEIGHTS)))
    config["base_model_name_or_path"] = str(base_hf) if base_hf else None
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
        write_json(tmp / PEFT_CONFIG, config)
    return Path(out_dir)


__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "export_peft", "peft_adapter"]
