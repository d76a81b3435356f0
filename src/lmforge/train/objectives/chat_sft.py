"""Chat supervised fine-tuning (`chat_sft`) of decoders: next-token loss on the assistants' answers only.

The conversations are a JSONL file, one `{"messages": [{"role": ..., "content": ...}, ...]}` per line
(`--objective-options.chats`); the prepared data directory (`--data`) supplies the tokenizer, to which the chat
tokens are added (`lmforge.data.chat`; the model's vocabulary grows by them, also from an `--init-from`
checkpoint). Each conversation is rendered by the one chat template and tokenized whole, as a server will; the
tokens inside the template's `{% generation %}` blocks (each answer with its `<|end|>`) are trained, nothing else.

Two failures the field knows are refused before training starts: a template whose mask selects no token (TRL's
`assistant_only_loss` silently trains on nothing when a template lacks generation markers) and one whose mask
leaves the end-of-turn tokens out (the model then never learns to stop). `--objective-options.show-mask` prints
the first training conversation with its trained tokens highlighted.

Packing (on by default): the conversations of a batch are packed into as few rows of `seq_len` tokens as they fit
(first fit, longest first), each row's documents kept apart by a document mask and their own positions
(`DecoderLM.forward(segments=...)`), so the loss is the unpacked batch's (tested) on fewer padded tokens. The
checkpoint's tokenizer carries the chat tokens and the template (`tokenizer_config.json`), which the Hugging Face
export keeps.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import field
from lmforge.data.chat import (
    CHAT_TEMPLATE,
    END_OF_TURN,
    add_chat_tokens,
    encode_chat,
    missing_chat_tokens,
    read_chats,
    save_chat_tokenizer,
)
from lmforge.errors import UserError
from lmforge.eval.metrics import IGNORE_INDEX
from lmforge.models.registry import Kind
from lmforge.train.objectives import Objective, Options, Output, register
from lmforge.train.objectives.options import require_vocab
from lmforge.train.objectives.seq2seq import ExampleBatches


@dataclass
class ChatSFTOptions(Options):
    chats: str | None = field(None, 'JSONL file of conversations, one {"messages": [{"role", "content"}, ...]} per '
                                    "line (roles system, user, assistant)")
    chats_val_fraction: float = field(0.1, "fraction of the conversations held out for evaluation (chosen by a hash "
                                           "of the line's index, so always the same ones)", min=0, lt=1)
    pack: bool = field(True, "pack a batch's conversations into as few rows as fit, kept apart by a document mask")
    show_mask: bool = field(False, "print the first training conversation with its trained tokens highlighted")
    template: str | None = field(None, "a Jinja chat template file to use instead of lmforge's (its generation "
                                       "blocks mark what trains)")


@dataclass
class Conversation:
    ids: list[int]  # the rendered conversation's tokens
    trained: list[bool]  # per token: whether it is trained (predicted from the tokens before it)

    @property
    def inputs(self) -> list[int]:
        return self.ids[:-1]

    @property
    def labels(self) -> list[int]:
        """The next token where it is trained, else IGNORE_INDEX."""
        return [i if t else IGNORE_INDEX for i, t in zip(self.ids[1:], self.trained[1:])]


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most `capacity` tokens: first fit, longest first."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def collate(convs: Sequence[Conversation], capacity: int | None, pad_id: int) -> dict[str, Tensor]:
    """A batch: "x", "y" (B, T) right-padded (y with IGNORE_INDEX), "segments" numbering each row's documents (0 on
    padding), "positions" (each document's from 0) and "packed" (`capacity` tokens a row; else one a row)."""
    rows = pack_rows([len(c.inputs) for c in convs], capacity) if capacity else [[i] for i in range(len(convs))]
    T = max(sum(len(convs[i].inputs) for i in row) for row in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    segments = torch.zeros((len(rows), T), dtype=torch.long)
    positions = torch.zeros((len(rows), T), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row, 1):
            n = len(convs[i].inputs)
            x[r, at:at + n] = torch.tensor(convs[i].inputs)
            y[r, at:at + n] = torch.tensor(convs[i].labels)
            segments[r, at:at + n] = s
            positions[r, at:at + n] = torch.arange(n)
            at += n
    return {"x": x, "y": y, "segments": segments, "positions": positions, "packed": capacity is not None}


@register("chat_sft", options=ChatSFTOptions)
class ChatSFT(ExampleBatches, Objective):
    """Cross-entropy on the assistant turns of multi-turn conversations (decoders)."""

    kinds = (Kind.DECODER,)

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import TokenDataset
        from lmforge.data.tokenizer import load_tokenizer

        super().__init__(cfg, rt)
        o: ChatSFTOptions = self.opts
        if not o.chats:
            raise UserError("objective 'chat_sft' trains on conversations, but no chat file is given",
                            fix='pass --objective-options.chats FILE.jsonl, one {"messages": [...]} per line')
        data = TokenDataset.open(cfg.data, "train")
        tok = load_tokenizer(data.tokenizer_path)
        if missing_chat_tokens(tok) and cfg.finetune.method == "lora":
            raise UserError("LoRA cannot add the chat tokens to the base model's vocabulary (a LoRA run saves its "
                            "adapters alone)", where=data.tokenizer_path,
                            fix="chat-tune the base fully once (--finetune.method full or frozen), or use data "
                                "prepared with the tokenizer of a checkpoint that has them")
        add_chat_tokens(tok)
        require_vocab(cfg, tok.get_vocab_size(), cfg.data)
        self.template = self._template(o.template)
        # The run's tokenizer: the data's plus the chat tokens, with the template, copied into every checkpoint.
        self._tokenizer_files = tempfile.TemporaryDirectory(prefix="lmforge-chat-tokenizer-")
        save_chat_tokenizer(tok, self._tokenizer_files.name, self.template)
        self.tokenizer_dir = Path(self._tokenizer_files.name)
        self.tok = tok
        self.pad_id = data.special_ids.get("pad", 0)
        self.end_id = tok.token_to_id(END_OF_TURN)
        chats = read_chats(o.chats)
        self.conversations = [self._encode(m, f"conversation {n}") for n, m in enumerate(chats, 1)]
        self._check_mask(chats, o.chats)
        self.split_examples(len(self.conversations), o.chats_val_fraction, "conversations", o.chats)
        if o.show_mask and rt.is_main:
            self.show_mask(int(self.train_idx[0]))

    @staticmethod
    def _template(path: str | None) -> str:
        if path is None:
            return CHAT_TEMPLATE
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read the chat template ({e.strerror or e})", where=path) from None

    def _encode(self, messages: list[dict[str, str]], where: str) -> Conversation:
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where} has no assistant turn (nothing to learn to say)", where=self.opts.chats,
                            fix="give every conversation at least one assistant answer, or drop it")
        enc = encode_chat(self.tok, self.template, messages)
        if len(enc.ids) - 1 > self.cfg.seq_len:
            raise UserError(f"{where} has {len(enc.ids)} tokens, more than the {self.cfg.seq_len + 1} a training "
                            f"sequence holds (--seq-len {self.cfg.seq_len} inputs and the next token)",
                            where=self.opts.chats,
                            fix="shorten or split the conversation, or raise --seq-len (up to the model's "
                                "max_seq_len)")
        return Conversation(ids=enc.ids, trained=enc.trained)

    def _check_mask(self, chats: list[list[dict[str, str]]], where: str) -> None:
        """Refuse a mask that trains nothing, or that leaves an assistant's end-of-turn token out."""
        trained = sum(t for c in self.conversations for t in c.trained[1:])
        if trained == 0:
            raise UserError("the chat template's mask selects no token to train on (it marks no assistant answer "
                            "with {% generation %} ... {% endgeneration %})", where=where,
                            fix="mark each assistant answer and its end-of-turn token with {% generation %} "
                                "blocks, or leave --objective-options.template out to use lmforge's")
        for n, (conv, messages) in enumerate(zip(self.conversations, chats), 1):
            ends = sum(label == self.end_id for label in conv.labels)
            answers = sum(m["role"] == "assistant" for m in messages)
            if ends < answers:
                raise UserError(f"the chat template's mask leaves the end-of-turn token {END_OF_TURN} out of "
                                f"{answers - ends} of the {answers} answers of conversation {n}: the model would "
                                f"never learn to stop", where=where,
                                fix=f"put {END_OF_TURN} inside the {{% generation %}} block of each assistant turn")

    def show_mask(self, index: int) -> None:
        """Print conversation `index` with the tokens it trains on highlighted (and a count)."""
        from rich.text import Text

        from lmforge.progress import console

        conv = self.conversations[index]
        ids, trained = conv.ids, conv.trained
        text = Text()
        plain = console.color_system is None
        for i, on in zip(ids, trained):
            piece = self.tok.decode([i], skip_special_tokens=False)
            text.append(f"[{piece}]" if on and plain else piece, style="bold black on green" if on else "dim")
        console.print(f"chat mask: {sum(trained)} of {len(ids)} tokens train (highlighted"
                      f"{', in [brackets]' if plain else ''}):", highlight=False)
        console.print(text, highlight=False, soft_wrap=True)

    def batch(self, idx: Iterable[int]) -> dict[str, Tensor]:
        convs = [self.conversations[i] for i in idx]
        return collate(convs, self.cfg.seq_len if self.opts.pack else None, self.pad_id)

    def forward(self, model: nn.Module, batch: Any) -> Output:
        b = self.to_device(batch)
        if b["packed"]:  # documents kept apart: a document mask and each document's own positions
            logits = model(b["x"], positions=b["positions"], segments=b["segments"])  # (B, T, V)
        else:
            logits = model(b["x"])
        y = b["y"]
        loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum",
                                   ignore_index=IGNORE_INDEX)
        real = y != IGNORE_INDEX
        count = real.sum()
        return Output(loss=loss_sum / count.clamp(min=1), sums={
            "loss": loss_sum.detach(), "count": count, "correct": ((logits.argmax(-1) == y) & real).sum(),
            "tokens": (b["segments"] > 0).sum()})

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1)
        loss = sums["loss"] / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "accuracy": sums["correct"] / count,
                "trained_tokens": sums["count"]}


__all__ = ["ChatSFT", "ChatSFTOptions", "Conversation", "collate", "pack_rows"]
