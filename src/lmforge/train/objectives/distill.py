"""Knowledge distillation: a student learns the next token from a teacher checkpoint's softened distribution as well
as from the text (Hinton et al., 2015), on the causal-LM objective's batches.

    lmforge train --objective distill --objective-options.teacher runs/big --data runs/data --preset tiny \\
        --model.n-layer 2 --out runs/student

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy(text)

The T^2 keeps the soft term's gradients at the hard term's scale whatever the temperature. The teacher is loaded
through the one loader (any checkpoint that scores text: a decoder or an LSTM, float or quantised), frozen, in
eval mode, on the run's device; it must share the student's tokenizer, since the KL compares distributions over
the same token ids. Evaluation reports the student's own cross-entropy on the val split (val_loss, perplexity,
bits per byte), exactly as `causal_lm` does, so a distilled student and one trained without a teacher compare
directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import field
from lmforge.errors import UserError
from lmforge.eval.metrics import IGNORE_INDEX, next_token_nll
from lmforge.models.registry import SCORE, require
from lmforge.train.objectives import Options, Output, register
from lmforge.train.objectives.causal_lm import CausalLM


@dataclass
class DistillOptions(Options):
    teacher: str | None = field(None, "teacher checkpoint (or run directory) whose next-token distributions the "
                                      "student learns; it must have the data's tokenizer")
    temperature: float = field(2.0, "softmax temperature of both distributions in the KL term (> 1 softens them)",
                               gt=0)
    alpha: float = field(0.5, "weight of the KL term (1 - alpha weighs the cross-entropy on the text)", min=0,
                         max=1)

    def problems(self) -> list[str]:
        return [] if self.teacher else ["no teacher checkpoint given (--objective-options.teacher CKPT)"]


def soft_target_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed KL(teacher || student) of the temperature-softened distributions times T^2, positions summed)."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)  # (B, T)
    if mask is not None:
        kl = kl * mask
    count = mask.sum() if mask is not None else torch.tensor(kl.numel(), device=kl.device)
    return kl.sum() * temperature**2, count


@register("distill", options=DistillOptions)
class Distill(CausalLM):
    """Causal LM on the text, plus KL to a frozen teacher's softened next-token distribution."""

    def __init__(self, cfg, rt) -> None:
        from lmforge.checkpoints import load_model, resolve_checkpoint
        from lmforge.eval.perplexity import check_data_matches

        super().__init__(cfg, rt)
        opts: DistillOptions = self.opts
        path = resolve_checkpoint(opts.teacher)
        # Building the teacher before loading its weights draws random numbers: not from the run's generator, so the
        # student starts from the same initialisation as it would without a teacher (a fair comparison).
        with torch.random.fork_rng(devices=[]):
            self.teacher, teacher_cfg = load_model(path, rt.device)
        require(teacher_cfg, SCORE, needed_for="a distillation teacher", where=path)
        try:
            check_data_matches(path, teacher_cfg, self.train_ds)
        except UserError as e:
            raise UserError(f"the teacher does not share the data's tokenizer: {e.what}", where=path,
                            fix="distil from a teacher trained on data encoded with this tokenizer (the KL compares "
                                "distributions over the same token ids)") from None
        if teacher_cfg.vocab_size != cfg.model.vocab_size:
            raise UserError(f"the teacher's vocabulary has {teacher_cfg.vocab_size} entries and the student's "
                            f"{cfg.model.vocab_size}", where=path,
                            fix=f"pass --model.vocab-size {teacher_cfg.vocab_size} (the distributions must align)")
        self.teacher.requires_grad_(False)

    def forward(self, model: nn.Module, batch: Any) -> Output:
        x, y = self.to_device(batch)
        logits = model(x)
        nll_sum, count = next_token_nll(logits, y)
        hard = nll_sum / count.clamp(min=1)
        sums = {"loss": nll_sum.detach(), "count": count, "tokens": x.numel()}
        if not model.training:  # evaluation: the student's own cross-entropy, as causal_lm reports it
            return Output(loss=hard, sums=sums)
        opts: DistillOptions = self.opts
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        kl_sum, kl_count = soft_target_kl(logits, teacher_logits, opts.temperature, (y != IGNORE_INDEX).float())
        soft = kl_sum / kl_count.clamp(min=1)
        return Output(loss=opts.alpha * soft + (1 - opts.alpha) * hard, sums=sums)
