"""lmforge's masked LM against `transformers`' `BertForMaskedLM` of the same shape, on the same batches.

Both models start from random weights (each its own library's initialisation), see the same masked batches (drawn
once by lmforge's `mlm` objective: windows of the token stream, `<cls> ... <sep>`, BERT's 80/10/10 masking), and
are trained by the same AdamW (lmforge's weight-decay groups: matrices and embeddings decay, vectors not), the same
warmup + cosine schedule and gradient clipping, one after the other in one process. Every `--eval-every` steps
both are scored on the same held-out masked windows (the objective's fixed-seed val batches). If lmforge's loss
falls clearly slower than HF's, the fault is in lmforge; if they match, the plateau belongs to the recipe.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/mlm_vs_hf.py runs/sst2/data --steps 300
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import resolve
from lmforge.eval.metrics import IGNORE_INDEX
from lmforge.train.config import TrainConfig
from same_batches import BatchLoss, draw_batches, train_on_batches


def hf_bert(cfg, pad_id: int) -> nn.Module:
    """`BertForMaskedLM` of lmforge's config: same layers, width, heads, MLP, vocabulary, positions, no dropout."""
    from transformers import BertConfig, BertForMaskedLM

    hf = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                    num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff,
                    max_position_embeddings=cfg.max_seq_len, type_vocab_size=cfg.type_vocab_size,
                    hidden_act="gelu", layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.dropout,
                    attention_probs_dropout_prob=cfg.dropout, pad_token_id=pad_id, attn_implementation="sdpa")
    return BertForMaskedLM(hf)


def full_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) labels, IGNORE_INDEX except at the selected positions, from the objective's (positions, labels)."""
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    real = batch["mlm_labels"] != IGNORE_INDEX
    rows = torch.arange(labels.shape[0])[:, None].expand_as(real)
    labels[rows[real], batch["mlm_positions"][real]] = batch["mlm_labels"][real]
    return labels


def hf_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(mean loss, summed loss, selected tokens, correct predictions) over the selected tokens."""
    labels = full_labels(batch)
    logits = model(input_ids=batch["input_ids"]).logits
    flat = logits.flatten(0, 1).float()
    loss_sum = F.cross_entropy(flat, labels.flatten(), reduction="sum", ignore_index=IGNORE_INDEX)
    real = labels != IGNORE_INDEX
    correct = ((logits.argmax(-1) == labels) & real).sum()
    return loss_sum / real.sum(), loss_sum, real.sum(), correct


def lmforge_loss(objective) -> BatchLoss:
    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = objective.forward(model, batch)
        count = (batch["mlm_labels"] != IGNORE_INDEX).sum()
        return out.loss, out.sums["mlm_loss"], count, out.sums["mlm_correct"]

    return loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="prepared data (lmforge prepare) with mask/cls/sep tokens")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--sides", nargs="+", default=["lmforge", "hf"], choices=["lmforge", "hf"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cfg = resolve(TrainConfig, data=args.data, preset="bert-tiny", objective="mlm", seq_len=args.seq_len,
                  batch_size=args.batch_size, steps=args.steps, eval_batches=args.eval_batches,
                  tensorboard=False, seed=args.seed, **{"optim.lr": args.lr, "optim.warmup_steps": args.warmup,
                                                         "model.max_seq_len": 128})
    objective, batches, val = draw_batches(cfg)
    for side in args.sides:
        torch.manual_seed(args.seed)
        if side == "lmforge":
            model, loss = objective.build_model().train(), lmforge_loss(objective)
        else:
            model, loss = hf_bert(cfg.model, objective.pad_id).train(), hf_loss
        n = sum(p.numel() for p in model.parameters())
        print(f"{side}: {n:,} parameters", flush=True)
        train_on_batches(side, model, loss, batches, val, cfg, args.eval_every)


if __name__ == "__main__":
    main()
