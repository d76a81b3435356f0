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


def run_generate(cfg: GenerateConfig) -> list[str]:
    from lmforge.checkpoints import load_model, resolve_checkpoint
    from lmforge.data.tokenizer import load_tokenizer, special_token_ids
    from lmforge.device import pick_device
    from lmforge.infer.generate import generate

    path = resolve_checkpoint(cfg.checkpoint)
    model, _ = load_model(path, pick_device(cfg.device))
    tokenizer = load_tokenizer(path)
    _warn_if_cut(model.cfg, tokenizer, cfg)
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


def _warn_if_cut(mcfg, tokenizer, cfg: GenerateConfig) -> None:
    """One line when the model's context leaves fewer than --max-new-tokens after the longest prompt."""
    from lmforge.models.registry import GENERATE, Kind, can, kind_of

    if not can(mcfg, GENERATE):
        return  # generate() says why in one line
    if kind_of(mcfg) == Kind.ENCODER_DECODER:
        used, what = 1, "the decoder's start token"
    else:
        used = max(len(tokenizer.encode(p, add_special_tokens=False).ids) or 1 for p in cfg.prompts)
        what = f"the {used}-token prompt"
    room = mcfg.max_seq_len - used
    if 0 < room < cfg.max_new_tokens:
        sys.stderr.write(f"lmforge generate: warning: --max-new-tokens {cfg.max_new_tokens} is cut to {room}: the "
                         f"model's context is {mcfg.max_seq_len} tokens and {what} takes {used}\n")


def _main(args: argparse.Namespace) -> int:
    positional = vars(args).pop("prompt_args", None)
    cfg = resolve(GenerateConfig, args, **({"prompts": positional} if positional else {}))
    run_generate(cfg)
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "generate", GenerateConfig, _main, help="sample text from a trained model",
                      description=DESCRIPTION)
    parser.add_argument("prompt_args", nargs="*", metavar="PROMPT", help="one or more prompts")
