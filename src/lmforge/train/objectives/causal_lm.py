"""Causal language modelling: predict every next token of random windows of the training stream.

Under `torchrun` the loader draws one global batch per step and each rank reads its own rows of it, so the run
sees the same data on any number of processes at the same global batch, and resumes exactly on another world
size (see `lmforge.data.loaders.RandomWindowLoader`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch.nn.functional as F
from torch import nn

from lmforge.errors import UserError
from lmforge.progress import console
from lmforge.train.objectives import Objective, Output, register
from lmforge.train.objectives.options import require_family

IGNORE_INDEX = -100  # the cross-entropy default: targets with this id (padding) are not predicted


@register("causal_lm")
class CausalLM(Objective):
    """Cross-entropy on the next token. Train: random windows; eval: one in-order pass over the val split."""

    shared_stream = True

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import RandomWindowLoader, TokenDataset

        super().__init__(cfg, rt)
        require_family(cfg, self.name, ("gpt", "llama", "lstm"))
        self.train_ds = TokenDataset.open(cfg.data, "train")
        if self.train_ds.vocab_size > cfg.model.vocab_size:
            raise UserError(f"the tokenizer has {self.train_ds.vocab_size} tokens but model.vocab_size is "
                            f"{cfg.model.vocab_size}", where=cfg.data,
                            fix="leave model.vocab_size out (it is taken from the tokenizer) or raise it")
        try:
            self.val_ds = TokenDataset.open(cfg.data, "val")
        except UserError:
            self.val_ds = None
            if rt.is_main:
                console.print(f"[yellow]no val split in {cfg.data}: no evaluation, no best checkpoint, "
                              f"no early stopping[/yellow]")
        self.tokenizer_dir = self.train_ds.tokenizer_path.parent
        self.loader = RandomWindowLoader(self.train_ds, cfg.batch_size, cfg.seq_len, seed=cfg.seed, rank=rt.rank,
                                         world_size=rt.world_size)

    def train_batches(self) -> Iterator[Any]:
        return iter(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def eval_batches(self) -> Iterable[Any] | None:
        from lmforge.data.loaders import SequentialLoader

        if self.val_ds is None:
            return None
        loader = SequentialLoader(self.val_ds, self.cfg.batch_size, self.cfg.seq_len, rank=self.rt.rank,
                                  world_size=self.rt.world_size)
        return itertools.islice(loader, self.cfg.eval_batches or None)

    def forward(self, model: nn.Module, batch: Any) -> Output:
        x, y = self.to_device(batch)  # (B, T) inputs and next-token targets
        logits = model(x)  # (B, T, V)
        # Summed, not averaged, so that eval totals over many batches give the exact mean over the split.
        loss_sum = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum", ignore_index=IGNORE_INDEX)
        count = (y != IGNORE_INDEX).sum()
        return Output(loss=loss_sum / count.clamp(min=1),
                      sums={"loss": loss_sum.detach(), "count": count, "tokens": x.numel()})

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        loss = sums["loss"] / max(sums["count"], 1)
        metrics = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": sums["count"]}
        if self.val_ds is not None and self.val_ds.bytes_per_token > 0:
            # bits per byte = (nats per token / ln 2) * (tokens / bytes): comparable across tokenizers.
            metrics["bpb"] = loss / math.log(2) / self.val_ds.bytes_per_token
        return metrics
