"""The text being explained, as the model reads it and as a person reads it.

Each kind of model reads a text the way it was trained on it: a decoder (or LSTM) after `<eos>` (documents follow an
`<eos>` in the training stream, so the first word is predicted too), a BERT-style encoder as `<cls> text <sep>` when
the tokenizer has both, a T5-style encoder as the bare text. Every token also keeps the span of the original text it
covers (from the tokenizer's offsets), so pages show the text exactly as given, not a re-decoding of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor

from lmforge.data.tokenizer import check_vocab_fits, encode_with_offsets, special_token_ids
from lmforge.data.tokenizer import decoder_start_id as tokenizer_decoder_start_id
from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.registry import Kind, kind_of, text_frame


@dataclass
class Encoded:
    """A text as token ids, with what each token shows of the text."""

    text: str
    ids: list[int]
    pieces: list[str]  # each token's vocabulary spelling ("Ġcat", "##s", "<eos>")
    spans: list[tuple[int, int]]  # the characters of `text` each token shows; (0, 0) for added tokens
    added: list[bool]  # framing tokens the model reads but the text does not hold (<eos> start, <cls>, <sep>)
    token_types: list[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def shown(self, i: int) -> str:
        """Token i's text: its span of the input, else (added tokens, pieces inside one character) its piece."""
        start, end = self.spans[i]
        return self.text[start:end] if end > start and not self.added[i] else self.pieces[i]

    def partial(self, i: int) -> bool:
        """Token i is a byte-level piece of a character that a later token completes (it shows no text)."""
        return not self.added[i] and self.spans[i][1] <= self.spans[i][0]

    def tensor(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.tensor([self.ids], dtype=torch.long, device=device)  # (1, T)

    def types_tensor(self, device: torch.device | str = "cpu") -> Tensor | None:
        if self.token_types is None:
            return None
        return torch.tensor([self.token_types], dtype=torch.long, device=device)


def _spans(offsets: list[tuple[int, int]], n_chars: int) -> list[tuple[int, int]]:
    """Non-overlapping spans from the tokenizer's offsets.

    Offsets may overlap: byte-level BPE splits one character over several tokens, and each reports the whole
    character. The last token touching a character claims it (the one that completes it); earlier ones get an
    empty span and show their piece instead.
    """
    out: list[tuple[int, int]] = []
    limit = n_chars
    for start, end in reversed(offsets):
        end = min(end, limit)
        start = min(start, end)
        out.append((start, end))
        limit = min(limit, start)
    return out[::-1]


def check_text(text: str) -> None:
    if not text:
        raise UserError("no text to explain", fix='pass the text as an argument, e.g. lmforge explain --checkpoint '
                                                 'DIR "The cat sat on the mat"')


def encode_text(tokenizer: Tokenizer, text: str, cfg: ModelConfig) -> Encoded:
    """Tokenise `text` for a model of `cfg`, framed as its kind was trained; UserError if empty or too long."""
    check_text(text)
    ids, pieces, offsets = encode_with_offsets(tokenizer, text)  # long runs without whitespace cut: linear
    if not ids:
        raise UserError(f"the text {text!r} gives no tokens", fix="give some text the tokenizer can read")
    check_vocab_fits(tokenizer.get_vocab_size(), cfg.vocab_size, fix="use the tokenizer saved with this checkpoint")
    spans = _spans(offsets, len(text))
    added = [False] * len(ids)
    special = special_token_ids(tokenizer)

    def frame(before: list[int], after: list[int]) -> None:
        nonlocal ids, pieces, spans, added
        ids = before + ids + after
        pieces = [tokenizer.id_to_token(i) for i in before] + pieces + [tokenizer.id_to_token(i) for i in after]
        spans = [(0, 0)] * len(before) + spans + [(len(text), len(text))] * len(after)
        added = [True] * len(before) + added + [True] * len(after)

    frame(*text_frame(cfg, special))
    kind = kind_of(cfg)
    token_types = [0] * len(ids) if kind == Kind.ENCODER and cfg.type_vocab_size else None
    if len(ids) > cfg.max_seq_len and kind != Kind.RECURRENT:  # a recurrent model has no position limit
        extra = sum(added)
        raise UserError(f"the text is {len(ids) - extra} tokens" + (f" (+{extra} added)" if extra else "")
                        + f", more than the model's {cfg.max_seq_len} positions",
                        fix=f"shorten the text to under {cfg.max_seq_len - extra} tokens")
    return Encoded(text, ids, pieces, spans, added, token_types)


def decoder_start_id(tokenizer: Tokenizer) -> int:
    """The first decoder input of an encoder-decoder: the one it was trained with (see data.tokenizer)."""
    return tokenizer_decoder_start_id(special_token_ids(tokenizer))


def piece_text(tokenizer: Tokenizer, token_id: int) -> str:
    """How one token reads on its own (for predictions): decoded, or its piece when it is part of a character."""
    s = tokenizer.decode([token_id], skip_special_tokens=False)
    return s if s and "\ufffd" not in s else (tokenizer.id_to_token(token_id) or f"#{token_id}")
