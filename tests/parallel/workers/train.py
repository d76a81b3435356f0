"""A tiny training run for the distributed tests: `torchrun --nproc_per_node 2 train.py ...` or plain `python`.

Every process builds the same tiny DecoderLM (tied embeddings, the awkward case for FSDP) and sees the same global
batch for a given step; each rank trains on its own contiguous slice of the rows, split further into `accum`
micro-batches. With equal tokens per rank and micro-batch, the mean of the ranks' losses and the averaged gradients
equal those of one process on the whole batch, so every strategy must reproduce the single-process losses and
gradient norms. The step is written here rather than taken from the product's trainer so that these tests pin
`lmforge.parallel` alone. The test process imports this file for its reference run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge import parallel as lparallel
from lmforge.models import DecoderLM, ModelConfig

SEQ = 16
VOCAB = 64


def model_config() -> ModelConfig:
    return ModelConfig(family="gpt", vocab_size=VOCAB, max_seq_len=SEQ, n_layer=2, n_head=2, d_model=32, dropout=0.0)


def build_model(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(model_config())


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def global_batch(step: int, rows: int) -> torch.Tensor:
    """(rows, SEQ + 1) tokens of learnable sequences t[i+1] = (a * t[i] + b) mod VOCAB, fixed by `step`."""
    g = torch.Generator().manual_seed(1000 + step)
    start = torch.randint(0, VOCAB, (rows, 1), generator=g)
    a = torch.randint(1, 4, (rows, 1), generator=g)
    b = torch.randint(0, 5, (rows, 1), generator=g)
    tokens = [start]
    for _ in range(SEQ):
        tokens.append((a * tokens[-1] + b) % VOCAB)
    return torch.cat(tokens, dim=1)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, env: lparallel.Place, steps: range, rows: int,
          accum: int = 1, on_micro=None, on_step=None) -> dict[str, Any]:
    """Steps `steps` on global batches of `rows` rows; losses and gradient norms are those of the whole batch."""
    out: dict[str, Any] = {"losses": [], "grad_norms": [], "logits_dtype": None}
    per_rank = rows // env.world_size
    per_micro = per_rank // accum
    for step in steps:
        mine = global_batch(step, rows)[env.rank * per_rank:(env.rank + 1) * per_rank].to(env.device)
        loss_sum = 0.0
        for micro in range(accum):
            if on_micro is not None:
                on_micro(micro)
            batch = mine[micro * per_micro:(micro + 1) * per_micro]
            # Only the last micro-batch reduces gradients across ranks; the others accumulate locally.
            with lparallel.no_grad_sync(model, enabled=micro < accum - 1):
                logits = model(batch[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten()) / accum
                loss.backward()
            loss_sum += loss.item()
        out["logits_dtype"] = str(logits.dtype)
        out["grad_norms"].append(lparallel.clip_grad_norm_(model, 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        out["losses"].append(lparallel.all_reduce_mean(loss_sum, env))
        if on_step is not None:
            on_step(step)
    return out


def count_gradient_all_reduces(model: torch.nn.parallel.DistributedDataParallel, micro_of_call: list[int],
                               current: list[int]) -> None:
    """Record, for every gradient all-reduce DDP launches, the micro-batch it happened in."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        micro_of_call.append(current[0])
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, hook)


@lparallel.record  # torchrun's failure summary then shows this rank's exception, not only its exit code
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", default="auto")
    p.add_argument("--ac", action="store_true", help="activation checkpointing")
    p.add_argument("--offload", action="store_true", help="fsdp: CPU offload")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=8, help="global batch rows")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load", type=Path, help="sharded checkpoint to resume from")
    p.add_argument("--save", type=Path, help="sharded checkpoint written after each step in --save-at")
    p.add_argument("--save-at", type=int, nargs="*", default=[])
    p.add_argument("--save-full", type=Path, help="full (single-file) model + optimizer state, after --save-at[0]")
    p.add_argument("--die-at", type=int, help="rank 1 exits abruptly after this step, before saving")
    p.add_argument("--hang-at", type=int, help="rank 1 stops responding (sleeps) after this step")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    env = lparallel.setup(args.device)
    # Different seeds per rank: parallelize must still start every rank from rank 0's weights.
    model = build_model(args.seed + env.rank)
    cfg = lparallel.ParallelConfig(strategy=args.strategy, activation_checkpointing=args.ac,
                               fsdp_cpu_offload=args.offload, mixed_precision=args.precision)
    model = lparallel.parallelize(model, cfg, env)
    micro_of_all_reduce: list[int] = []
    current_micro = [0]
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        count_gradient_all_reduces(model, micro_of_all_reduce, current_micro)
    opt = make_optimizer(model)
    start = 0
    if args.load is not None:
        start = lparallel.load_sharded(args.load, model, opt, env)["step"]

    def on_micro(micro: int) -> None:
        current_micro[0] = micro

    def on_step(step: int) -> None:
        if args.die_at == step and env.rank == 1:
            Path(f"{args.out}.died").write_text(str(time.time()))
            os._exit(1)  # no cleanup, no goodbye to the process group: like a crash or an OOM kill
        if args.hang_at == step and env.rank == 1:
            Path(f"{args.out}.hung").write_text(str(time.time()))
            time.sleep(3600)  # alive but silent, like a rank stuck in I/O: only the collective timeout helps
        if step in args.save_at:
            lparallel.save_sharded(args.save, model, opt, {"step": step + 1}, env)
            if args.save_full is not None and step == args.save_at[0]:
                full = {"model": lparallel.model_state(model), "optim": lparallel.optimizer_state(model, opt)}
                if env.is_main:
                    torch.save(full, args.save_full)

    result = train(model, opt, env, range(start, args.steps), args.rows, args.accum, on_micro, on_step)
    result["micro_of_all_reduce"] = sorted(set(micro_of_all_reduce))
    result["param_dtype"] = str(next(model.parameters()).dtype)
    result["collectives"] = {
        "mean_of_rank": lparallel.all_reduce_mean(float(env.rank), env),
        "sum_of_one": lparallel.all_reduce_sum(1.0, env),
        "max_of_rank": lparallel.all_reduce_max(float(env.rank), env),
        "broadcast": lparallel.broadcast_object(f"from rank {env.rank}", env),
        "gathered": lparallel.all_gather_object(env.rank * 10, env),
    }
    result["world_size"] = env.world_size
    if env.is_main:
        args.out.write_text(json.dumps(result))
    lparallel.teardown(env)


if __name__ == "__main__":
    main()
