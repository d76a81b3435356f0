"""Causal language modelling: predict every next token of random windows of the training stream.

Under `torchrun` the loader draws one global batch per step and each rank reads its own rows of it, so the run
sees the same data on any number of processes at the same global batch, and resumes exactly on another world
size (see `lmforge.data.loaders.RandomWindowLoader`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from lmforge.eval.metrics import lm_metrics, next_token_nll
from lmforge.models.registry import Kind, kind_of
from lmforge.train.objectives import Objective, Output, register
from lmforge.train.objectives.options import require_vocab, val_split, warn_no_evaluation


@register("causal_lm")
class CausalLM(Objective):
    """Cross-entropy on the next token. Train: random windows; eval: one in-order pass over the val split."""

    kinds = (Kind.DECODER, Kind.RECURRENT)
    shared_stream = True

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import RandomWindowLoader, TokenDataset

        super().__init__(cfg, rt)
        self.train_ds = TokenDataset.open(cfg.data, "train")
        require_vocab(cfg, self.train_ds.vocab_size, cfg.data)
        self.val_ds = val_split(cfg)
        if self.val_ds is None:
            warn_no_evaluation(rt, f"no val split in {cfg.data}")
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
        if kind_of(self.cfg.model) is Kind.DECODER:  # a decoder gives its loss without the (B, T, V) logits
            loss_sum, count = model(x, targets=y)
        else:
            loss_sum, count = next_token_nll(model(x), y)
        return Output(loss=loss_sum / count.clamp(min=1),
                      sums={"loss": loss_sum.detach(), "count": count, "tokens": x.numel()})

    def metric_names(self) -> tuple[str, ...]:
        bpb = ("bpb",) if self.val_ds is not None and self.val_ds.bytes_per_token else ()
        return ("loss", "ppl", *bpb, "tokens")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        bytes_per_token = self.val_ds.bytes_per_token if self.val_ds is not None else None
        metrics = lm_metrics(sums["loss"] / max(sums["count"], 1), bytes_per_token)
        if metrics["bpb"] is None:
            del metrics["bpb"]
        return {**metrics, "tokens": sums["count"]}
