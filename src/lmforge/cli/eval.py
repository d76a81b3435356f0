"""`lmforge eval`: perplexity / bits per byte of a checkpoint, or n-gram vs LSTM vs Transformer (`--compare`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from lmforge.cli.common import add_verb
from lmforge.config import field, resolve
from lmforge.errors import UserError
from lmforge.recipes.compare import CompareConfig

ORDER = 35

DESCRIPTION = """\
Score language models on a split of prepared data: perplexity, loss (nats/token) and bits per byte.

With --checkpoint alone: one checkpoint (or a run directory, which uses its best checkpoint) on --split, every
window of it (the exact token-weighted mean). The data must be encoded by the checkpoint's own tokenizer.

With --compare: a Kneser-Ney n-gram model, an LSTM and a Transformer side by side on the same split, as a table,
OUT/compare.png (bar chart) and OUT/compare.json. Models not given as checkpoints are trained here, briefly
(--steps, CPU-friendly), into OUT/lstm and OUT/transformer; a re-run reuses them (delete them to retrain).

examples:
  lmforge eval --checkpoint runs/train --data runs/data                     # val perplexity of the best checkpoint
  lmforge eval --checkpoint runs/train/checkpoints/step_001000 --data runs/data --split test
  lmforge eval --checkpoint runs/train --data runs/data --max-batches 20    # a quick estimate
  lmforge eval --compare --data runs/data                                   # train all three briefly, compare
  lmforge eval --compare --data runs/data --checkpoint runs/train --ngram-order 4
  lmforge eval --compare --data runs/data --lstm-checkpoint runs/lstm --checkpoint runs/train --out runs/cmp
"""


@dataclass
class EvalConfig(CompareConfig):
    compare: bool = field(False, "compare an n-gram model, an LSTM and a Transformer (trained here unless given)")


def run_eval(cfg: EvalConfig) -> int:
    from rich.console import Console

    out = Console(file=sys.stdout, soft_wrap=True)
    if cfg.compare:
        from lmforge.recipes.compare import compare, comparison_table

        result = compare(cfg)
        out.print(comparison_table(result))
        out.print(f"results: {result.json}" + (f"\nchart:   {result.plot}" if result.plot else ""))
        return 0

    from lmforge.eval.perplexity import evaluate_checkpoint

    _refuse_compare_only_flags(cfg)
    if cfg.checkpoint is None:
        raise UserError("no checkpoint given", fix="pass --checkpoint DIR (a checkpoint or a run directory), or "
                                                   "--compare to compare baselines")
    r = evaluate_checkpoint(cfg.checkpoint, cfg.data, cfg.split, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                            max_batches=cfg.max_batches, device=cfg.device, precision=cfg.precision)
    s = r.score
    bpb = "" if s.bpb is None else f" | {s.bpb:.4f} bits/byte"
    out.print(f"{r.checkpoint} on {cfg.split} ({s.tokens:,} tokens, windows of {r.seq_len}): "
              f"loss {s.loss:.4f} | ppl {s.ppl:,.2f}{bpb}", highlight=False)
    return 0


# Settings only --compare reads: given without it, they would be silently ignored.
COMPARE_ONLY = ("lstm_checkpoint", "ngram_order", "out", "steps", "lr", "transformer_preset", "lstm_preset", "seed")


def _refuse_compare_only_flags(cfg: EvalConfig) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
    given = [f"--{name.replace('_', '-')}" for name in COMPARE_ONLY if getattr(cfg, name) != defaults[name]]
    if given:
        raise UserError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with --compare",
                        fix="add --compare, or leave " + ("it" if len(given) == 1 else "them") + " out")


def _main(args: argparse.Namespace) -> int:
    return run_eval(resolve(EvalConfig, args))


def register(sub) -> None:
    add_verb(sub, "eval", EvalConfig, _main, help="perplexity of a checkpoint; n-gram vs LSTM vs Transformer",
             description=DESCRIPTION)
