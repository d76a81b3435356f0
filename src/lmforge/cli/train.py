"""`lmforge train`: train a model on prepared data (the loop is `lmforge.train.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.common import add_no_verify, add_verb, verify_wanted
from lmforge.config import resolve
from lmforge.models.registry import CLASSIFY, EMBED, GENERATE, SCORE, Kind, can, kind_of
from lmforge.parallel import record
from lmforge.train.config import TrainConfig

ORDER = 30

DESCRIPTION = """\
Train a language model on a directory made by `lmforge prepare`.

The model starts from a preset (--preset, default tiny); any model.* option overrides the preset's value, and the
vocabulary size comes from the data's tokenizer. --recipe NAME starts from a named set of options shipped with
lmforge (fast: Muon for the hidden matrices, QK-norm, ReLU², untied head, logit soft-cap, warmup-stable-decay;
nanogpt-cpu: nanoGPT's README CPU run); --config and flags override it (docs/recipes.md). AdamW (or Muon with
AdamW: --optim.name muon) with linear warmup then a schedule (--optim.schedule, wsd included), gradient
accumulation (--grad-accum) and clipping (--optim.grad-clip). On CUDA the run uses bf16 autocast (fp16
with loss scaling on GPUs without bf16) and torch.compile (--no-compile to skip it); on a CPU, fp32.

Outputs in OUT: checkpoints/step_NNNNNN (weights, config, tokenizer and the training state; the newest
--keep-last are kept) and checkpoints/best (lowest val loss), metrics.jsonl, tensorboard/, loss_curve.png and the
effective config.yaml. Every --eval-every steps the val split gives loss, perplexity and bits per byte;
--early-stop-patience N stops after N evaluations without a better val loss. A NaN/inf loss stops the run
(exit status 2) unless --on-nonfinite skip. With --resume a killed run continues exactly where its last
checkpoint left it.

Several GPUs (or processes): start the same command under torchrun. Each process trains on --batch-size sequences
of a global batch N times as large, with DDP (the default: the model replicated) or FSDP2 (--parallel.strategy
fsdp: parameters, gradients and optimizer state sharded). --parallel.activation-checkpointing recomputes each
block's activations in the backward pass (less memory, about a third more compute; also on one process).
Checkpoints stay single files that every other verb reads, and resume on any number of processes that keeps the
global batch (pass --batch-size accordingly). Details: docs/distributed.md.

examples:
  lmforge train --data data/prepared --out runs/tiny                       # tiny preset, default schedule
  lmforge train --data data/prepared --out runs/deeper --model.n-layer 6 --model.dropout 0.1
  lmforge train --data data/prepared --preset llama-tiny --steps 5000 --optim.lr 3e-4 --optim.schedule linear
  lmforge train --data data/prepared --batch-size 8 --grad-accum 4 --eval-every 100 --early-stop-patience 5
  lmforge train --data data/prepared --out runs/fast --recipe fast --steps 800   # Muon, QK-norm, WSD, ...
  lmforge train --out runs/tiny --resume                                   # continue a run (its config.yaml)
  lmforge train --out runs/tiny --resume --steps 4000                      # ... and train it for longer
  lmforge train --config my_run.yaml --batch-size 32                       # YAML file, flags override it
  tensorboard --logdir runs/tiny/tensorboard                               # watch the curves
  torchrun --standalone --nproc_per_node 8 -m lmforge train --data data/prepared --out runs/ddp --batch-size 16
  torchrun --standalone --nproc_per_node 8 -m lmforge train --data data/prepared --out runs/fsdp --preset \\
      gpt2-350m --parallel.strategy fsdp --parallel.activation-checkpointing   # shard, recompute activations
  lmforge train --out runs/ddp --resume --batch-size 128                   # the 8-GPU run, continued on one
"""


# What a run's last evaluation may report beside its loss (whatever the objective), as the summary prints it.
TASK_METRICS = {"val_bpb": "{:.3f} bits/byte", "val_accuracy": "accuracy {:.4f}", "val_f1": "macro-F1 {:.4f}",
                "val_exact_match": "exact match {:.4f}", "val_bleu": "BLEU {:.2f}", "val_chrf": "chrF {:.2f}",
                "val_rouge_l": "ROUGE-L {:.4f}"}


@record  # under torchrun, a rank's exception shows in torchrun's failure summary
def train_and_report(args: argparse.Namespace) -> int:
    """Train as `args` (the verb's flags) say and print the summary; `lmforge distill` runs it too."""
    from lmforge.train.trainer import train

    verify = verify_wanted(args)
    # `--resume` without `--config` continues the run under its own effective config; flags still override it.
    config = None
    if getattr(args, "resume", False) and getattr(args, "config", None) is None:
        saved = Path(getattr(args, "out", TrainConfig.out)) / "config.yaml"
        config = saved if saved.is_file() else None
    cfg = resolve(TrainConfig, args, config=config)
    result = train(cfg, verify=verify)
    if result.rank != 0:
        return 0  # the summary once, from the rank that wrote what it names

    lines = [f"trained {result.step} steps ({result.stopped.replace('_', ' ')})"]
    if result.val:
        val = result.val
        shown = dict(TASK_METRICS, **({"val_f1": "F1 {:.4f}"} if "val_exact_match" in val else {}))  # QA's token F1
        lines[0] += f": val loss {val['val_loss']:.4f}" + "".join(
            ", " + form.format(val[key]) for key, form in shown.items() if key in val)
    if result.skipped_steps:
        lines.append(f"  skipped non-finite steps: {result.skipped_steps}")
    lines += [f"  checkpoint:  {result.checkpoint}"]
    if result.best_checkpoint is not None:
        loss = "" if result.best_val_loss is None else f"val loss {result.best_val_loss:.4f}"
        chosen = loss if result.select_by == "loss" else f"val {result.select_by} {result.best_value:.4f}" + (
            f", {loss}" if loss else "")
        lines.append(f"  best:        {result.best_checkpoint} ({chosen} at step {result.best_step})")
    lines.append(f"  metrics:     {result.metrics}")
    if result.tensorboard is not None:
        lines.append(f"  tensorboard: {result.tensorboard}")
    if result.plot is not None:
        lines.append(f"  loss curve:  {result.plot}")
    lines.append(f"  config:      {result.config}")
    lines.append("next: " + _next_command(cfg, result.out))
    print("\n".join(lines))
    return 0


def _next_command(cfg: TrainConfig, out: Path) -> str:
    """What to do with this kind of model next."""
    model, kind = cfg.model, kind_of(cfg.model)
    if kind is Kind.DECODER and can(model, GENERATE):
        return f"lmforge generate --checkpoint {out}"
    if kind is Kind.ENCODER_DECODER and cfg.objective == "seq2seq":
        return f'lmforge generate --checkpoint {out} "a source text" --temperature 0'
    if can(model, CLASSIFY):
        return (f"lmforge eval --task classification --checkpoint {out} --file HELD_OUT.tsv   # accuracy, macro-F1, "
                f"confusion matrix")
    if can(model, SCORE):
        return f"lmforge eval --checkpoint {out} --data {cfg.data}"
    if can(model, EMBED) and cfg.objective == "contrastive":
        return f"lmforge embed --checkpoint {out} --input sentences.txt --out emb.npy"
    return f"lmforge export {out} --out {out}-hf   # a Hugging Face directory"


def register(sub) -> None:
    parser = add_verb(sub, "train", TrainConfig, train_and_report, help="train a model on prepared data",
                      description=DESCRIPTION)
    add_no_verify(parser, "--resume")
