"""`lmforge embed`: sentence embeddings from an encoder checkpoint (the library is `lmforge.eval.retrieval`)."""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from lmforge.cli.common import add_verb
from lmforge.config import field, resolve
from lmforge.device import DEVICES
from lmforge.errors import UserError

ORDER = 45
FORMATS = (".npy", ".jsonl")

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
class EmbedConfig:
    checkpoint: str = field("runs/train", "encoder checkpoint directory, or a run directory (uses its best)")
    input: str | None = field(None, "text file (optionally .gz): one sentence per line")
    out: str | None = field(None, "output file: .npy (float32 array) or .jsonl (text + embedding per line)")
    batch_size: int = field(64, "sentences per forward pass")
    truncate: bool = field(False, "cut sentences longer than the model's positions (default: that is an error)")
    device: str = field("auto", "device to run on", choices=DEVICES)

    def __post_init__(self) -> None:
        if not self.input:
            raise UserError("no input file given", fix="pass --input FILE, one sentence per line")
        if not self.out:
            raise UserError("no output file given", fix="pass --out FILE.npy or --out FILE.jsonl")
        if Path(self.out).suffix.lower() not in FORMATS:
            raise UserError(f"cannot tell the output format of {self.out}", fix="end --out with .npy or .jsonl")
        if self.batch_size <= 0:
            raise UserError("batch_size must be positive")


def read_sentences(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (optionally gzipped); a blank line is an error, rows must match lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError("input file not found", where=path, fix="pass --input FILE, one sentence per line")
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.name.lower().endswith(".gz")
              else open(path, encoding="utf-8")) as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"input is not UTF-8 ({e.reason} at byte {e.start})", where=path) from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read input ({e})", where=path) from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            raise UserError(f"line {i} is blank", where=path,
                            fix="remove blank lines: every line is one sentence, and row i of the output is line i")
    if not lines:
        raise UserError("input file holds no sentences", where=path)
    return lines


def run_embed(cfg: EmbedConfig) -> tuple[Path, tuple[int, int]]:
    """Embed cfg.input into cfg.out; returns the output path and the array's shape."""
    import numpy as np

    from lmforge.atomic import atomic_file
    from lmforge.data.tokenizer import load_tokenizer, special_token_ids
    from lmforge.device import pick_device
    from lmforge.eval.retrieval import embed, load_encoder, sentence_ids
    from lmforge.models.io import resolve_checkpoint

    path = resolve_checkpoint(cfg.checkpoint)
    model, mcfg = load_encoder(path, pick_device(cfg.device))
    tok = load_tokenizer(path)
    ids = special_token_ids(tok)
    texts = read_sentences(cfg.input)
    seqs = sentence_ids(tok, texts, ids, mcfg.max_seq_len, truncate=cfg.truncate, what="line", where=cfg.input,
                        fix="shorten it, or pass --truncate")
    emb = embed(model, seqs, ids.get("pad", 0), cfg.batch_size).numpy().astype(np.float32)
    out = Path(cfg.out)
    if out.suffix.lower() == ".npy":
        with atomic_file(out, "wb") as f:
            np.save(f, emb)
    else:
        with atomic_file(out, "w") as f:
            for text, vec in zip(texts, emb):
                f.write(json.dumps({"text": text, "embedding": vec.tolist()}, ensure_ascii=False) + "\n")
    return out, emb.shape


def _main(args: argparse.Namespace) -> int:
    cfg = resolve(EmbedConfig, args)
    out, (n, d) = run_embed(cfg)
    print(f"wrote {n} embeddings of dimension {d} to {out}")
    return 0


def register(sub) -> None:
    add_verb(sub, "embed", EmbedConfig, _main, help="sentence embeddings from an encoder checkpoint",
             description=DESCRIPTION)
