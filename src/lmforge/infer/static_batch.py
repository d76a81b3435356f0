"""Static-batch prefill and decode: every row of the cache at one shared position, the left-padded way.

Beam search (`beam_search_ids`) keeps num_beams rows per prompt in step and reorders them, and encoder-decoders
run one request at a time in the engine (`lmforge.infer.engine`), so both use these simpler functions; decoders'
sampling runs on the engine's per-row cache.
Decoder-only (GPT, Llama): prefill writes the left-padded prompts into the cache in one forward; each step feeds
one token per row. Padding slots are masked out of attention, and position ids start at 0 at each row's first
real token, so a padded row produces exactly what it would alone.
Encoder-decoder (T5): the right-padded sources are encoded once; the decoder starts from the decoder-start token,
its self-attention cached per position and its cross-attention keys and values computed on the first step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmforge.errors import UserError
from lmforge.models.registry import Kind, kind_of

# Logits (B, V) for the last token fed, given the tokens just chosen (B,) and the output slot they go to.
StepFn = Callable[[torch.Tensor, int], torch.Tensor]


def start(model: nn.Module, prompts: list[list[int]], max_new: int, pad_id: int,
           decoder_start_id: int | None) -> tuple[torch.Tensor, StepFn, int]:
    """Set up the cache for these rows, by the model's kind: first logits, the step function, tokens to make."""
    if kind_of(model.cfg) == Kind.ENCODER_DECODER:
        if decoder_start_id is None:
            raise ValueError("an encoder-decoder needs decoder_start_id (data.tokenizer.decoder_start_id)")
        return encoder_decoder_start(model, prompts, max_new, pad_id, decoder_start_id)
    return decoder_start(model, prompts, max_new, pad_id)


def decoder_start(model: nn.Module, prompts: list[list[int]], max_new: int,
             pad_id: int) -> tuple[torch.Tensor, StepFn, int]:
    """Prefill a decoder's cache with the left-padded prompts: first logits, the step function, tokens to make."""
    device = next(model.parameters()).device
    max_len, B, P = model.cfg.max_seq_len, len(prompts), max(len(p) for p in prompts)
    if max_len <= P:
        raise UserError(f"prompt of {P} tokens does not fit the model's {max_len}-token context",
                        fix="shorten the prompt")
    new = min(max_new, max_len - P)
    slots = torch.arange(P + new, device=device)
    pads = torch.tensor([P - len(p) for p in prompts], device=device)
    idx = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        idx[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
    key_mask = slots[None, :] >= pads[:, None]  # (B, S): real tokens only
    model.setup_cache(B, P + new)
    positions = (slots[None, :P] - pads[:, None]).clamp(min=0)  # each row's first real token is position 0
    first = model(idx, input_pos=slots[:P], positions=positions, key_mask=key_mask)[:, -1]

    def step(nxt: torch.Tensor, t: int) -> torch.Tensor:
        pos = P + t
        return model(nxt[:, None], input_pos=slots[pos:pos + 1], positions=(pos - pads)[:, None],
                     key_mask=key_mask)[:, -1]

    return first, step, new


def encoder_decoder_start(model: nn.Module, sources: list[list[int]], max_new: int, pad_id: int,
                     start_id: int) -> tuple[torch.Tensor, StepFn, int]:
    """Encode the right-padded sources once; the decoder starts from `start_id` and caches as it goes."""
    device = next(model.parameters()).device
    max_len, B, S = model.cfg.max_seq_len, len(sources), max(len(s) for s in sources)
    if S > max_len:
        raise UserError(f"source of {S} tokens does not fit the model's {max_len}-token context",
                        fix="shorten the source text")
    new = min(max_new, max_len - 1)  # slot 0 holds the start token
    src = torch.full((B, S), pad_id, dtype=torch.long, device=device)
    src_mask = torch.zeros(B, S, dtype=torch.bool, device=device)
    for i, s in enumerate(sources):
        src[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        src_mask[i, : len(s)] = True
    memory = model.encode(src, src_mask)  # (B, S, C), read by every step's cross-attention
    model.setup_cache(B, new + 1)
    slots = torch.arange(new + 1, device=device)
    start = torch.full((B, 1), start_id, dtype=torch.long, device=device)
    first = model.decode(start, memory, src_mask, input_pos=slots[:1])[:, -1]

    def step(nxt: torch.Tensor, t: int) -> torch.Tensor:
        return model.decode(nxt[:, None], memory, src_mask, input_pos=slots[t + 1:t + 2])[:, -1]

    return first, step, new
