"""The training loop: one `train(cfg)` for every objective, model family, device and number of processes.

Each step: `grad_accum` micro-batches through the objective's loss, backward (scaled for fp16), unscale, clip,
check the loss and gradient norm are finite, optimizer step, schedule step. Around it the loop calls components:
the objective (batches, loss, eval metrics), the checkpointer, the LR schedule and the logging sinks. The model
never learns it is being trained: devices, precision, compilation and data parallelism (DDP / FSDP2 under
`torchrun`, `lmforge.parallel`) are applied from outside (`runtime`).

Under `torchrun` every rank runs this same loop. Whatever the ranks must agree on (step or skip, evaluate, stop
early) is decided from values reduced over all of them, so they take the same branches and meet in the same
collectives. Rank 0 alone writes the human-facing files (metrics, TensorBoard, plot, config.yaml) and the
checkpoints, from state the other ranks help gather.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge import parallel as lparallel
from lmforge.atomic import atomic_directory, disk_full_as_user_error
from lmforge.checkpoints import is_sharded_checkpoint
from lmforge.config import save_config, to_dict
from lmforge.data.tokenizer import tokenizer_hash
from lmforge.errors import UserError
from lmforge.finetune import apply_method
from lmforge.finetune.adapter import adapter_info
from lmforge.locks import DirectoryLock
from lmforge.models.io import copy_tokenizer_files
from lmforge.progress import console
from lmforge.runtime import Runtime, eval_mode
from lmforge.train.checkpoint import (
    Checkpointer,
    check_compatible,
    load_train_state,
    load_weights,
    step_dir_name,
)
from lmforge.train.config import MAX_CONSECUTIVE_SKIPS, TrainConfig
from lmforge.train.init import init_from
from lmforge.train.logging import NullLogger, RunLogger, peak_flops, plot_loss_curve
from lmforge.train.objectives import Objective, get_objective, total
from lmforge.train.optim import build_optimizer, build_scheduler, lr_factor
from lmforge.train.runtime import (
    parallelize,
    rng_state,
    seed_everything,
    seed_rank,
    set_rng_state,
    setup_runtime,
    teardown,
)


class NonFiniteLoss(UserError):
    """The loss or the gradients became NaN or infinite."""


@dataclass
class Progress:
    """The loop's own counters, saved in every checkpoint."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf  # the best value of the --select-by metric so far
    best_step: int | None = None
    best_loss: float | None = None  # the val loss of that evaluation
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    skipped: int = 0  # non-finite steps skipped (on_nonfinite=skip)
    history: dict[str, list] = field(default_factory=lambda: {"train": [], "val": []})  # for the plot
    # Losses of the steps since the last train log: saved so that a resumed run logs the same means.
    pending: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    out: Path
    step: int  # optimizer steps done (the run's, not only this process's)
    stopped: str  # "completed" or "early_stop"
    train_loss: float | None  # mean over the last log interval
    val: dict[str, float]  # last evaluation: val_loss, val_ppl, val_bpb, ... (empty without a val split)
    best_val_loss: float | None  # the val loss of the best checkpoint's evaluation
    best_step: int | None
    skipped_steps: int
    tokens: int  # training tokens seen by the run (every process's)
    tokens_per_s: float  # training throughput of all processes together (step time only)
    checkpoint: Path | None  # newest step checkpoint
    best_checkpoint: Path | None
    metrics: Path
    plot: Path | None
    config: Path
    tensorboard: Path | None
    history: dict[str, list]
    rank: int = 0  # of this process (0 without torchrun); rank 0 wrote the files named above
    select_by: str = "loss"  # the metric that chose the best checkpoint (without the val_ prefix)
    best_value: float | None = None  # its value there


def train(cfg: TrainConfig, verify: bool = True) -> TrainResult:
    """Train as configured; under `torchrun`, as one of the ranks (joining the process group, then leaving it).

    The run directory is this run's alone while it trains (`lmforge.locks`, taken by rank 0). `verify`: check a
    resumed checkpoint against its checksums (a damaged newest one is passed over for the newest that verifies).
    """
    rt = setup_runtime(cfg.device, cfg.precision, cfg.compile, cfg.parallel)
    clean = False
    try:
        with contextlib.ExitStack() as owned:
            _on_main(rt, lambda: _own_run_directory(Path(cfg.out), owned))
            with disk_full_as_user_error(cfg.out, "the training run"):
                result = _train(cfg, rt, verify)
        clean = True
        return result
    finally:
        # After an error the other ranks may be anywhere: no farewell barrier (torchrun stops them).
        teardown(rt, clean=clean)


def _train(cfg: TrainConfig, rt: Runtime, verify: bool = True) -> TrainResult:
    out = Path(cfg.out)
    # The context the model learns is the checkpoint's to carry (eval scores it, generate warns past it).
    cfg.model.trained_seq_len = cfg.seq_len
    seed_everything(cfg.seed)
    objective = get_objective(cfg.objective)(cfg, rt)
    declared = objective.metric_names()
    if declared is not None:  # else checked at the first evaluation
        selection_value(dict.fromkeys(declared, 0.0), cfg.select_by)
    ckpt = Checkpointer(out / "checkpoints", cfg.keep_last, objective.tokenizer_dir)
    # Before anything is written: a refusal leaves `out` as it was. Rank 0 alone looks (and cleans up after a
    # save that was killed), then tells the others.
    resumed_from = _on_main(rt, lambda: _resume_point(cfg, ckpt, verify))
    # Every checkpoint takes its tokenizer from the run's own copy, made now.
    ckpt.tokenizer_dir = _on_main(rt, lambda: _run_tokenizer(out, objective.tokenizer_dir, resumed_from is not None))
    model = objective.build_model().train()
    init_line = None
    adapting = cfg.finetune.method == "lora"
    # A resumed run has its own weights; a resumed LoRA run its own adapters, on the base loaded again.
    if cfg.init_from and (resumed_from is None or adapting):
        report = init_from(model, cfg.init_from, data=cfg.data)  # on every rank, before sharding
        init_line = report.line() if resumed_from is None else None
        if adapting:
            ckpt.adapter = _on_main(rt, lambda: adapter_info(cfg.finetune.lora_rank, cfg.finetune.lora_alpha,
                                                             cfg.finetune.lora_dropout, cfg.finetune.lora_targets,
                                                             report.source))
    # The hook for fine-tuning methods: what trains (frozen layers, LoRA adapters) is decided here, from outside
    # the model, on the built and initialised model and before `parallelize` wraps it.
    method_line = apply_method(model, cfg.finetune)
    state = None
    if resumed_from is not None:
        state = load_train_state(resumed_from)
        # seq_len itself must match; a checkpoint from before trained_seq_len was recorded has none.
        recorded = dataclasses.replace(cfg.model, trained_seq_len=state["model_config"].get("trained_seq_len"))
        check_compatible(state, recorded, to_dict(cfg), resumed_from, world_size=rt.world_size)
        if not is_sharded_checkpoint(resumed_from):  # (shards load into the parallelized model, in `_restore`)
            load_weights(resumed_from, model)  # the full weights, on every rank, before they are sharded
    step_model = parallelize(model, rt, cfg.parallel)
    # The optimizer after `parallelize`: FSDP replaces the parameters by their shards.
    optimizer = build_optimizer(model, cfg.optim, rt.device)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    scaler = rt.grad_scaler()
    seed_rank(cfg.seed, rt)

    prog = Progress()
    if state is not None:
        # Last: restoring the RNG states must come after everything above that draws random numbers.
        prog = _restore(resumed_from, state, cfg, model, optimizer, scheduler, scaler, objective, rt)
        if prog.step >= cfg.steps and rt.is_main:
            console.print(f"[yellow]{resumed_from.name} is already at step {prog.step} of --steps {cfg.steps}: "
                          f"nothing to train (raise --steps to continue)[/yellow]")
    start_tokens = prog.tokens
    if rt.is_main:
        config_path = save_config(dataclasses.replace(cfg, resume=False), out / "config.yaml")
        peak = peak_flops(rt.device)
        logger: RunLogger | NullLogger = RunLogger(
            out, total_steps=cfg.steps, start_step=prog.step, start_tokens=prog.tokens,
            resume=resumed_from is not None, tensorboard=cfg.tensorboard,
            flops_per_token=cfg.model.flops_per_token(cfg.seq_len),
            peak=peak * rt.world_size if peak else None)  # the tokens counted are every rank's
        if init_line:
            logger.event({"event": "init_from", "checkpoint": str(cfg.init_from), "report": init_line}, init_line)
        if method_line and resumed_from is None:
            logger.event({"event": "finetune", "method": cfg.finetune.method, "report": method_line}, method_line)
        if resumed_from is not None:
            logger.event({"event": "resume", "step": prog.step, "checkpoint": str(resumed_from),
                          "world_size": rt.world_size}, f"resumed from {resumed_from} at step {prog.step}")
    else:
        config_path, logger = out / "config.yaml", NullLogger()

    batches = objective.train_batches()
    stopped, last_val, busy, skips_in_row = "completed", {}, 0.0, 0
    last_ckpt = resumed_from
    try:
        while prog.step < cfg.steps and stopped == "completed":
            lr = optimizer.param_groups[0]["lr"]
            t0 = time.perf_counter()
            loss, grad_norm, tokens = _train_step(step_model, model, objective, batches, optimizer, scaler, rt,
                                                  cfg.grad_accum, cfg.optim.grad_clip)
            scheduler.step()
            busy += time.perf_counter() - t0
            prog.step += 1
            prog.tokens += tokens
            step, last = prog.step, prog.step == cfg.steps
            train_record = {"step": step, "lr": lr, "grad_norm": grad_norm}

            if loss is None:  # non-finite: nothing was applied to the weights
                prog.skipped += 1
                skips_in_row += 1
                _on_nonfinite(cfg, logger, step, lr, grad_norm, skips_in_row, prog.skipped)
            else:
                skips_in_row = 0
                prog.pending.append(loss)
            if step % cfg.log_every == 0 or last:
                _log_train(logger, prog, train_record, busy)
            else:
                logger.step(step)

            if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                metrics = evaluate(model, objective, rt)
                if metrics is not None:
                    last_val = {f"val_{k}": v for k, v in metrics.items()}
                    prog.history["val"].append((step, metrics["loss"]))
                    logger.eval({"step": step, **last_val})
                    value = selection_value(metrics, cfg.select_by)
                    if prog.best_step is None or is_better(value, prog.best_val, cfg.select_by):
                        prog.best_val, prog.best_step, prog.bad_evals = value, step, 0
                        prog.best_loss = metrics["loss"]
                        _save_best(ckpt, cfg, model, {"step": step, **last_val}, rt)
                    else:
                        prog.bad_evals += 1
                    if cfg.early_stop_patience and prog.bad_evals >= cfg.early_stop_patience:
                        stopped = "early_stop"
                        _log_train(logger, prog, train_record, busy)  # the steps since the last log
                        logger.event({"event": "early_stop", "step": step, "best_step": prog.best_step},
                                     f"early stop at step {step}: no better val {selected(cfg.select_by)} in "
                                     f"{prog.bad_evals} "
                                     f"evaluations (best {prog.best_val:.4f} at step {prog.best_step})")

            if step % cfg.checkpoint_every == 0 or last or stopped != "completed":
                last_ckpt = _save(ckpt, step, cfg, prog, model, optimizer, scheduler, scaler, objective, rt)
    except BaseException:
        # The error that stopped the run is the one to report, not one from closing up after it (a full disk).
        with contextlib.suppress(Exception):
            _close_up(logger, prog, out, rt)
        raise
    plot = _close_up(logger, prog, out, rt)

    best = ckpt.root / "best"
    return TrainResult(
        out=out, step=prog.step, stopped=stopped,
        train_loss=prog.history["train"][-1][1] if prog.history["train"] else None,
        val=last_val, best_val_loss=_best_loss(prog, cfg.select_by), best_step=prog.best_step,
        skipped_steps=prog.skipped, tokens=prog.tokens,
        tokens_per_s=(prog.tokens - start_tokens) / busy if busy else 0.0,
        checkpoint=last_ckpt, best_checkpoint=best if best.is_dir() else None, metrics=out / "metrics.jsonl",
        plot=plot, config=config_path,
        tensorboard=out / "tensorboard" if cfg.tensorboard and (out / "tensorboard").is_dir() else None,
        history=prog.history, rank=rt.rank, select_by=selected(cfg.select_by),
        best_value=None if prog.best_step is None else prog.best_val,
    )


def _best_loss(prog: Progress, select_by: str) -> float | None:
    """The val loss of the best checkpoint's evaluation (a run resumed from a checkpoint written before it was
    recorded knows it only when the loss chose)."""
    if prog.best_step is None:
        return None
    if prog.best_loss is None and selected(select_by) == "loss":
        return prog.best_val
    return prog.best_loss


# Metrics for which lower is better; every other metric an objective reports (accuracy, F1, BLEU, ...) is a score.
LOWER_IS_BETTER = frozenset({"loss", "ppl", "bpb"})


def selected(select_by: str) -> str:
    """The metric `--select-by` names, without its optional val_ prefix."""
    return select_by.removeprefix("val_")


def selection_value(metrics: dict[str, float], select_by: str) -> float:
    """The value of the --select-by metric in an evaluation's metrics; one line when the objective reports none."""
    name = selected(select_by)
    if name not in metrics:
        raise UserError(f"--select-by {select_by}: this objective's evaluation reports no '{name}' (it reports: "
                        f"{', '.join(metrics)})", fix="choose one of those (e.g. --select-by val_loss); a seq2seq "
                                                      "run reports bleu, chrf and rouge_* with "
                                                      "--objective-options.generate-eval")
    return metrics[name]


def is_better(value: float, best: float, select_by: str) -> bool:
    return value < best if selected(select_by) in LOWER_IS_BETTER else value > best


def _close_up(logger: RunLogger | NullLogger, prog: Progress, out: Path, rt: Runtime) -> Path | None:
    """Close the run's logs and draw its loss curve (rank 0, when anything was logged)."""
    logger.close()
    if rt.is_main and (prog.history["train"] or prog.history["val"]):
        return plot_loss_curve(prog.history, out / "loss_curve.png")
    return None


def _on_main(rt: Runtime, fn: Callable[[], Any]) -> Any:
    """`fn()` run on rank 0 alone (it reads or tidies shared files), its result or UserError given to every rank."""
    result: Any = None
    if rt.is_main:
        try:
            result = fn()
        except UserError as e:
            result = e
    result = lparallel.broadcast_object(result, rt)
    if isinstance(result, UserError):
        raise result
    return result


def _log_train(logger: RunLogger | NullLogger, prog: Progress, record: dict[str, Any], busy: float) -> None:
    """Log the mean loss of the steps since the last log (none when they were all skipped as non-finite)."""
    if not prog.pending:
        logger.step(record["step"])
        return
    loss = sum(prog.pending) / len(prog.pending)
    prog.history["train"].append((record["step"], loss))
    logger.train({**record, "loss": loss, "tokens": prog.tokens, "skipped": prog.skipped}, busy)
    prog.pending = []


def _train_step(step_model: nn.Module, model: nn.Module, objective: Objective, batches: Iterator[Any],
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rt: Runtime, grad_accum: int,
                grad_clip: float) -> tuple[float | None, float, int]:
    """One optimizer step. Returns (mean loss or None if non-finite and not applied, grad norm, input tokens).

    The loss and the tokens are those of the global batch (every rank's micro-batches); so is the grad norm.
    """
    sums = []
    for micro in range(grad_accum):
        batch = next(batches)
        with rt.no_sync(step_model, sync=micro == grad_accum - 1):
            with rt.autocast():
                out = objective.forward(step_model, batch)
            # Each micro-batch's mean loss / grad_accum: the gradient of the mean over the whole step's batch.
            scaler.scale(out.loss / grad_accum).backward()
        sums.append(out.sums)
    scaler.unscale_(optimizer)  # so clipping and the norm see true gradients (no-op without fp16)
    norm = lparallel.clip_grad_norm_(model, grad_clip)  # over every rank's shards under FSDP
    # One host sync per step: the price of never applying (or checkpointing) an update from a NaN loss. Summed
    # over the ranks, so that all of them see the same loss and agree to step or to skip.
    totals = rt.reduce_sum(total(sums))
    loss = totals["loss"] / max(totals["count"], 1)
    # With fp16 loss scaling, overflowing gradients are routine: the scaler skips that step and lowers its scale.
    finite = math.isfinite(loss) and (math.isfinite(norm) or scaler.is_enabled())
    if finite:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return (loss if finite else None), norm, int(totals.get("tokens", totals["count"]))


def _on_nonfinite(cfg: TrainConfig, logger: RunLogger | NullLogger, step: int, lr: float, grad_norm: float,
                  in_row: int, skipped: int) -> None:
    record = {"event": "nonfinite", "step": step, "lr": lr, "grad_norm": grad_norm, "skipped": skipped}
    fix = ("lower --optim.lr or raise --optim.warmup-steps, keep --optim.grad-clip on, or train in fp32/bf16 "
           "instead of fp16; --resume restarts from the last good checkpoint")
    if cfg.on_nonfinite == "stop":
        logger.event(record)  # no progress message: the error line says it all
        raise NonFiniteLoss(f"training diverged: the loss became NaN or infinite at step {step} (lr {lr:.3g}); "
                            f"no checkpoint was written from it", fix=fix + ", or pass --on-nonfinite skip")
    logger.event(record, f"step {step}: non-finite loss or gradients (lr {lr:.3g}); step skipped "
                         f"({skipped} so far)")
    if in_row >= MAX_CONSECUTIVE_SKIPS:
        raise NonFiniteLoss(f"training diverged: {in_row} non-finite steps in a row up to step {step}", fix=fix)


def evaluate(model: nn.Module, objective: Objective, rt: Runtime) -> dict[str, float] | None:
    """The objective's metrics over one pass of its held-out batches, every rank's share together (None when
    there are none). Collective under a process group."""
    batches = objective.eval_batches()
    if batches is None:
        return None
    sums = []
    fsdp = lparallel.is_fsdp(model)
    with eval_mode(model), rt.autocast():
        for batch, real in _lockstep(batches, rt) if fsdp else ((b, True) for b in batches):
            out = objective.forward(model, batch)
            if real:
                sums.append(out.sums)
    if fsdp:
        lparallel.reshard(model)  # what the forward passes left gathered, before a checkpoint or the next step
    # Gathered as objects, not all-reduced: a rank whose share of a small split is empty has no keys to add.
    totals: dict[str, float] = {}
    for part in lparallel.all_gather_object(total(sums), rt):
        for k, v in part.items():
            totals[k] = totals.get(k, 0.0) + v
    return objective.summarize(totals) if totals else None


def _lockstep(batches: Iterable[Any], rt: Runtime) -> Iterator[tuple[Any, bool]]:
    """(batch, real) until every rank is out of batches; a rank that runs out first repeats its last one (not real).

    Each forward of an FSDP model all-gathers parameters with every rank, so all ranks must make as many.
    """
    it = iter(batches)
    batch = next(it, None)
    if sum(lparallel.all_gather_object(batch is None, rt)) not in (0, rt.world_size):
        raise UserError(f"the val split is too small to give each of the {rt.world_size} processes a batch",
                        fix="prepare with a larger --val-fraction, or run fewer processes")
    last = batch
    while lparallel.all_reduce_max(float(batch is not None), rt):
        if batch is None:
            yield last, False
        else:
            last = batch
            yield batch, True
        batch = next(it, None)


def _save(ckpt: Checkpointer, step: int, cfg: TrainConfig, prog: Progress, model: nn.Module,
          optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler, objective: Objective,
          rt: Runtime) -> Path:
    """A step checkpoint; collective. Single-file: every rank helps gather it, rank 0 writes it. Sharded: every
    rank writes its own shards."""
    sharded = cfg.parallel.sharded_checkpoints
    state = _train_state(cfg, prog, None if sharded else model, optimizer, scheduler, scaler, objective, rt)
    if sharded:
        return ckpt.save_sharded(step, model, optimizer, cfg.model, state, rt)
    plain = lparallel.full_model(model, rt)
    if rt.is_main:
        return ckpt.save(step, plain, cfg.model, state)
    return ckpt.root / step_dir_name(step)


def _save_best(ckpt: Checkpointer, cfg: TrainConfig, model: nn.Module, metrics: dict[str, Any], rt: Runtime) -> None:
    """best/, in the layout of the step checkpoints; collective."""
    if cfg.parallel.sharded_checkpoints:
        ckpt.save_best_sharded(model, metrics, rt)
        return
    plain = lparallel.full_model(model, rt)  # the whole model on rank 0
    if rt.is_main:
        ckpt.save_best(plain, cfg.model, metrics)


def _train_state(cfg: TrainConfig, prog: Progress, model: nn.Module | None, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, objective: Objective, rt: Runtime) -> dict[str, Any]:
    """Everything but the weights that a resumed run needs; collective, complete on rank 0.

    The optimizer state is keyed by parameter names and gathered from the shards, so it loads into any strategy
    and world size (left out without `model`: a sharded checkpoint holds it in its shards). RNG states and data
    positions are per rank, in rank order.
    """
    return {
        "train_config": to_dict(cfg),
        "progress": dataclasses.asdict(prog),
        **({"optimizer": lparallel.optimizer_state(model, optimizer)} if model is not None else {}),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": lparallel.all_gather_object(rng_state(), rt),
        "data": lparallel.all_gather_object(objective.state_dict(), rt),
        "world_size": rt.world_size,
    }


# What a training run directory holds; a non-empty --out with none of them is something else (a model checkpoint,
# prepared data, ...), which a run must not be written into.
RUN_MARKERS = ("checkpoints", "config.yaml", "metrics.jsonl", "tokenizer")


def _own_run_directory(out: Path, owned: contextlib.ExitStack) -> None:
    """Lock `out` for this run (until `owned` closes) and refuse one that holds something other than a run."""
    owned.enter_context(DirectoryLock(out, "train"))
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a directory", where=out, fix="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in RUN_MARKERS):
        what = ("a model checkpoint" if (out / "config.json").is_file() else
                "prepared data" if (out / "manifest.json").is_file() else "files")
        raise UserError(f"holds {what}, not an lmforge training run; refusing to write a run into it", where=out,
                        fix=f"to fine-tune it, pass --init-from {out} --out NEW_DIR; else choose another --out")


def _run_tokenizer(out: Path, data_tokenizer: Path | None, resuming: bool) -> Path | None:
    """The run's own copy of its tokenizer (OUT/tokenizer), which every checkpoint copies: made when the run
    starts, so preparing the data directory again meanwhile cannot change what later checkpoints carry."""
    if data_tokenizer is None or not (Path(data_tokenizer) / "tokenizer.json").is_file():
        return data_tokenizer
    copy = out / "tokenizer"
    if resuming and (copy / "tokenizer.json").is_file():
        if tokenizer_hash(copy) != tokenizer_hash(data_tokenizer):
            raise UserError("the data's tokenizer is not the one this run was trained with", where=data_tokenizer,
                            fix=f"resume on data encoded with {copy} (lmforge prepare --tokenizer-from {copy}), "
                                f"or train a new run with another --out")
        return copy
    with atomic_directory(copy) as tmp:
        copy_tokenizer_files(data_tokenizer, tmp)
    return copy


def _resume_point(cfg: TrainConfig, ckpt: Checkpointer, verify: bool = True) -> Path | None:
    """The checkpoint to resume from; refuses to start over a run that has checkpoints unless resuming.

    The newest checkpoint that verifies (its checksums, or for an older one its files readable): a damaged or
    truncated newest one is passed over, with a warning naming it and the one used.
    """
    if not cfg.resume and (ckpt.latest() is not None or (ckpt.root / "best").is_dir()):
        latest = ckpt.latest()
        raise UserError(f"{cfg.out} already holds a training run (newest checkpoint: "
                        f"{latest.name if latest else 'best'})",
                        fix="pass --resume to continue it, or choose another --out")
    ckpt.remove_stale()
    latest = ckpt.latest()
    if cfg.resume and latest is None:
        console.print(f"[yellow]--resume: no checkpoint in {ckpt.root} yet; starting from scratch[/yellow]")
    if latest is None:
        return None
    bad: list[tuple[Path, str]] = []
    for _, path in reversed(ckpt.steps()):
        problem = ckpt.problem(path, verify)
        if problem is None:
            if bad:
                more = f" (and {len(bad) - 1} newer damaged)" if len(bad) > 1 else ""
                console.print(f"[yellow]--resume: {bad[0][0].name} is damaged ({bad[0][1]}){more}; resuming from "
                              f"{path.name}[/yellow]", soft_wrap=True, highlight=False)
            return path
        bad.append((path, problem))
    raise UserError(f"no checkpoint of this run can be resumed from: the newest, {bad[0][0].name}: {bad[0][1]}",
                    where=ckpt.root, fix="pass --no-verify to skip the checksums, or start a new run with "
                                         "another --out")


def _restore(path: Path, state: dict[str, Any], cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, scaler: torch.amp.GradScaler, objective: Objective, rt: Runtime) -> Progress:
    """Load checkpoint `path`'s training state (and a sharded one's weights); collective under a process group.

    The weights of a single-file checkpoint are in already (loaded before `parallelize`).
    """
    # The optimizer's hyperparameters and the schedule follow this run's options (more --steps, another
    # --optim.lr or --optim.weight-decay, ...): only the moments and step counts come from the checkpoint.
    # Unchanged options give exactly the update the interrupted run would have made next.
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if is_sharded_checkpoint(path):
        lparallel.load_sharded(path, model, optimizer, rt)  # resharded for this run's world size and strategy
    else:
        lparallel.load_optimizer_state(model, optimizer, state["optimizer"])
    for group, h in zip(optimizer.param_groups, hyper, strict=True):
        group.update(h)
    scheduler.load_state_dict(state["scheduler"])
    # Each group's peak lr is this run's (`initial_lr`, set from the options when the scheduler was built).
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_factor(scheduler.last_epoch, cfg.steps, cfg.optim)
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    data, rng = _rank_state(state, objective, rt)
    if data is not None:
        objective.load_state_dict(data)
    if rng is not None:
        set_rng_state(rng)
    return Progress(**state["progress"])


def _rank_state(state: dict[str, Any], objective: Objective, rt: Runtime) -> tuple[Any, Any]:
    """This rank's (data position, RNG state) from a checkpoint saved by `state["world_size"]` ranks.

    Same world size: its own. Another one: an objective whose training stream is the same on any number of ranks
    (`Objective.shared_stream`) continues exactly; with any other, the ranks that existed before continue their
    own streams and new ranks start theirs, so the batches differ from an uninterrupted run's (a warning says so).
    None: keep what this process started with.
    """
    data, rngs, saved = state["data"], state["rng"], int(state.get("world_size", 1))
    if saved == rt.world_size:
        return data[rt.rank], rngs[rt.rank]
    if rt.is_main and not objective.shared_stream:
        console.print(f"[yellow]resuming a {saved}-process run on {rt.world_size}: objective '{objective.name}' "
                      f"draws its training data per process, so the batches from here on are not those of an "
                      f"uninterrupted run[/yellow]")
    rng = rngs[rt.rank] if rt.rank < saved else None
    if objective.shared_stream:
        return data[0], rng
    return (data[rt.rank] if rt.rank < saved else None), rng
