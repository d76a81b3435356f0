"""`lmforge generate`: sample text from a checkpoint, streaming to the terminal."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from lmforge.cli.common import add_no_verify, add_verb, verify_wanted
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
  lmforge generate --checkpoint runs/mt "Ein Mann fährt Fahrrad." --num-beams 4 --no-repeat-ngram-size 3
  lmforge generate --checkpoint runs/small "def f" --temperature 0 --draft runs/tiny   # speculative decoding

Beam search (--num-beams N > 1) is Hugging Face's `generate(num_beams=N)`: deterministic, so the sampling options
(--temperature other than 0, --top-k, --top-p, --min-p, --repetition-penalty) are refused with it and --seed does
nothing; the best beam is known only at the end, so its text is printed whole (no streaming), and --stop cuts it.
--length-penalty, --no-repeat-ngram-size and --early-stopping shape beam search only, so without --num-beams N
(N > 1) they are refused. `lmforge eval --task translation / summarisation` and `lmforge predict` take the same
four options.
"""


@dataclass
class GenerateConfig(GenerationConfig):
    checkpoint: str = field("runs/quickstart/train", "checkpoint directory, or a run directory (uses its best)")
    prompts: list[str] = field(default_factory=lambda: [""], help="prompts (positional); empty = start a new document")
    device: str = field("auto", "device to run on", choices=DEVICES)
    stream: bool = field(True, "print tokens as they are generated (single prompt)")
    draft: str | None = field(None, "speculative decoding: a draft checkpoint (or run) trained on the same "
                                    "tokenizer; greedy output stays exactly the same, only faster")
    prompt_lookup: bool = field(False, "speculative decoding by n-gram prompt lookup (no draft model): proposes "
                                       "what followed the latest earlier copy of the last tokens")
    num_speculative: int = field(4, "speculative decoding: tokens proposed per verifying forward", min=1)
    encoding_errors: str = field("replace", "what to do with invalid UTF-8 in a prompt (bytes in the command line "
                                            "or a config file): replace them with U+FFFD and say so, or fail",
                                 choices=("replace", "fail"))


def run_generate(cfg: GenerateConfig, verify: bool = True, stream_asked: bool = False) -> list[str]:
    from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from lmforge.data.tokenizer import special_token_ids
    from lmforge.device import pick_device
    from lmforge.infer.generate import check_beam_options, generate
    from lmforge.models.registry import Kind, kind_of

    check_beam_options(cfg)
    prompts = _prompts(cfg)  # before loading anything: a refusal is immediate
    if cfg.num_beams > 1 and stream_asked:
        _notice(f"notice: no streaming with --num-beams {cfg.num_beams}: the best beam is known only at the end")
    path = resolve_checkpoint(cfg.checkpoint)
    model, model_cfg = load_model(path, pick_device(cfg.device), verify=verify)
    tokenizer = load_checkpoint_tokenizer(path, model_cfg)
    _warn_if_cut(model_cfg, tokenizer, cfg, prompts)
    stream = cfg.stream and cfg.num_beams == 1 and len(prompts) == 1 and sys.stdout.isatty()
    # A decoder continues its prompt, so the prompt is part of the text; an encoder-decoder's output is new text
    # (a translation, a summary), printed alone.
    echo = kind_of(model_cfg) != Kind.ENCODER_DECODER

    def on_text(_row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if stream and echo:
        sys.stdout.write(prompts[0])
    texts = generate(model, tokenizer, prompts, cfg, special_ids=special_token_ids(tokenizer),
                     on_text=on_text if stream else None, on_notice=_notice,
                     speculation=_speculation(cfg, model_cfg, verify))
    if stream:
        sys.stdout.write("\n")
    else:
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            if len(texts) > 1:
                sys.stdout.write(f"--- sample {i + 1}\n")
            sys.stdout.write((prompt if echo else "") + text + "\n")
    return texts


def _speculation(cfg: GenerateConfig, model_cfg, verify: bool):
    """The draft model (loaded like the model, its tokenizer checked by the engine) or prompt lookup; None if off.
    Speculation serves greedy decoding only: with sampling it is left off, and a notice says so."""
    from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from lmforge.device import pick_device
    from lmforge.infer.generate import Speculation

    if cfg.draft is None and not cfg.prompt_lookup:
        return None
    if cfg.temperature > 0 or cfg.num_beams > 1:
        _notice("notice: speculative decoding (--draft / --prompt-lookup) serves greedy decoding "
                "(--temperature 0, --num-beams 1); generating without it")
        return None
    if cfg.draft is None:
        return Speculation(prompt_lookup=True, num_speculative=cfg.num_speculative)
    path = resolve_checkpoint(cfg.draft)
    draft, draft_cfg = load_model(path, pick_device(cfg.device), verify=verify)
    return Speculation(draft=draft, draft_tokenizer=load_checkpoint_tokenizer(path, draft_cfg),
                       num_speculative=cfg.num_speculative)


def _notice(line: str) -> None:
    sys.stdout.flush()
    print(line, file=sys.stderr)


def _prompts(cfg: GenerateConfig) -> list[str]:
    """The prompts under the encoding_errors policy of corpora (`lmforge.data.corpus.text_under_policy`)."""
    from lmforge.data.corpus import text_under_policy

    prompts, replaced = [], 0
    for i, p in enumerate(cfg.prompts):
        what = "the prompt" if len(cfg.prompts) == 1 else f"prompt {i + 1}"
        text = text_under_policy(p, cfg.encoding_errors, what=what, option="--encoding-errors")
        assert text is not None  # (no skip policy for prompts)
        replaced += text != p
        prompts.append(text)
    if replaced:
        _notice(f"notice: invalid UTF-8 in {replaced} prompt(s) replaced with U+FFFD (--encoding-errors fail "
                f"to refuse instead)")
    return prompts


def _warn_if_cut(mcfg, tokenizer, cfg: GenerateConfig, prompts: list[str]) -> None:
    """One line when the model's context leaves fewer than --max-new-tokens after the longest prompt."""
    from lmforge.data.tokenizer import encode_ids
    from lmforge.models.registry import GENERATE, Kind, can, kind_of

    if not can(mcfg, GENERATE):
        return  # generate() says why in one line
    if kind_of(mcfg) == Kind.ENCODER_DECODER:
        used, what = 1, "the decoder's start token"
    else:
        used = max(len(encode_ids(tokenizer, p)) or 1 for p in prompts)
        what = f"the {used}-token prompt"
    room = mcfg.max_seq_len - used
    if 0 < room < cfg.max_new_tokens:
        sys.stderr.write(f"lmforge generate: warning: --max-new-tokens {cfg.max_new_tokens} is cut to {room}: the "
                         f"model's context is {mcfg.max_seq_len} tokens and {what} takes {used}\n")


def _main(args: argparse.Namespace) -> int:
    positional = vars(args).pop("prompt_args", None)
    verify = verify_wanted(args)
    stream_asked = vars(args).get("stream") is True  # given on the command line (unset flags are absent)
    cfg = resolve(GenerateConfig, args, **({"prompts": positional} if positional else {}))
    run_generate(cfg, verify=verify, stream_asked=stream_asked)
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "generate", GenerateConfig, _main, help="sample text from a trained model",
                      description=DESCRIPTION)
    parser.add_argument("prompt_args", nargs="*", metavar="PROMPT", help="one or more prompts")
    add_no_verify(parser)
