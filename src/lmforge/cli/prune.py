"""`lmforge prune`: the sparsity -> perplexity table of a checkpoint, magnitude and 2:4 (the library is
`lmforge.compress.prune`; the workflow `lmforge.recipes.compress`)."""

from __future__ import annotations

import argparse

from lmforge.cli.common import add_verb
from lmforge.recipes.compress import PruneConfig

ORDER = 73

DESCRIPTION = """\
Prune a checkpoint's linear layers at several levels and print the validation perplexity each leaves. A level is
a sparsity in [0, 1) (magnitude pruning: the smallest weights become zero, with one threshold over every layer, or
--scope layer for the same fraction of each) or 2:4 (in every 4 consecutive weights of a row, the 2 smallest
become zero: the pattern sparse tensor cores run). --recover-steps N fine-tunes each pruned model N steps with the
one trainer (--init-from) with the pruned weights held at zero throughout (their gradients are masked, so only the
kept weights move), adding columns after recovery.

examples:
  lmforge prune runs/train --data runs/data
  lmforge prune runs/train --data runs/data --levels 0.5 --levels 2:4 --recover-steps 200 --out runs/pruned

Pruned weights are zeros in a dense checkpoint (--out writes OUT/<level>/pruned and /recovered): no smaller on
disk, and no faster on a CPU. See docs/compression.md.
"""


def _main(args: argparse.Namespace) -> int:
    from rich.table import Table

    from lmforge.config import resolve
    from lmforge.progress import console
    from lmforge.recipes.compress import prune_checkpoint

    checkpoint = args.checkpoint
    cfg = resolve(PruneConfig, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "checkpoint"}))
    rows = prune_checkpoint(checkpoint, cfg)
    recovered = any(r.recovered_ppl is not None for r in rows)
    title = f"validation split of {cfg.data} (magnitude pruning: {cfg.scope}" + (
        f"; recovered: {cfg.recover_steps} fine-tune steps, the zeros held)" if recovered else ")")
    table = Table(title=title, title_justify="left")
    columns = ["pruned", "sparsity", "perplexity", "bits/byte"]
    if recovered:
        columns += ["recovered", "bits/byte", "sparsity after"]
    for col in columns:
        table.add_column(col, justify="left" if col == "pruned" else "right")
    for r in rows:
        cells = [r.level, f"{r.sparsity:.1%}", f"{r.ppl:.2f}", f"{r.bpb:.3f}" if r.bpb is not None else "-"]
        if recovered:
            cells += [f"{r.recovered_ppl:.2f}" if r.recovered_ppl is not None else "-",
                      f"{r.recovered_bpb:.3f}" if r.recovered_bpb is not None else "-",
                      f"{r.recovered_sparsity:.1%}" if r.recovered_sparsity is not None else "-"]
        table.add_row(*cells)
    console.print(table, highlight=False)
    if cfg.out:
        print(f"pruned checkpoints: {cfg.out}/<level>/pruned" + (" and /recovered" if recovered else ""))
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "prune", PruneConfig, _main, help="pruning: the sparsity -> perplexity table",
                      description=DESCRIPTION)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory, or a run directory")
