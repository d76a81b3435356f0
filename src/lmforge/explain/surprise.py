"""Per-token surprise: how unexpected each token of a text was to the model, -log p(token), in nats or bits.

A decoder scores each token given the ones before it (the causal LM loss, token by token). A masked LM scores
each token given all the others with it masked out, one copy of the text per token: the pseudo-log-likelihood of
Salazar et al. (2020), the usual per-token score for BERT-style models. Either way every scored token also keeps
its probability, its rank and the model's top alternatives at that position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.data.tokenizer import special_token_ids
from lmforge.errors import UserError
from lmforge.explain.inputs import Encoded, piece_text
from lmforge.explain.page import Scale, render
from lmforge.models.config import ModelConfig
from lmforge.models.registry import CLASSIFY, FILL_MASK, SCORE, can, describe

UNITS = {"nats": 1.0, "bits": 1.0 / math.log(2)}


@dataclass
class TokenSurprise:
    index: int
    id: int
    text: str
    nats: float | None  # None: not predicted (an added token, or a decoder's first token with nothing before it)
    prob: float | None = None
    rank: int | None = None  # 1 = the model's top prediction
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (id, text, probability), most likely first


@dataclass
class Surprise:
    method: str  # "next-token" or "masked"
    tokens: list[TokenSurprise]

    def scored(self) -> list[TokenSurprise]:
        return [t for t in self.tokens if t.nats is not None]

    def mean_nats(self) -> float:
        scored = self.scored()
        return sum(t.nats for t in scored) / max(len(scored), 1)


def _score(log_probs: Tensor, targets: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log_probs (N, V) and targets (N,) -> nats (N,), ranks (N,), top ids (N, k), top probabilities (N, k)."""
    own = log_probs.gather(1, targets[:, None])  # (N, 1)
    ranks = (log_probs > own).sum(1) + 1
    top = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
    return -own[:, 0], ranks, top.indices, top.values.exp()


@torch.no_grad()
def next_token_surprise(model: nn.Module, ids: Tensor, top_k: int = 5) -> tuple[Tensor, ...]:
    """Decoder: for ids (1, T), the scores of tokens 1..T-1 given their prefixes (see `_score`), each (T-1, ...)."""
    log_probs = model(ids)[0, :-1].float().log_softmax(-1)  # position t predicts token t + 1
    return _score(log_probs, ids[0, 1:], top_k)


@torch.no_grad()
def masked_surprise(model: nn.Module, ids: Tensor, positions: list[int], mask_id: int, *,
                    token_types: Tensor | None = None, top_k: int = 5, batch_size: int = 32) -> tuple[Tensor, ...]:
    """Masked LM: for ids (1, T), the scores of the tokens at `positions`, each with itself masked out."""
    out = []
    for chunk in range(0, len(positions), batch_size):
        pos = torch.tensor(positions[chunk:chunk + batch_size], device=ids.device)
        batch = ids.repeat(len(pos), 1)  # one copy of the text per scored token
        batch[torch.arange(len(pos)), pos] = mask_id
        types = None if token_types is None else token_types.expand(len(pos), -1)
        hidden = model(batch, token_types=types)  # (N, T, C)
        logits = model.mlm_logits(hidden[torch.arange(len(pos)), pos])  # (N, V)
        out.append(_score(logits.float().log_softmax(-1), ids[0, pos], top_k))
    return tuple(torch.cat(parts) for parts in zip(*out))


def unsupported(cfg: ModelConfig, tokenizer: Tokenizer) -> str | None:
    """Why a model of `cfg` with `tokenizer` gets no surprise page, or None when it does."""
    if can(cfg, CLASSIFY):
        return "a sequence classifier predicts classes, not tokens"
    if can(cfg, FILL_MASK) and "mask" not in special_token_ids(tokenizer):
        return "per-token surprise of a masked LM needs a <mask> token, and this tokenizer has none"
    if not (can(cfg, SCORE) or can(cfg, FILL_MASK)):
        return f"per-token surprise needs a next-token model or a masked LM; this checkpoint is {describe(cfg)}"
    return None


def token_surprise(model: nn.Module, tokenizer: Tokenizer, enc: Encoded, *, top_k: int = 5) -> Surprise:
    """The surprise of every token of `enc` under `model` (a decoder LM or a BERT-style masked LM)."""
    reason = unsupported(model.cfg, tokenizer)
    if reason:
        raise UserError(reason, fix="leave surprise out of --what")
    device = next(model.parameters()).device
    ids = enc.tensor(device)
    tokens = [TokenSurprise(i, enc.ids[i], enc.shown(i), None) for i in range(len(enc))]
    if can(model.cfg, SCORE):
        method, scored = "next-token", [i for i in range(1, len(enc)) if not enc.added[i]]
        nats, ranks, top_ids, top_p = next_token_surprise(model, ids, top_k)
        rows = [i - 1 for i in scored]
    else:  # a masked LM
        method, scored = "masked", [i for i in range(len(enc)) if not enc.added[i]]
        nats, ranks, top_ids, top_p = masked_surprise(model, ids, scored, special_token_ids(tokenizer)["mask"],
                                                      top_k=top_k, token_types=enc.types_tensor(device))
        rows = list(range(len(scored)))
    for i, r in zip(scored, rows):
        t = tokens[i]
        t.nats, t.rank = float(nats[r]), int(ranks[r])
        t.prob = math.exp(-t.nats)
        t.top = [(int(j), piece_text(tokenizer, int(j)), float(p)) for j, p in zip(top_ids[r], top_p[r])]
    return Surprise(method, tokens)


def surprise_page(s: Surprise, enc: Encoded, *, units: str = "bits", title: str = "Per-token surprise") -> str:
    """The HTML page: tokens tinted by surprise, hover for probability, rank and the top predictions."""
    k = UNITS[units]
    scores = [None if t.nats is None else t.nats * k for t in s.tokens]
    hovers = []
    for t, v in zip(s.tokens, scores):
        head = f"{t.text!r} (id {t.id}{', part of a character' if enc.partial(t.index) else ''})"
        if v is None:
            hovers.append(f"{head}: not scored (" + ("added by the model's framing)" if enc.added[t.index]
                                                       else "nothing before it to predict it from)"))
            continue
        alts = ", ".join(f"{text!r} {p:.3f}" for _, text, p in t.top)
        hovers.append(f"{head}: {v:.2f} {units}, p = {t.prob:.4f}, rank {t.rank}\ntop predictions: {alts}")
    scored = [v for v in scores if v is not None]
    mean = sum(scored) / max(len(scored), 1)
    how = ("each token given the ones before it" if s.method == "next-token"
           else "each token given all the others, with it masked (pseudo-log-likelihood)")
    summary = [("scored tokens", str(len(scored))),
               (f"mean surprise ({units}/token)", f"{mean:.3f}" if scored else "-"),
               ("perplexity", f"{math.exp(s.mean_nats()):.2f}" if scored else "-"), ("method", how)]
    scale = Scale(vmax=max(scored, default=1.0) or 1.0, label=f"surprise ({units})")
    return render(title, enc, scores, hovers, scale, summary=summary,
                  note="Surprise = -log p(token). Hover over a token for its probability, its rank among the "
                       "model's predictions and the top alternatives.")


def surprise_json(s: Surprise, *, units: str = "bits") -> dict:
    k = UNITS[units]
    scored = bool(s.scored())
    return {
        "method": s.method, "units": units, "mean": s.mean_nats() * k if scored else None,
        "perplexity": math.exp(s.mean_nats()) if scored else None,
        "tokens": [{"index": t.index, "id": t.id, "text": t.text,
                    "surprise": None if t.nats is None else t.nats * k, "prob": t.prob, "rank": t.rank,
                    "top": [{"id": j, "text": text, "prob": p} for j, text, p in t.top]} for t in s.tokens],
    }
