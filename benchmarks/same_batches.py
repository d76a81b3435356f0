"""The training loop of the side-by-side benchmarks (`mlm_vs_hf.py`, `seq2seq_vs_hf.py`): each side trains in
turn on one fixed list of batches with the same AdamW, schedule and clipping, and is scored every `eval_every` steps
on fixed held-out batches, so that only the model differs between sides. A side's loss function returns
(mean loss to train on, summed loss, counted targets, correct predictions) for a batch."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from lmforge.train.config import TrainConfig
from lmforge.train.objectives import Objective, get_objective
from lmforge.train.optim import lr_factor, param_groups
from lmforge.train.runtime import setup_runtime

BatchLoss = Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def draw_batches(cfg: TrainConfig) -> tuple[Objective, list[dict], list[dict]]:
    """The run's objective on the CPU, `cfg.steps` training batches drawn from it once, and its held-out batches."""
    objective = get_objective(cfg.objective)(cfg, setup_runtime("cpu"))
    stream = objective.train_batches()
    return objective, [next(stream) for _ in range(cfg.steps)], list(objective.eval_batches())


def evaluate(model: nn.Module, loss: BatchLoss, batches: list[dict]) -> tuple[float, float]:
    """(mean loss, accuracy) over the counted targets of every held-out batch."""
    model.eval()
    total = count = correct = 0.0
    with torch.no_grad():
        for b in batches:
            _, s, n, c = loss(model, b)
            total, count, correct = total + float(s), count + float(n), correct + float(c)
    model.train()
    return total / count, correct / count


def train_on_batches(side: str, model: nn.Module, loss: BatchLoss, batches: list[dict], val: list[dict],
                     cfg: TrainConfig, eval_every: int, eval_loss: BatchLoss | None = None) -> list[dict]:
    """Train `model` on `batches` in order; print and return one JSON row per evaluation. `eval_loss` (default
    `loss`) scores the held-out batches, e.g. the plain NLL where training uses a label-smoothed one."""
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps, cfg.optim))
    rows, window, cpu0 = [], [], time.process_time()
    for step, batch in enumerate(batches, 1):
        mean = loss(model, batch)[0]
        mean.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append(float(mean.detach()))
        if step % eval_every == 0 or step == len(batches):
            val_loss, val_acc = evaluate(model, eval_loss or loss, val)
            row = {"side": side, "step": step, "train_loss": sum(window) / len(window), "val_loss": val_loss,
                   "val_ppl": math.exp(val_loss), "val_acc": val_acc, "cpu_s": time.process_time() - cpu0}
            rows.append(row)
            window = []
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows
