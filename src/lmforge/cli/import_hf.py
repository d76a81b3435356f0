"""`lmforge import`: a Hugging Face GPT-2, Llama, BERT or T5 model directory as an lmforge checkpoint."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lmforge.cli.common import add_verb
from lmforge.config import Config, field

ORDER = 71

DESCRIPTION = """\
Read a Hugging Face model directory (GPT2LMHeadModel, LlamaForCausalLM, BertForPreTraining or
T5ForConditionalGeneration: config.json and safetensors or pytorch_model.bin weights, sharded or not) and write
an lmforge checkpoint that `lmforge generate`, `train` and `export` take. A BERT saved without its pooler or NSP
head (BertForMaskedLM, BertModel) imports with those heads freshly initialised, and a note says so. Options the
lmforge model cannot express (RoPE scaling, relative BERT positions, ...) are refused with the reason.

examples:
  lmforge import path/to/hf-model --out checkpoints/imported
  lmforge generate --checkpoint checkpoints/imported "Once upon a time"
"""


@dataclass
class ImportOptions(Config):
    out: str | None = field(None, "output checkpoint directory (an earlier model directory there is replaced, "
                                  "anything else is refused)")


def run(args: argparse.Namespace) -> int:
    from lmforge.config import resolve
    from lmforge.errors import UserError
    from lmforge.interop.hf import import_hf

    hf_dir = args.hf_dir
    options = resolve(ImportOptions, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "hf_dir"}))
    if not options.out:
        raise UserError("no output directory given", fix="pass --out DIR")
    out = import_hf(hf_dir, options.out)
    print(f"imported {hf_dir} to {out}")
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "import", ImportOptions, run, help="import a Hugging Face model as a checkpoint",
                      description=DESCRIPTION)
    parser.add_argument("hf_dir", metavar="HF_DIR", help="Hugging Face model directory")
