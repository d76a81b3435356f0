"""KV-cached generation for decoder LMs: several prompts at once (left padding), streaming, stop strings.

Prefill writes the (left-padded) prompts into the cache in one forward; each decode step feeds one token per row.
Padding slots are masked out of attention, and position ids start at 0 at each row's first real token, so a
padded row produces exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import nn

from lmforge.config import field
from lmforge.errors import UserError
from lmforge.infer.sampling import SamplingConfig, sample


@dataclass
class GenerationConfig(SamplingConfig):
    max_new_tokens: int = field(100, "tokens to generate after each prompt")
    stop: list[str] = field(default_factory=list, help="stop a sequence when it produces any of these strings")
    seed: int | None = field(None, "random seed for sampling (default: nondeterministic)")


# on_text(row, new_text) is called as text becomes final, for streaming.
TextCallback = Callable[[int, str], None]


@torch.inference_mode()
def generate_ids(model: nn.Module, prompts: list[list[int]], cfg: GenerationConfig, *, eos_id: int | None = None,
                 pad_id: int = 0, on_step: Callable[[torch.Tensor], bool] | None = None) -> list[list[int]]:
    """Generate continuations (ids only) for token-id prompts. `on_step(next_ids)` may return True to stop early."""
    if model.cfg.family not in ("gpt", "llama"):
        raise UserError(f"generation needs a decoder-only Transformer; this checkpoint is a '{model.cfg.family}' model",
                        fix="generate from a gpt or llama checkpoint (lstm models are scored by `lmforge eval`, "
                            "bert and t5 ones exported with `lmforge export`)")
    device = next(model.parameters()).device
    max_len = model.cfg.max_seq_len
    B, P = len(prompts), max(len(p) for p in prompts)
    if any(len(p) == 0 for p in prompts):
        raise UserError("empty prompt after tokenisation", fix="give at least one token (or let the caller add EOS)")
    if max_len <= P:
        raise UserError(f"prompt of {P} tokens does not fit the model's {max_len}-token context",
                        fix="shorten the prompt")
    new = min(cfg.max_new_tokens, max_len - P)
    S = P + new
    pads = torch.tensor([P - len(p) for p in prompts], device=device)
    idx = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        idx[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
    slots = torch.arange(S, device=device)
    key_mask = slots[None, :] >= pads[:, None]  # (B, S): real tokens only
    seen = torch.zeros(B, model.cfg.vocab_size, dtype=torch.bool, device=device)  # for repetition penalty
    for i, p in enumerate(prompts):
        seen[i, torch.tensor(p, device=device)] = True
    gen = None
    if cfg.seed is not None:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)

    model.setup_cache(B, S)
    try:
        positions = (slots[None, :P] - pads[:, None]).clamp(min=0)
        logits = model(idx, input_pos=slots[:P], positions=positions, key_mask=key_mask)[:, -1]
        out = torch.empty(B, new, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        steps = 0
        for t in range(new):
            nxt = sample(logits, cfg, seen, gen)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out[:, t] = nxt
            steps = t + 1
            seen.scatter_(1, nxt[:, None], True)
            if (on_step is not None and on_step(nxt)) or (eos_id is not None and bool(done.all())):
                break
            if t + 1 < new:
                pos = P + t
                logits = model(nxt[:, None], input_pos=slots[pos:pos + 1],
                               positions=(pos - pads)[:, None], key_mask=key_mask)[:, -1]
    finally:
        model.clear_cache()
    result = []
    for row in out[:, :steps].tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        result.append(row)
    return result


class _Streamer:
    """Turns growing id lists into final text pieces: holds back incomplete UTF-8 and possible stop-string starts."""

    def __init__(self, tokenizer: Tokenizer, n: int, stop: list[str], on_text: TextCallback | None) -> None:
        self.tok, self.stop, self.on_text = tokenizer, stop, on_text
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.sent = [0] * n
        self.stopped = [False] * n
        self.hold = max((len(s) for s in stop), default=1) - 1

    def text(self, i: int) -> str:
        return self.tok.decode(self.ids[i], skip_special_tokens=True)

    def push(self, ids: list[int], final: bool = False) -> bool:
        """Add one token per row; return True when every row has hit a stop string."""
        for i, tid in enumerate(ids):
            if self.stopped[i]:
                continue
            if tid is not None:
                self.ids[i].append(tid)
            text = self.text(i)
            # Text before sent[i] held no stop string: we always hold back len(longest stop) - 1 characters.
            cut = min((c for c in (text.find(s, self.sent[i]) for s in self.stop) if c >= 0), default=-1)
            if cut >= 0:
                self.stopped[i], end = True, cut
            elif final:
                end = len(text)
            else:
                end = len(text) - self.hold
                while end > self.sent[i] and text[end - 1] == "\ufffd":  # an incomplete multi-byte character
                    end -= 1
            if end > self.sent[i]:
                if self.on_text:
                    self.on_text(i, text[self.sent[i]:end])
                self.sent[i] = end
        return bool(self.stop) and all(self.stopped)

    def result(self, i: int) -> str:
        text = self.text(i)
        cuts = [text.find(s) for s in self.stop if text.find(s) >= 0]
        return text[: min(cuts)] if cuts else text


def generate(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], cfg: GenerationConfig, *,
             special_ids: dict[str, int] | None = None, on_text: TextCallback | None = None) -> list[str]:
    """Generate a continuation for each prompt; `on_text(row, piece)` streams text as it is produced."""
    special_ids = special_ids or {}
    eos_id, pad_id = special_ids.get("eos"), special_ids.get("pad", 0)
    start = [eos_id] if eos_id is not None else []  # documents start right after an EOS in training data
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids or start for p in prompts]
    streamer = _Streamer(tokenizer, len(prompts), list(cfg.stop), on_text)
    ids = generate_ids(model, encoded, cfg, eos_id=eos_id, pad_id=pad_id,
                       on_step=lambda nxt: streamer.push(nxt.tolist()))
    # Finished rows (EOS) were fed EOS padding; the streamer saw it as special and skipped it in decode.
    for i, row in enumerate(ids):
        streamer.ids[i] = list(row)
    streamer.push([None] * len(prompts), final=True)
    return [streamer.result(i) for i in range(len(prompts))]
