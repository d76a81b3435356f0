"""`lmforge embed`: sentence embeddings from an encoder checkpoint (the library is `lmforge.eval.retrieval`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from lmforge.cli.common import add_verb
from lmforge.config import Config, field, resolve
from lmforge.device import DEVICES
from lmforge.errors import UserError

ORDER = 45

DESCRIPTION = """\
Embed every line of a text file with an encoder checkpoint (e.g. one trained with --objective contrastive).

Each line is one sentence, encoded as <cls> sentence <sep>; its embedding is the mean of the encoder's last hidden
states over those tokens, L2-normalised, so the dot product of two embeddings is their cosine similarity. Rows
are in line order. --out FILE.npy writes a float32 array (lines x d_model); --out FILE.jsonl one
{"text": ..., "embedding": [...]} object per line. The output appears complete or not at all.

examples:
  lmforge train --data data/prepared --preset bert-tiny --objective contrastive --model.dropout 0.1 --out runs/sim
  lmforge embed --checkpoint runs/sim --input sentences.txt --out emb.npy
  lmforge embed --checkpoint runs/sim/checkpoints/best --input queries.txt.gz --out queries.jsonl --truncate
  python -c "import numpy as np; e = np.load('emb.npy'); print(e @ e.T)"      # cosine similarities
"""


@dataclass
class EmbedConfig(Config):
    checkpoint: str = field("runs/train", "encoder checkpoint directory, or a run directory (uses its best)")
    input: str | None = field(None, "text file (optionally .gz): one sentence per line")
    out: str | None = field(None, "output file: .npy (float32 array) or .jsonl (text + embedding per line)")
    batch_size: int = field(64, "sentences per forward pass", min=1)
    truncate: bool = field(False, "cut sentences longer than the model's positions (default: that is an error)")
    device: str = field("auto", "device to run on", choices=DEVICES)

    def __post_init__(self) -> None:
        if not self.input:
            raise UserError("no input file given", fix="pass --input FILE, one sentence per line")
        if not self.out:
            raise UserError("no output file given", fix="pass --out FILE.npy or --out FILE.jsonl")
        if Path(self.out).suffix.lower() not in (".npy", ".jsonl"):  # as lmforge.eval.retrieval.embed_file writes
            raise UserError(f"cannot tell the output format of {self.out}", fix="end --out with .npy or .jsonl")


def _main(args: argparse.Namespace) -> int:
    from lmforge.eval.retrieval import embed_file

    cfg = resolve(EmbedConfig, args)
    out, (n, d) = embed_file(cfg.checkpoint, cfg.input, cfg.out, batch_size=cfg.batch_size, truncate=cfg.truncate,
                             device=cfg.device)
    print(f"wrote {n} embeddings of dimension {d} to {out}")
    return 0


def register(sub) -> None:
    add_verb(sub, "embed", EmbedConfig, _main, help="sentence embeddings from an encoder checkpoint",
             description=DESCRIPTION)
