"""`lmforge export`: an lmforge checkpoint as a Hugging Face model directory (see docs/interop.md), or as a GGUF file
for llama.cpp and Ollama (docs/compression.md)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lmforge.cli.common import add_verb
from lmforge.config import Config, field

ORDER = 70

DESCRIPTION = """\
Write an lmforge checkpoint as a Hugging Face model directory: config.json, model.safetensors,
generation_config.json (generative models) and the tokenizer files. transformers loads it without custom code,
and so can tools that take Hugging Face directories (serve it with vLLM or TGI, convert it for llama.cpp with
convert_hf_to_gguf.py). Each family and head (model.head) becomes the standard class:

  gpt    lm        GPT2LMHeadModel                  AutoModelForCausalLM
  gpt    classify  GPT2ForSequenceClassification    AutoModelForSequenceClassification
  llama  lm        LlamaForCausalLM                 AutoModelForCausalLM
  llama  classify  LlamaForSequenceClassification   AutoModelForSequenceClassification
  bert   lm        BertForPreTraining               AutoModelForPreTraining (MLM + NSP), AutoModelForMaskedLM
  bert   classify  BertForSequenceClassification    AutoModelForSequenceClassification
  bert   span      BertForQuestionAnswering         AutoModelForQuestionAnswering
  t5     lm        T5ForConditionalGeneration       AutoModelForSeq2SeqLM

examples:
  lmforge export runs/train --out exported/            # a run directory: its best checkpoint, else its latest
  lmforge export runs/bert/checkpoints/best --out bert-hf/
  lmforge export runs/lora --format peft --base-hf base-hf/ --out lora-peft/   # a LoRA run's adapter for peft

Options the Hugging Face class cannot express (post-norm GPT, sinusoidal BERT positions, ...) are refused with
the reason, and nothing is written. See docs/interop.md.

--format gguf writes one .gguf file for llama.cpp and Ollama (gpt and llama language models with a byte-level BPE
tokenizer; weights f32, f16, q8_0 or q4_0 with --gguf-type):
  lmforge export runs/train --format gguf --gguf-type q8_0 --out model-q8_0.gguf
  llama-cli -m model-q8_0.gguf -p "The list" -n 64 --temp 0     # llama.cpp
See docs/compression.md.
"""


@dataclass
class ExportOptions(Config):
    out: str | None = field(None, "output directory (an earlier model directory there is replaced, "
                                  "anything else is refused)")
    format: str = field("hf", "output format: hf (a model directory; a LoRA adapter checkpoint is merged into its "
                              "base first), peft (a LoRA adapter checkpoint as a peft adapter for the hf export of "
                              "its base) or gguf (one file for llama.cpp)", choices=("hf", "peft", "gguf"))
    base_hf: str | None = field(None, "peft: the Hugging Face export of the adapter's base, recorded in "
                                      "adapter_config.json as base_model_name_or_path")
    gguf_type: str = field("f16", "--format gguf: weight type of the matrices (norms and biases stay f32)",
                           choices=("f32", "f16", "q8_0", "q4_0"))


def run(args: argparse.Namespace) -> int:
    from lmforge.config import resolve
    from lmforge.errors import UserError
    from lmforge.interop.hf import export_hf, loader_hint

    checkpoint = args.checkpoint
    options = resolve(ExportOptions, argparse.Namespace(**{k: v for k, v in vars(args).items()
                                                             if k != "checkpoint"}))
    if not options.out:
        raise UserError("no output path given", fix="pass --out DIR (--format gguf: --out FILE.gguf)")
    if options.format == "gguf":
        from lmforge.atomic import format_bytes
        from lmforge.interop.gguf import export_gguf, gguf_summary

        out = export_gguf(checkpoint, options.out, options.gguf_type)
        summary = gguf_summary(out)
        print(f"exported {checkpoint} to {out} ({summary['architecture']}, {options.gguf_type}, "
              f"{summary['tensors']} tensors, {summary['vocabulary']:,} tokens, {format_bytes(summary['bytes'])}; "
              f"run with llama.cpp: llama-cli -m {out})")
        return 0
    if options.format == "peft":
        from lmforge.interop.peft import export_peft

        out = export_peft(checkpoint, options.out, base_hf=options.base_hf)
        print(f"exported {checkpoint} to {out} (load with peft.PeftModel.from_pretrained(BASE_MODEL, {out!r}))")
        return 0
    out = export_hf(checkpoint, options.out)
    print(f"exported {checkpoint} to {out} (load with {loader_hint(out)})")
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "export", ExportOptions, run,
                      help="export a checkpoint as a Hugging Face model or a GGUF file",
                      description=DESCRIPTION)
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="lmforge checkpoint directory")
