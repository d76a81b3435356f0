"""Fine-tuning methods: what trains, decided from outside the model at the trainer's hook (between building and
initialising the model and `parallelize`), with one loop for every method.

- `full`: every parameter trains (the default).
- `frozen`: the embeddings, the first K blocks of each stack, or all but the task head are frozen
  (`requires_grad` off; the optimizer takes only what trains).
- `lora`: every parameter is frozen and low-rank adapters are added to the targets the patterns name
  (`lmforge.finetune.lora`); only the adapters train, and a run's checkpoints hold only them
  (`lmforge.finetune.adapter`), with the base checkpoint's hash.

With `keep_zeros` (full or frozen), the weights of linear layers that are exactly zero when training starts (a
pruned checkpoint's, `lmforge prune`) stay exactly zero: a gradient hook on each such weight zeroes their gradient,
so the optimizer moves only the kept weights (`lmforge.finetune.masks`).

This package sits beside `data` and `parallel`, above `models` only, so training applies a method, and the
checkpoint loader, inference and serving load an adapter onto its base, without any of them importing another.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmforge.config import Config, field
from lmforge.errors import UserError
from lmforge.models.heads import HEAD_MODULES

METHODS = ("full", "frozen", "lora")


@dataclass
class FinetuneConfig(Config):
    method: str = field("full", "full (every parameter trains), frozen (the parts the freeze_* options name do "
                                "not), or lora (low-rank adapters on the lora_targets; needs --init-from)",
                        choices=METHODS)
    freeze_embeddings: bool = field(False, "frozen: freeze the token (and position) embeddings")
    freeze_blocks: int = field(0, "frozen: freeze the first K blocks of each stack", min=0)
    freeze_all_but_head: bool = field(False, "frozen: train the task head only (a head tied to the embeddings "
                                             "trains them too)")
    keep_zeros: bool = field(False, "linear weights that are exactly zero at the start (a pruned checkpoint's) stay "
                                    "zero: their gradients are masked, so only the kept weights train (full or "
                                    "frozen; with optim.name adamw)")
    lora_rank: int = field(8, "lora: rank r of each adapter", min=1)
    lora_alpha: float = field(16.0, "lora: the update is scaled by alpha / r", gt=0)
    lora_dropout: float = field(0.0, "lora: dropout on the adapters' input", min=0, lt=1)
    lora_targets: list[str] = field(default_factory=lambda: ["q", "v"], non_empty=True,
                                    help="lora: the modules to adapt, by name pattern: a linear layer's name or its "
                                         "last parts (attn.wo, mlp.up, lm_head), a part of the fused attention "
                                         "projection (q, k, v), or a glob of full names (blocks.[01].attn.*)")

    def __post_init__(self) -> None:
        freezing = self.freeze_embeddings or self.freeze_blocks or self.freeze_all_but_head
        if self.method == "frozen" and not freezing:
            raise UserError("finetune.method frozen freezes nothing",
                            fix="add --finetune.freeze-embeddings, --finetune.freeze-blocks K or "
                                "--finetune.freeze-all-but-head")
        if self.keep_zeros and self.method == "lora":
            raise UserError("finetune.keep_zeros keeps a pruned model's zeros, but a LoRA update is dense",
                            fix="use --finetune.method full (or frozen) with --finetune.keep-zeros")
        if self.method != "frozen" and freezing:
            raise UserError(f"the finetune.freeze_* options apply to method frozen, not {self.method}",
                            fix="pass --finetune.method frozen, or leave the freeze options out")


def _stacks(model: nn.Module) -> list[nn.ModuleList]:
    return [m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name.split(".")[-1] == "blocks"]


def freeze(model: nn.Module, cfg: FinetuneConfig) -> None:
    """Turn `requires_grad` off on what `cfg`'s freeze options name."""
    if cfg.freeze_all_but_head:
        heads = [m for name, m in model.named_children() if name in HEAD_MODULES]
        keep = {id(p) for head in heads for p in head.parameters()}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
    if cfg.freeze_embeddings:
        embed = getattr(model, "embed", None)
        if embed is None:
            raise UserError("this model has no embedding module to freeze",
                            fix="leave --finetune.freeze-embeddings out")
        embed.requires_grad_(False)
    if cfg.freeze_blocks:
        stacks = _stacks(model)
        if not stacks or cfg.freeze_blocks > min(len(s) for s in stacks):
            have = min((len(s) for s in stacks), default=0)
            raise UserError(f"--finetune.freeze-blocks {cfg.freeze_blocks} is more than the model's {have} blocks",
                            fix=f"pass at most {have}")
        for stack in stacks:
            for block in stack[:cfg.freeze_blocks]:
                block.requires_grad_(False)


def apply_method(model: nn.Module, cfg: FinetuneConfig) -> str | None:
    """Apply the fine-tuning method to a built, initialised model; returns the line that reports it (None for
    full fine-tuning)."""
    masked = ""
    if cfg.keep_zeros:
        from lmforge.finetune.masks import keep_zeros

        kept = keep_zeros(model)
        masked = f"; {kept.zeros:,} zero weights of {kept.layers} linear layers kept at zero"
    if cfg.method == "full":
        return f"finetune: full{masked}" if masked else None
    if cfg.method == "frozen":
        freeze(model, cfg)
        what = ", ".join(w for w, on in (("embeddings", cfg.freeze_embeddings),
                                         (f"first {cfg.freeze_blocks} blocks", cfg.freeze_blocks),
                                         ("all but the head", cfg.freeze_all_but_head)) if on)
        head = f"frozen ({what})"
    else:
        from lmforge.finetune.lora import apply_lora

        adapted = apply_lora(model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        kinds = ", ".join(dict.fromkeys(name.split(".")[-1] for name in adapted))
        head = f"lora r={cfg.lora_rank} alpha={cfg.lora_alpha:g} on {len(adapted)} targets ({kinds})"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    every = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise UserError("the fine-tuning method leaves no parameter to train", fix="freeze less")
    return (f"finetune: {head}: {trainable:,} of {every:,} parameters train ({100 * trainable / every:.2f}%)"
            + masked)


__all__ = ["METHODS", "FinetuneConfig", "apply_method", "freeze"]
