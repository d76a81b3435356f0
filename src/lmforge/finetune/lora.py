"""LoRA adapters (Hu et al., 2021), applied to a built model from outside: `apply_lora` swaps the targeted
`nn.Linear` layers for `LoRALinear`, which keeps the frozen base weight under its own name and adds
`scale * B(A(dropout(x)))` to the output rows it adapts; `merge_lora` folds the adapters back into plain
`nn.Linear` layers, so export and serving see an ordinary model.

Why not `peft`: lmforge's self-attention projects q, k and v with one fused `wqkv` matmul (one kernel, one
weight), and peft adapts a whole `nn.Linear` only, so a pattern could not target q and v without k. Here a target
is either a linear layer (`blocks.0.attn.wo`, `blocks.0.mlp.up`, ...) or one part of a fused projection, named as
if it stood alone (`blocks.0.attn.q`, `.k`, `.v`; cross-attention's `cross_attn.k`, `.v`), found from the
attention module's own head sizes, never from the family's name. The adapter file maps onto peft's format where
Hugging Face has a module of the same shape (`lmforge.finetune.peft_format`).

Patterns are shell-style (fnmatch) against the full target name, or against its last parts (`q` matches
`blocks.3.attn.q`, `attn.wo` matches every block's output projection, `blocks.[01].attn.*` the first two blocks'
attention).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import UserError


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus low-rank updates of some of its output rows.

    `parts` maps a part name to the output rows it covers, (start, end); a whole layer is one part named "" over
    every row. The base `weight` and `bias` keep the names they had in the wrapped layer, so a checkpoint of the
    base loads into a wrapped model unchanged; the adapters are `lora_A.<part>` (r, in) and `lora_B.<part>`
    (rows, r), B zero-initialised so that training starts from the base model exactly.
    """

    def __init__(self, base: nn.Linear, parts: dict[str, tuple[int, int]], rank: int, alpha: float,
                 dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.parts = dict(parts)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for part, (start, end) in self.parts.items():
            a = torch.empty(rank, self.in_features, device=dev, dtype=dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A
            self.lora_A[_key(part)] = nn.Parameter(a)
            self.lora_B[_key(part)] = nn.Parameter(torch.zeros(end - start, rank, device=dev, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        a, b = self.stacked()
        # Two small matmuls and one add, whatever the number of parts: x A^T (.., parts x r), then B^T to the rows.
        return y + F.linear(F.linear(self.drop(x), a), b) * self.scale

    def stacked(self) -> tuple[Tensor, Tensor]:
        """The parts' adapters as one: A stacked (parts x r, in) and B block-diagonal (out, parts x r), zero
        outside each part's rows, so that B A is the sum of the parts' updates."""
        keys = [_key(p) for p in self.parts]
        if len(keys) == 1 and next(iter(self.parts.values())) == (0, self.out_features):
            return self.lora_A[keys[0]], self.lora_B[keys[0]]
        a = torch.cat([self.lora_A[k] for k in keys])
        n, r = len(keys), self.rank
        b = sum(F.pad(self.lora_B[k], (j * r, (n - 1 - j) * r, start, self.out_features - end))
                for j, (k, (start, end)) in enumerate(zip(keys, self.parts.values())))
        return a, b

    def delta_weight(self) -> Tensor:
        """The adapters as one (out, in) update of the base weight: y = x (W + delta)^T + b."""
        a, b = self.stacked()
        return b @ a * self.scale

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` whose weight is the base weight plus the adapters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        parts = ", ".join(p or "all" for p in self.parts)
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}, parts={parts}"


def _key(part: str) -> str:
    return part or "all"  # ParameterDict keys may not be empty


@dataclass(frozen=True)
class Target:
    """Something LoRA can adapt: `name` (what patterns match and the adapter file says), the linear layer it lives
    in (`module`, a dotted path) and the output rows it covers there."""

    name: str
    module: str
    part: str
    rows: tuple[int, int]


def fused_parts(module: nn.Module) -> dict[str, dict[str, tuple[int, int]]]:
    """{linear layer's attribute: {part: rows}} for the fused projections of an attention module: self-attention's
    `wqkv` as q | k | v, cross-attention's `wkv` as k | v. Read from the module's own head sizes."""
    n_head, n_kv, d = getattr(module, "n_head", None), getattr(module, "n_kv_head", None), \
        getattr(module, "head_dim", None)
    if None in (n_head, n_kv, d):
        return {}
    q, kv = n_head * d, n_kv * d
    found = {}
    if isinstance(getattr(module, "wqkv", None), nn.Linear | LoRALinear):
        found["wqkv"] = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
    if isinstance(getattr(module, "wkv", None), nn.Linear | LoRALinear):
        found["wkv"] = {"k": (0, kv), "v": (kv, 2 * kv)}
    return found


def targets(model: nn.Module) -> list[Target]:
    """Every target of `model`, in module order: its linear layers, with fused projections split into parts."""
    fused: dict[str, dict[str, tuple[int, int]]] = {}
    for prefix, module in model.named_modules():
        for attr, parts in fused_parts(module).items():
            fused[f"{prefix}.{attr}" if prefix else attr] = parts
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | LoRALinear):
            continue
        if name in fused:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            out += [Target(f"{parent}.{part}" if parent else part, name, part, rows)
                    for part, rows in fused[name].items()]
        else:
            out.append(Target(name, name, "", (0, module.out_features)))
    return out


def matches(name: str, pattern: str) -> bool:
    """Whether `pattern` names `name`: the whole dotted name, or its last parts."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


def select(model: nn.Module, patterns: list[str]) -> list[Target]:
    """The targets `patterns` name; one line for a pattern that names none (with the names there are)."""
    every = targets(model)
    chosen: dict[str, Target] = {}
    for pattern in patterns:
        hits = [t for t in every if matches(t.name, pattern)]
        if not hits:
            examples = sorted({t.name.split(".")[-1] if t.name[-1:] in "qkv" else ".".join(t.name.split(".")[-2:])
                               for t in every})
            raise UserError(f"LoRA target pattern {pattern!r} matches no module of this model",
                            fix=f"name one of: {', '.join(examples)} (a name's last parts, or a glob of full "
                                f"names such as blocks.0.attn.q)")
        chosen.update({t.name: t for t in hits})
    return [t for t in every if t.name in chosen]


def apply_lora(model: nn.Module, patterns: list[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Freeze every parameter of `model` and add rank-`rank` adapters to the targets `patterns` name; returns the
    target names adapted. A rank larger than a target's smaller side is one line (it would be no low-rank update)."""
    chosen = select(model, patterns)
    for t in chosen:
        module = model.get_submodule(t.module)
        limit = min(module.in_features, t.rows[1] - t.rows[0])
        if rank > limit:
            raise UserError(f"LoRA rank {rank} is larger than {t.name} allows ({module.in_features} -> "
                            f"{t.rows[1] - t.rows[0]}: at most {limit})",
                            fix=f"pass --finetune.lora-rank {limit} or lower")
    for p in model.parameters():
        p.requires_grad_(False)
    by_module: dict[str, dict[str, tuple[int, int]]] = {}
    for t in chosen:
        by_module.setdefault(t.module, {})[t.part] = t.rows
    for name, parts in by_module.items():
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise UserError(f"{name} already has LoRA adapters", fix="merge them first (lmforge merge)")
        _replace(model, name, LoRALinear(module, parts, rank, alpha, dropout))
    return [t.name for t in chosen]


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRALinear of `model` back into a plain `nn.Linear` (in place); returns how many."""
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        _replace(model, name, model.get_submodule(name).merged())
    return len(names)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors alone, by target name: {"blocks.0.attn.q.lora_A.weight": (r, in), "...lora_B.weight":
    (rows, r)} (peft's spelling of the two matrices)."""
    out = {}
    for t in targets(model):
        module = model.get_submodule(t.module)
        if isinstance(module, LoRALinear) and t.part in module.parts:
            out[f"{t.name}.lora_A.weight"] = module.lora_A[_key(t.part)].detach().cpu().contiguous()
            out[f"{t.name}.lora_B.weight"] = module.lora_B[_key(t.part)].detach().cpu().contiguous()
    return out


def load_adapter_state(model: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Copy `adapter_state`-named tensors into a model with the same adapters; one line when they do not fit."""
    own = adapter_state(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise UserError(f"the adapter does not fit this model (missing: {missing[:2]}, unexpected: "
                        f"{unexpected[:2]}, wrong shape: {wrong[:2]})", where=where,
                        fix="load the adapter onto the base model it was trained on, with its adapter_config.json")
    lookup = {}
    for t in targets(model):
        module = model.get_submodule(t.module)
        if isinstance(module, LoRALinear) and t.part in module.parts:
            lookup[t.name] = (module, _key(t.part))
    with torch.no_grad():
        for name, (module, key) in lookup.items():
            module.lora_A[key].copy_(state[f"{name}.lora_A.weight"])
            module.lora_B[key].copy_(state[f"{name}.lora_B.weight"])


__all__ = ["LoRALinear", "Target", "adapter_state", "apply_lora", "fused_parts", "has_lora", "load_adapter_state",
           "matches", "merge_lora", "select", "targets"]
