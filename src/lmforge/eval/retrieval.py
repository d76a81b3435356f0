"""Sentence embeddings from an encoder, and cosine-similarity retrieval on held-out pairs.

A sentence is encoded as `<cls> tokens <sep>` (each when the tokenizer has it), its embedding is the mean of the
encoder's last hidden states over those tokens, L2-normalised: the one definition shared by contrastive training
(`lmforge.train.objectives.contrastive`), `lmforge embed` and the retrieval evaluation here.

Retrieval: for pair i, query = source i, the candidates are the targets of every pair; the rank of target i among
them by cosine similarity gives top-1 accuracy (rank 1) and the mean reciprocal rank. Ties count against the
query (a candidate scoring the same as the right one ranks above it), so a collapsed model that embeds every
sentence alike scores 1/N, never 1.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.registry import EMBED, families_that, require
from lmforge.parallel import unwrap

EMBED_FORMATS = (".npy", ".jsonl")  # what embed_file writes, by the output's suffix


def frame(ids: Sequence[int], special_ids: dict[str, int]) -> list[int]:
    """`<cls> ids <sep>`, with whichever of the two the tokenizer has."""
    return ([special_ids["cls"]] if "cls" in special_ids else []) + list(ids) + (
        [special_ids["sep"]] if "sep" in special_ids else [])


def framing(special_ids: dict[str, int]) -> int:
    """How many tokens `frame` adds."""
    return int("cls" in special_ids) + int("sep" in special_ids)


def sentence_ids(tok: Tokenizer, texts: Sequence[str], special_ids: dict[str, int], max_len: int, *,
                 truncate: bool = False, what: str = "sentence", where: str | Path | None = None,
                 fix: str = "shorten it, or pass --truncate") -> list[list[int]]:
    """Framed token ids of each text, at most max_len long (cut when truncating, else one line naming the text)."""
    extra = framing(special_ids)
    out = []
    for i, enc in enumerate(tok.encode_batch(list(texts), add_special_tokens=False)):
        ids = enc.ids
        if len(ids) + extra > max_len:
            if not truncate:
                raise UserError(f"{what} {i + 1} has {len(ids) + extra} tokens (with <cls>/<sep>), more than the "
                                f"{max_len} the model's positions allow", where=where, fix=fix)
            ids = ids[:max_len - extra]
        if not ids and not extra:
            raise UserError(f"{what} {i + 1} is empty after tokenisation", where=where)
        out.append(frame(ids, special_ids))
    return out


def encode(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """Unit-norm sentence embeddings (B, C) of padded ids (B, T): masked mean of the hidden states."""
    h = model(ids, attention_mask=mask)
    return F.normalize(unwrap(model).mean_pooled(h.float(), mask), dim=-1)


@torch.no_grad()
def embed(model: nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> Tensor:
    """Embeddings (N, C), float32 on the CPU, of framed id lists, in batches (eval mode is the caller's)."""
    from lmforge.data.examples import pad

    device = next(model.parameters()).device
    # Sorted by length, so a batch pads to nearly its own length; put back in order at the end.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.cfg.d_model)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = pad([seqs[i] for i in chunk], pad_id)
        out[chunk] = encode(model, ids.to(device), mask.to(device)).cpu()
    return out


def retrieval_sums(queries: Tensor, candidates: Tensor, chunk: int = 1024) -> dict[str, Tensor | float]:
    """Additive retrieval statistics of unit vectors where candidates[i] is queries[i]'s match.

    {"top1": queries ranking their match first, "rr": sum of reciprocal ranks (both 0-d tensors on the vectors'
    device, so that a training step reads them without a host sync), "queries": N}; memory N x chunk.
    """
    n = len(queries)
    top1 = torch.zeros((), device=queries.device)
    rr = torch.zeros((), dtype=torch.float64, device=queries.device)
    for s in range(0, n, chunk):
        sim = queries[s:s + chunk].float() @ candidates.float().T  # (c, N)
        rows = torch.arange(sim.shape[0], device=sim.device)
        right = sim[rows, rows + s]
        rank = (sim >= right[:, None]).sum(1)  # the match itself counts once: rank 1 when nothing ties or beats it
        top1 = top1 + (rank == 1).sum()
        rr = rr + (1.0 / rank.double()).sum()
    return {"top1": top1, "rr": rr, "queries": float(n)}


def retrieval_metrics(sums: dict[str, Tensor | float]) -> dict[str, float]:
    """Top-1 accuracy and MRR from (totals of) `retrieval_sums`."""
    n = max(float(sums["queries"]), 1.0)
    return {"top1": float(sums["top1"]) / n, "mrr": float(sums["rr"]) / n}


@dataclass
class RetrievalResult:
    pairs: int
    top1: float
    mrr: float


def evaluate_retrieval(checkpoint: str | Path, pairs: str | Path, *, source_column: str = "source",
                       target_column: str = "target", batch_size: int = 64, device: str = "auto",
                       truncate: bool = False) -> RetrievalResult:
    """Top-1 accuracy and MRR of retrieving each pair's target by its source, among all the file's targets."""
    from lmforge.checkpoints import load_checkpoint_tokenizer, resolve_checkpoint
    from lmforge.data.examples import read_pairs
    from lmforge.data.tokenizer import special_token_ids
    from lmforge.device import pick_device

    path = resolve_checkpoint(checkpoint)
    model, cfg = load_encoder(path, pick_device(device))
    tok = load_checkpoint_tokenizer(path, cfg)
    ids = special_token_ids(tok)
    texts = read_pairs(pairs, source_column, target_column)
    fix = "shorten the texts, or pass truncate=True"
    q = sentence_ids(tok, [s for s, _ in texts], ids, cfg.max_seq_len, truncate=truncate, what="source of pair",
                     where=pairs, fix=fix)
    c = sentence_ids(tok, [t for _, t in texts], ids, cfg.max_seq_len, truncate=truncate, what="target of pair",
                     where=pairs, fix=fix)
    pad_id = ids.get("pad", 0)
    m = retrieval_metrics(retrieval_sums(embed(model, q, pad_id, batch_size), embed(model, c, pad_id, batch_size)))
    return RetrievalResult(pairs=len(texts), top1=m["top1"], mrr=m["mrr"])


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


def embed_file(checkpoint: str | Path, input: str | Path, out: str | Path, *, batch_size: int = 64,
               truncate: bool = False, device: str = "auto") -> tuple[Path, tuple[int, int]]:
    """Embed every line of text file `input` into `out` (.npy float32 array, or .jsonl text + embedding per line).

    The output appears complete or not at all; returns its path and the array's shape (lines, d_model).
    """
    import json

    import numpy as np

    from lmforge.atomic import atomic_file
    from lmforge.checkpoints import load_checkpoint_tokenizer, resolve_checkpoint
    from lmforge.data.tokenizer import special_token_ids
    from lmforge.device import pick_device

    out = Path(out)
    if out.suffix.lower() not in EMBED_FORMATS:
        raise UserError(f"cannot tell the output format of {out}", fix="end --out with .npy or .jsonl")
    path = resolve_checkpoint(checkpoint)
    model, mcfg = load_encoder(path, pick_device(device))
    tok = load_checkpoint_tokenizer(path, mcfg)
    ids = special_token_ids(tok)
    texts = read_sentences(input)
    seqs = sentence_ids(tok, texts, ids, mcfg.max_seq_len, truncate=truncate, what="line", where=input,
                        fix="shorten it, or pass --truncate")
    emb = embed(model, seqs, ids.get("pad", 0), batch_size).numpy().astype(np.float32)
    if out.suffix.lower() == ".npy":
        with atomic_file(out, "wb") as f:
            np.save(f, emb)
    else:
        with atomic_file(out, "w") as f:
            for text, vec in zip(texts, emb):
                f.write(json.dumps({"text": text, "embedding": vec.tolist()}, ensure_ascii=False) + "\n")
    return out, emb.shape


def load_encoder(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """An encoder checkpoint (eval mode) and its config; one line when the checkpoint is of another family."""
    from lmforge.checkpoints import load_model
    from lmforge.models.io import CONFIG

    encoders = ", ".join(f.name for f in families_that(EMBED))
    require(ModelConfig.load(Path(path) / CONFIG), EMBED, needed_for="sentence embeddings", where=path,
            fix=f"pass a checkpoint of family {encoders} (e.g. --preset bert-tiny), e.g. trained by --objective "
                "contrastive")
    model, cfg = load_model(path, device)
    return model, cfg
