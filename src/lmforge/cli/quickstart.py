"""`lmforge quickstart`: prepare -> train -> baseline -> generate on the built-in corpus (`recipes.quickstart`)."""

from __future__ import annotations

import argparse

from lmforge.cli.common import add_verb
from lmforge.config import resolve
from lmforge.recipes.quickstart import QuickstartConfig

ORDER = 10

DESCRIPTION = """\
The whole pipeline in about five minutes on a laptop CPU, with nothing to download:

  1. prepare   clean Python's own documentation (present on every machine), train a 4096-token byte-level BPE
               tokenizer, encode train/val token shards
  2. train     a tiny GPT (4 layers, 128 wide) under the fast recipe (--recipe: Muon, QK-norm, ReLU², untied
               head, logit soft-cap, warmup-stable-decay; `lmforge train --recipe`) for as many steps as fit in
               --minutes (3.5) on this machine, measured with a few real steps first (compiled with
               torch.compile for budgets of a minute or more); validation along the way; loss curve PNG
  3. baseline  unigram, bigram and trigram Kneser-Ney models on the same tokens: the Transformer must clearly
               beat the unigram; the bigram and trigram show how far a few CPU minutes get
  4. generate  a few samples from the best checkpoint

Outputs go to OUT (default runs/quickstart; replaced on every run): data/, train/ and summary.json.

examples:
  lmforge quickstart                                   # the default: about 4 minutes on 2 CPU cores
  lmforge quickstart --minutes 15                      # train longer
  lmforge quickstart --steps 3000 --preset small       # a fixed number of steps, a bigger model (GPU)
  lmforge quickstart --recipe none                     # lmforge train's defaults instead of the fast recipe
  lmforge quickstart --corpus builtin:tinyshakespeare --out runs/qs-shakespeare
"""


def _main(args: argparse.Namespace) -> int:
    from lmforge.recipes.quickstart import next_steps, quickstart

    result = quickstart(resolve(QuickstartConfig, args))
    print("\n".join(next_steps(result)))
    return 0


def register(sub) -> None:
    add_verb(sub, "quickstart", QuickstartConfig, _main, help="train a small model end to end on the built-in corpus",
             description=DESCRIPTION)
