"""`lmforge explain`: attention maps, per-token surprise and token attributions for a text (`lmforge.explain`)."""

from __future__ import annotations

import argparse

from lmforge.cli.common import add_verb
from lmforge.config import resolve
from lmforge.explain.report import ExplainConfig

ORDER = 55

DESCRIPTION = """\
Look inside a checkpoint on one text. Writes, into --out:

  attention_<stack>.png    attention weights, a heatmap per layer (rows) and head (columns), tokens on the axes
                           (stack: decoder, encoder, or for t5 encoder / decoder / decoder-cross; not for lstm)
  surprise.html / .json    each token tinted by its surprise -log p (bits or nats); hover a token for its
                           probability, rank and the model's top alternatives (decoders: given the tokens before
                           it; bert: given all the others, with it masked; not for t5)
  attribution.html / .json how much each input token pushed one prediction up (red) or down (blue): integrated
                           gradients or gradient x input on the token embeddings. The prediction is the next
                           token (gpt, llama, lstm), the next-sentence head (bert) or the first decoded token (t5)

and prints the paths. Pages are single self-contained HTML files (no scripts, no network).

examples:
  lmforge explain --checkpoint runs/train "The cat sat on the"                  # everything, into runs/explain
  lmforge explain --checkpoint runs/train "The cat sat on the" --target " mat"  # why (not) " mat"?
  lmforge explain --checkpoint runs/train "def add(a, b):" --what attention --layers -1 --heads 0 1
  lmforge explain --checkpoint runs/train "To be or not" --method grad_x_input --out /tmp/why
  lmforge explain --checkpoint runs/train "Some text" --what surprise --units nats
  lmforge explain --checkpoint runs/bert "A sentence. Another one." --target random --ig-steps 64 --baseline pad
"""


def _main(args: argparse.Namespace) -> int:
    from lmforge.explain.report import explain

    positional = vars(args).pop("text_arg", None)
    cfg = resolve(ExplainConfig, args, **({"text": positional} if positional is not None else {}))
    _replace_invalid_utf8(cfg)
    result = explain(cfg)
    for path in result.files:
        print(path)
    return 0


def _replace_invalid_utf8(cfg: ExplainConfig) -> None:
    """Invalid UTF-8 in the text or target (bytes in the command line) replaced with U+FFFD, as corpora are by
    default (`lmforge.data.corpus.text_under_policy`), with a one-line notice: explain shows what it read."""
    import sys

    from lmforge.data.corpus import text_under_policy

    for name in ("text", "target"):
        value = getattr(cfg, name)
        if isinstance(value, str):
            text = text_under_policy(value, "replace", what=f"the {name}")
            if text != value:
                setattr(cfg, name, text)
                print(f"notice: invalid UTF-8 in the {name} replaced with U+FFFD", file=sys.stderr)


def register(sub) -> None:
    parser = add_verb(sub, "explain", ExplainConfig, _main,
                      help="attention maps, per-token surprise and token attributions for a text",
                      description=DESCRIPTION)
    parser.add_argument("text_arg", nargs="?", metavar="TEXT", help="the text to explain")
