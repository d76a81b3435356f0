"""lmforge's T5 against `transformers`' `T5ForConditionalGeneration` of the same shape, on the same seq2seq batches.

Sides, each trained in turn in one process on the same batches (drawn once by lmforge's `seq2seq` objective from a
pairs file), with the same AdamW, schedule, clipping and label smoothing, and scored every `--eval-every` steps on
the objective's held-out pairs (plain NLL and token accuracy):

- `lmforge`: lmforge's model from its own initialisation (the t5 presets' `init t5`, T5's fan-in scheme);
- `lmforge-normal`: the same from GPT-2's N(0, 0.05) (`--model.init normal --model.init-std 0.05`, lmforge's T5
  initialisation before 2026-12-02), and `lmforge-normal-unscaled` without the d_model**-0.5 scaling of the tied
  output (what the Multi30k recipe needed with it);
- `hf`: Hugging Face's model from *its* initialisation (T5's), the tied output scaled as T5 does;
- `lmforge-hf-init`: lmforge's model holding the `hf` side's initial weights (converted by the one HF mechanism).

If `lmforge-hf-init` tracks `hf`, the two implementations learn alike; the gaps between the others are the
initialisation's. Measured 2026-12-02 (one thread, 800 steps of 64 Multi30k pairs, lr 3e-3, held-out NLL /
token accuracy at step 800): hf 3.59 / 41.5 %, lmforge-normal-unscaled 3.49 / 36.6 %, lmforge-normal
4.52 / 25.8 %; `lmforge-hf-init` equals `hf` to four decimals at the first steps.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/seq2seq_vs_hf.py runs/mt/data runs/mt/train.tsv --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
from functools import partial

import torch
from torch import nn

from lmforge.config import resolve
from lmforge.eval.metrics import IGNORE_INDEX
from lmforge.interop.hf import family_for_lmforge, from_hf_state, normalize_hf_state
from lmforge.models import build_model
from lmforge.models.io import tied_names
from lmforge.train.config import TrainConfig
from lmforge.train.objectives.seq2seq import target_losses
from same_batches import draw_batches, train_on_batches


def hf_t5(cfg) -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    from lmforge.interop.families import _t5_to_hf

    return T5ForConditionalGeneration(T5Config(**_t5_to_hf(cfg), decoder_start_token_id=0, pad_token_id=0))


def step_loss(side: str, model: nn.Module, batch: dict, smoothing: float):
    """(loss to train on, summed NLL, count, correct) of one batch."""
    labels = batch["labels"]
    if side == "hf":
        logits = model(input_ids=batch["src"], attention_mask=batch["src_mask"],
                       decoder_input_ids=batch["tgt_in"]).logits
    else:
        logits = model(batch["src"], batch["tgt_in"], batch["src_mask"])
    loss_sum, count, loss = target_losses(logits, labels, smoothing)
    correct = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
    return loss, loss_sum, count, correct


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="prepared data (lmforge prepare) whose tokenizer has <eos>")
    p.add_argument("pairs", help="TSV of source/target pairs")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--sides", nargs="+", default=["lmforge", "hf", "lmforge-hf-init"],
                   choices=["lmforge", "lmforge-normal", "lmforge-normal-unscaled", "hf", "lmforge-hf-init"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    overrides = {"optim.lr": args.lr, "optim.warmup_steps": args.warmup, "optim.schedule": "cosine",
                 "optim.min_lr_ratio": 0.1, "model.d_model": args.d_model, "model.n_head": args.d_model // 32,
                 "model.n_layer": args.layers, "model.n_decoder_layer": args.layers, "model.d_ff": 4 * args.d_model,
                 "model.max_seq_len": 64, "model.dropout": 0.0, "model.activation": "gelu_tanh",
                 "objective_options.pairs": args.pairs, "objective_options.pairs_val_fraction": 0.01,
                 "objective_options.max_source_len": 48, "objective_options.max_target_len": 48,
                 "objective_options.length_buckets": 100}
    cfg = resolve(TrainConfig, data=args.data, preset="t5-tiny", objective="seq2seq", batch_size=args.batch_size,
                  steps=args.steps, eval_batches=args.eval_batches, tensorboard=False, seed=args.seed, **overrides)
    _, batches, val = draw_batches(cfg)
    for side in args.sides:
        torch.manual_seed(args.seed)
        if side == "hf":
            model = hf_t5(cfg.model)
        else:
            scheme = {"init": "normal", "init_std": 0.05} if side.startswith("lmforge-normal") else {}
            model = build_model(dataclasses.replace(cfg.model, **scheme,
                                                    scale_decoder_output=not side.endswith("unscaled")))
            if side == "lmforge-hf-init":
                torch.manual_seed(args.seed)
                hf_state = normalize_hf_state(family_for_lmforge(cfg.model), hf_t5(cfg.model).state_dict())
                state = from_hf_state(family_for_lmforge(cfg.model), cfg.model, hf_state, args.data)
                missing, unexpected = model.load_state_dict(state, strict=False)
                assert set(missing) <= set(tied_names(model)) and not unexpected, (missing, unexpected)
        model.train()
        print(f"{side}: {sum(q.numel() for q in model.parameters()):,} parameters", flush=True)
        train_on_batches(side, model, partial(step_loss, side, smoothing=args.label_smoothing), batches, val, cfg,
                         args.eval_every, eval_loss=partial(step_loss, side, smoothing=0.0))


if __name__ == "__main__":
    main()
