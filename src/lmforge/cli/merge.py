"""`lmforge merge`: a LoRA adapter checkpoint folded into its base, as a plain checkpoint (docs/finetuning.md)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lmforge.cli.common import add_verb
from lmforge.config import Config, field

ORDER = 65

DESCRIPTION = """\
Merge the LoRA adapters of a `lmforge train --finetune.method lora` run into its base model: the result is a
plain checkpoint (model.safetensors, config.json, the run's tokenizer and chat template) whose logits equal the
adapted model's, which every verb reads and `lmforge export` writes for Hugging Face. The base is the checkpoint
the adapter records (checked by its sha256); --base names it where it has moved.

examples:
  lmforge merge runs/lora --out runs/merged           # a run directory: its best adapter, else its latest
  lmforge merge runs/lora/checkpoints/best --base moved/base --out runs/merged
"""


@dataclass
class MergeOptions(Config):
    out: str | None = field(None, "output checkpoint directory (written atomically)")
    base: str | None = field(None, "the base checkpoint (default: the one the adapter records)")


def run(args: argparse.Namespace) -> int:
    from lmforge.checkpoints import merge_adapter
    from lmforge.config import resolve
    from lmforge.errors import UserError

    adapter = args.adapter
    options = resolve(MergeOptions, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "adapter"}))
    if not options.out:
        raise UserError("no output directory given", fix="pass --out DIR")
    out = merge_adapter(adapter, options.out, base=options.base)
    print(f"merged {adapter} into its base: {out}")
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "merge", MergeOptions, run, help="merge a LoRA adapter into its base model",
                      description=DESCRIPTION)
    parser.add_argument("adapter", metavar="ADAPTER", help="LoRA adapter checkpoint or run directory")
