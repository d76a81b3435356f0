"""`lmforge generate`: sample text from a checkpoint, streaming to the terminal."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from lmforge.cli.common import add_verb
from lmforge.config import field, resolve
from lmforge.device import DEVICES
from lmforge.infer.generate import GenerationConfig

ORDER = 40

DESCRIPTION = """\
Generate text from a trained checkpoint (KV-cached; several prompts are batched). A decoder (gpt, llama)
continues each prompt; an encoder-decoder (t5) reads each prompt as its source and writes the output it was
trained to produce (a translation, a summary, the text for span sentinels).

examples:
  lmforge generate --checkpoint runs/quickstart/train "The Python"            # best checkpoint of a run
  lmforge generate --checkpoint runs/train/checkpoints/best "To be" "Once" --temperature 0.7 --top-p 0.9
  lmforge generate --checkpoint runs/train --temperature 0 --max-new-tokens 50    # greedy
  lmforge generate --checkpoint runs/train "Q:" --stop $'\\n\\n' --seed 1        # stop at a blank line
  lmforge generate --checkpoint runs/mt "Ein Mann fährt Fahrrad." --temperature 0  # a seq2seq t5 model
"""


@dataclass
class GenerateConfig(GenerationConfig):
    checkpoint: str = field("runs/quickstart/train", "checkpoint directory, or a run directory (uses its best)")
    prompts: list[str] = field(default_factory=lambda: [""], help="prompts (positional); empty = start a new document")
    device: str = field("auto", "device to run on", choices=DEVICES)
    stream: bool = field(True, "print tokens as they are generated (single prompt)")


def run_generate(cfg: GenerateConfig, verify: bool = True) -> list[str]:
    from lmforge.checkpoints import load_model, resolve_checkpoint
    from lmforge.data.tokenizer import load_tokenizer, special_token_ids
    from lmforge.device import pick_device
    from lmforge.infer.generate import generate

    path = resolve_checkpoint(cfg.checkpoint)
    model, _ = load_model(path, pick_device(cfg.device), verify=verify)
    tokenizer = load_tokenizer(path)
    stream = cfg.stream and len(cfg.prompts) == 1 and sys.stdout.isatty()

    def on_text(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if stream:
        sys.stdout.write(cfg.prompts[0])
    texts = generate(model, tokenizer, cfg.prompts, cfg, special_ids=special_token_ids(tokenizer),
                     on_text=on_text if stream else None)
    if stream:
        sys.stdout.write("\n")
    else:
        for i, (prompt, text) in enumerate(zip(cfg.prompts, texts)):
            if len(texts) > 1:
                sys.stdout.write(f"--- sample {i + 1}\n")
            sys.stdout.write(prompt + text + "\n")
    return texts


def _main(args: argparse.Namespace) -> int:
    positional = vars(args).pop("prompt_args", None)
    verify = not vars(args).pop("no_verify", False)
    cfg = resolve(GenerateConfig, args, **({"prompts": positional} if positional else {}))
    run_generate(cfg, verify=verify)
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "generate", GenerateConfig, _main, help="sample text from a trained model",
                      description=DESCRIPTION)
    parser.add_argument("prompt_args", nargs="*", metavar="PROMPT", help="one or more prompts")
    parser.add_argument("--no-verify", action="store_true",
                        help="load the checkpoint without checking it against its checksums (huge models)")
