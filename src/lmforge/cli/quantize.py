"""`lmforge quantize`: int8 / int4 weight-only quantisation of a checkpoint, with what it cost and bought (the library
is `lmforge.compress.quantize`; the workflow `lmforge.recipes.compress`)."""

from __future__ import annotations

import argparse

from lmforge.cli.common import add_verb
from lmforge.recipes.compress import QuantizeConfig

ORDER = 72

DESCRIPTION = """\
Quantise a checkpoint's linear layers to int8 (one scale per output channel) or int4 (a scale and an offset per
group of input columns), weights only: activations stay float, each layer dequantises its weight as it runs. The
layers are swapped from outside the model, and the result is an ordinary checkpoint directory (quantization.json
beside config.json) that every verb loads: generate, eval, serve. Reports size on disk, perplexity before and
after (with --data) and greedy batch-1 decode speed.

examples:
  lmforge quantize runs/train --bits 8 --out runs/int8 --data runs/data
  lmforge quantize runs/train --bits 4 --group-size 32 --out runs/int4 --data runs/data --max-batches 20
  lmforge generate --checkpoint runs/int8 "The list" --temperature 0

Transformer checkpoints only (gpt, llama, bert, t5): an LSTM has no linear layers worth quantising. A tied output
projection stays float (it is the embedding table). See docs/compression.md.
"""


def _main(args: argparse.Namespace) -> int:
    from lmforge.atomic import format_bytes
    from lmforge.config import resolve
    from lmforge.recipes.compress import quantize_checkpoint

    checkpoint = args.checkpoint
    cfg = resolve(QuantizeConfig, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "checkpoint"}))
    report = quantize_checkpoint(checkpoint, cfg)
    before, after = report.before, report.after
    print(f"quantised {report.checkpoint} to {report.out}: {report.spec.name}, {len(report.spec.layers)} linear "
          f"layers swapped")
    print(f"  size on disk:  {format_bytes(before.bytes)} -> {format_bytes(after.bytes)} "
          f"({before.bytes / after.bytes:.2f}x smaller)")
    if before.ppl is not None and after.ppl is not None:
        print(f"  perplexity:    {before.ppl:.3f} -> {after.ppl:.3f} ({(after.ppl / before.ppl - 1) * 100:+.2f}%) "
              f"on the val split of {cfg.data}")
    else:
        print("  perplexity:    not measured (pass --data DIR)")
    if before.tokens_per_s and after.tokens_per_s:
        print(f"  decode speed:  {before.tokens_per_s:,.0f} -> {after.tokens_per_s:,.0f} tokens/s "
              f"({after.tokens_per_s / before.tokens_per_s:.2f}x; greedy, batch 1, {cfg.new_tokens} new tokens)")
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "quantize", QuantizeConfig, _main, help="int8 / int4 weight-only quantisation",
                      description=DESCRIPTION)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory, or a run directory")
