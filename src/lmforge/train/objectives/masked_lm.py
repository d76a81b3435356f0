"""Masked language modelling (BERT): `mlm`, and `mlm_nsp` with next-sentence prediction.

Of the tokens, `mlm_probability` are selected (never special tokens); of those, `mask_replace` become `<mask>`,
`random_replace` a random ordinary token and the rest stay as they were. The loss is cross-entropy on the selected
positions only. With `whole_word_mask`, words are selected rather than tokens (all the tokens of a word
together), where a word starts at a token the vocabulary marks as a word start (byte-level BPE `Ġ...`,
SentencePiece `▁...`, WordPiece pieces without `##`, a space for character tokenizers).

`mlm` trains on random windows of the token stream (documents packed back to back with `<eos>` between them, as
RoBERTa's FULL-SENTENCES), framed as `<cls> window <sep>` when the tokenizer has those tokens. `mlm_nsp` builds
BERT's `<cls> A <sep> B <sep>` pairs (token types 0 / 1) inside one document: half the time B is A's true
continuation, otherwise a segment of another document, and `nsp_logits` predicts which (0 = next, 1 = random).

Batches are drawn by a generator seeded by (seed, rank), so a resumed run sees the batches it would have seen;
evaluation uses a fixed seed, so every evaluation masks the same held-out tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.config import field
from lmforge.errors import UserError
from lmforge.eval.metrics import IGNORE_INDEX
from lmforge.models.registry import Kind
from lmforge.parallel import unwrap
from lmforge.train.objectives import Objective, Options, Output, register, train_only
from lmforge.train.objectives.options import require_special, require_vocab, val_split, warn_no_evaluation

EVAL_SEED = 0x5EED  # held-out masks and pairs are the same at every evaluation, whatever the run's seed


@dataclass
class MaskedLMOptions(Options):
    mlm_probability: float = field(0.15, "fraction of tokens (or words) selected for prediction",
                                    gt=0, lt=1)
    mask_replace: float = field(0.8, "of the selected tokens, the fraction replaced by <mask>", min=0, max=1)
    random_replace: float = field(0.1, "of the selected tokens, the fraction replaced by a random token (the rest "
                                       "are kept as they are)", min=0, max=1)
    whole_word_mask: bool = field(False, "select whole words (all their tokens together), not single tokens")

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.mask_replace + self.random_replace > 1.0:
            problems.append("mask_replace and random_replace must add up to at most 1")
        return problems


@dataclass
class MaskedLMNextSentenceOptions(MaskedLMOptions):
    nsp: bool = field(True, "add the next-sentence loss (off: the same <cls> A <sep> B <sep> inputs, MLM loss only)")

# GPT-2's byte-to-unicode map sends the bytes 0..32 (not printable) to U+0100 + byte, so a byte-level token that
# starts with whitespace starts with one of these (`Ġ` is the space).
_BYTE_LEVEL_SPACES = frozenset(chr(256 + b) for b in b"\t\n\x0b\x0c\r ")


def word_start_table(tok: Tokenizer) -> np.ndarray:
    """Per token id: does this token start a word? Computed once from the vocabulary's spelling conventions."""
    from lmforge.data.tokenizer import tokenizer_kind

    kind = tokenizer_kind(tok)
    table = np.ones(tok.get_vocab_size(with_added_tokens=True), dtype=bool)
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        if kind == "wordpiece":
            table[i] = not piece.startswith("##")
        elif kind == "char":
            table[i] = piece.isspace()
        elif kind in ("bpe", "unigram"):  # byte-level (Ġ) or SentencePiece-style (▁) word marks
            table[i] = piece[:1] in _BYTE_LEVEL_SPACES or piece.startswith("▁")
    return table


@dataclass
class Masker:
    """BERT's masking of a batch of token ids; per-vocabulary tables are computed once."""

    special: np.ndarray  # (V,) bool: never selected, and a word boundary on both sides
    mask_id: int
    opts: MaskedLMOptions
    word_start: np.ndarray | None = None  # (V,) bool; None: every token is its own word

    def __post_init__(self) -> None:
        self.replace_ids = np.flatnonzero(~self.special)  # a random replacement is an ordinary token

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """ids (B, T) -> (inputs, labels): labels are the original ids where selected, IGNORE_INDEX elsewhere."""
        special = self.special[ids]
        if self.word_start is None:
            start = np.ones_like(special)
        else:
            start = self.word_start[ids] | special
            start[:, 1:] |= special[:, :-1]  # the token after a special one starts a word
            start[:, 0] = True
        word = np.cumsum(start.ravel()).reshape(ids.shape) - 1  # word index of every token, over the batch
        chosen = rng.random(int(word[-1, -1]) + 1) < self.opts.mlm_probability
        selected = chosen[word] & ~special
        r = rng.random(ids.shape)
        to_mask = selected & (r < self.opts.mask_replace)
        to_random = selected & ~to_mask & (r < self.opts.mask_replace + self.opts.random_replace)
        inputs = np.where(to_mask, self.mask_id, ids)
        inputs = np.where(to_random, rng.choice(self.replace_ids, size=ids.shape), inputs)
        return inputs, np.where(selected, ids, IGNORE_INDEX)


def prediction_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """labels (B, T) -> positions and labels (B, P) of the selected tokens, P the most in any row.

    Only the selected positions go through the vocabulary projection (B*P*V, not B*T*V logits), and the gather is
    planned on the CPU here, so the step needs no host sync to find them (as BERT's masked_lm_positions).
    """
    selected = labels != IGNORE_INDEX
    p = max(int(selected.sum(1).max()), 1)
    order = np.argsort(~selected, axis=1, kind="stable")[:, :p]  # selected positions first, in order
    picked = np.take_along_axis(selected, order, 1)
    return np.where(picked, order, 0), np.where(picked, np.take_along_axis(labels, order, 1), IGNORE_INDEX)


class Documents:
    """The documents of a split as (start, length) spans of its token stream, `<eos>` excluded, for sampling."""

    def __init__(self, ds: Any) -> None:
        ends = ds.doc_ends.astype(np.int64)
        self.ds = ds
        self.starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self.lengths = ends - self.starts - 1  # every document is followed by <eos> (prepare requires one)
        self._cum: dict[int, np.ndarray] = {}

    def count(self, min_len: int) -> int:
        return int((self.lengths >= min_len).sum())

    def sample(self, rng: np.random.Generator, min_len: int = 1, exclude: int = -1) -> int:
        """A document with at least min_len tokens, drawn in proportion to its length (as a random token is)."""
        if min_len not in self._cum:
            self._cum[min_len] = np.cumsum(np.where(self.lengths >= min_len, self.lengths, 0))
        cum = self._cum[min_len]
        while True:
            d = int(np.searchsorted(cum, rng.integers(cum[-1]), side="right"))
            if d != exclude:
                return d

    def segment(self, rng: np.random.Generator, d: int, max_len: int) -> np.ndarray:
        """A random run of min(max_len, length) consecutive tokens of document d."""
        n = min(max_len, int(self.lengths[d]))
        offset = int(rng.integers(int(self.lengths[d]) - n + 1))
        return self.ds.window(int(self.starts[d]) + offset, n).astype(np.int64)


class _MaskedLMBase(Objective):
    """What `mlm` and `mlm_nsp` share: the checks, the masker, the forward pass and the metrics."""

    kinds = (Kind.ENCODER,)
    needs: tuple[str, ...] = ("mask",)
    uses_nsp = False  # whether the loss includes next-sentence prediction (the pooler and NSP head)
    opts: MaskedLMOptions

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import TokenDataset
        from lmforge.data.tokenizer import load_tokenizer

        super().__init__(cfg, rt)
        self.train_ds = TokenDataset.open(cfg.data, "train")
        require_special(self.train_ds.special_ids, self.needs, self.name, cfg.data)
        require_vocab(cfg, self.train_ds.vocab_size, cfg.data)
        self.val_ds = val_split(cfg)
        if self.val_ds is None:
            warn_no_evaluation(rt, f"no val split in {cfg.data}")
        self.tokenizer_dir = self.train_ds.tokenizer_path.parent
        ids = self.train_ds.special_ids
        self.pad_id = ids.get("pad", 0)  # padding is masked out of attention, so its id only needs to exist
        self.cls_id, self.sep_id = ids.get("cls"), ids.get("sep")
        special = np.zeros(self.train_ds.vocab_size, dtype=bool)
        special[list(ids.values())] = True
        word_start = None
        if self.opts.whole_word_mask:
            word_start = word_start_table(load_tokenizer(self.train_ds.tokenizer_path))
        self.masker = Masker(special, ids["mask"], self.opts, word_start)
        self.rng = np.random.Generator(np.random.PCG64([cfg.seed, rt.rank]))

    def build_model(self) -> nn.Module:
        model = super().build_model()
        return model if self.uses_nsp else train_only(model, model.embed, model.encoder, model.mlm_head)

    # Training position: everything random comes from self.rng, so its state is the whole position.
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _eval_rng(self) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64([EVAL_SEED, self.rt.rank]))

    def _mask(self, ids: np.ndarray, rng: np.random.Generator, extra: dict[str, Any]) -> dict[str, Tensor]:
        inputs, labels = self.masker(ids, rng)
        positions, targets = prediction_targets(labels)
        batch = {"input_ids": torch.from_numpy(inputs), "mlm_positions": torch.from_numpy(positions),
                 "mlm_labels": torch.from_numpy(targets)}
        batch.update({k: torch.from_numpy(v) for k, v in extra.items()})
        return batch

    def forward(self, model: nn.Module, batch: Any) -> Output:
        b = self.to_device(batch)
        mask = b.get("attention_mask")
        h = model(b["input_ids"], attention_mask=mask, token_types=b.get("token_types"))  # (B, T, C)
        positions, labels = b["mlm_positions"], b["mlm_labels"]  # (B, P)
        picked = torch.gather(h, 1, positions[..., None].expand(-1, -1, h.shape[-1]))  # (B, P, C)
        heads = unwrap(model)  # called outside forward: on the model itself, not a DDP wrapper
        logits = heads.mlm_logits(picked)  # (B, P, V)
        mlm_sum = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum",
                                  ignore_index=IGNORE_INDEX)
        real = labels != IGNORE_INDEX
        count = real.sum()
        loss = mlm_sum / count.clamp(min=1)
        sums: dict[str, Tensor | float] = {
            "mlm_loss": mlm_sum.detach(), "count": count, "mlm_correct": ((logits.argmax(-1) == labels) & real).sum(),
            "tokens": mask.sum() if mask is not None else float(b["input_ids"].numel())}
        if "nsp_labels" in b and self.uses_nsp:
            y = b["nsp_labels"]
            nsp_logits = heads.nsp_logits(h)  # (B, 2)
            nsp_sum = F.cross_entropy(nsp_logits.float(), y, reduction="sum")
            loss = loss + nsp_sum / y.numel()  # BERT's loss: mean MLM loss + mean NSP loss
            sums.update(nsp_loss=nsp_sum.detach(), nsp_count=float(y.numel()),
                        nsp_correct=(nsp_logits.argmax(-1) == y).sum())
        # The loop reports sums["loss"] / sums["count"]: scaled so that this is the batch's total loss.
        sums["loss"] = loss.detach() * count
        return Output(loss=loss, sums=sums)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1)
        mlm = sums["mlm_loss"] / count
        metrics = {"mlm_loss": mlm, "mlm_ppl": math.exp(min(mlm, 700.0)), "mlm_accuracy": sums["mlm_correct"] / count}
        loss = mlm
        if sums.get("nsp_count"):
            nsp = sums["nsp_loss"] / sums["nsp_count"]
            metrics.update(nsp_loss=nsp, nsp_accuracy=sums["nsp_correct"] / sums["nsp_count"])
            loss += nsp
        return {"loss": loss, **metrics}


@register("mlm", options=MaskedLMOptions)
class MaskedLM(_MaskedLMBase):
    """Masked LM on random windows of the token stream, `<cls> window <sep>` when the tokenizer has both."""

    def __init__(self, cfg, rt) -> None:
        super().__init__(cfg, rt)
        self.framed = self.cls_id is not None and self.sep_id is not None
        self.window = cfg.seq_len - (2 if self.framed else 0)
        if self.window < 1 or self.train_ds.num_tokens < self.window:
            raise UserError(f"the train split has {self.train_ds.num_tokens} tokens, fewer than one sequence of "
                            f"{cfg.seq_len}", where=cfg.data, fix="use a shorter --seq-len or more data")

    def _frame(self, windows: np.ndarray) -> np.ndarray:
        if not self.framed:
            return windows
        n = len(windows)
        return np.concatenate([np.full((n, 1), self.cls_id), windows, np.full((n, 1), self.sep_id)], axis=1)

    def train_batches(self) -> Iterator[Any]:
        while True:
            starts = self.rng.integers(0, self.train_ds.num_tokens - self.window + 1, size=self.cfg.batch_size)
            ids = np.stack([self.train_ds.window(int(s), self.window) for s in starts]).astype(np.int64)
            yield self._mask(self._frame(ids), self.rng, {})

    def eval_batches(self) -> Iterable[Any] | None:
        if self.val_ds is None or self.val_ds.num_tokens < self.window:
            return None
        return self._eval(self.val_ds)

    def _eval(self, ds: Any) -> Iterator[dict[str, Tensor]]:
        """Consecutive windows of the val split, rank r taking every r-th, masked by a fixed-seed generator."""
        rng = self._eval_rng()
        windows = np.arange(self.rt.rank, ds.num_tokens // self.window, self.rt.world_size)
        size = self.cfg.batch_size
        n_batches = math.ceil(len(windows) / size)
        for i in range(min(n_batches, self.cfg.eval_batches or n_batches)):
            chunk = windows[i * size:(i + 1) * size]
            ids = np.stack([ds.window(int(w) * self.window, self.window) for w in chunk]).astype(np.int64)
            yield self._mask(self._frame(ids), rng, {})


@register("mlm_nsp", options=MaskedLMNextSentenceOptions)
class MaskedLMNextSentence(_MaskedLMBase):
    """BERT pretraining: masked LM on `<cls> A <sep> B <sep>` pairs plus next-sentence prediction."""

    needs = ("mask", "cls", "sep")
    opts: MaskedLMNextSentenceOptions

    def __init__(self, cfg, rt) -> None:
        super().__init__(cfg, rt)
        self.uses_nsp = self.opts.nsp
        self.budget = cfg.seq_len - 3  # tokens of A and B together
        if self.budget < 2:
            raise UserError(f"seq_len {cfg.seq_len} leaves no room for two segments after <cls> <sep> <sep>",
                            fix="raise --seq-len")
        self.train_docs = self._documents(self.train_ds, "train")
        self.val_docs = None
        if self.val_ds is not None:
            docs = Documents(self.val_ds)
            if docs.count(2) >= 1:
                self.val_docs = docs
        self.eval_count = 0  # for a report; examples drawn in the last evaluation

    def _documents(self, ds: Any, split: str) -> Documents:
        docs = Documents(ds)
        if docs.count(2) < 1 or docs.count(1) < 2:
            raise UserError(f"next-sentence prediction needs at least two documents, one of two or more tokens, "
                            f"in the {split} split (it has {ds.num_documents})", where=ds.directory,
                            fix="prepare more documents, or use --objective mlm")
        return docs

    def pair(self, docs: Documents, others: Documents, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                                             int]:
        """(A, B, label): label 0 when B continues A in its document, 1 when B comes from another document."""
        d = docs.sample(rng, min_len=2)
        chunk = docs.segment(rng, d, self.budget)
        a_len = int(rng.integers(1, len(chunk)))
        if rng.random() < 0.5:
            return chunk[:a_len], chunk[a_len:], 0
        # Another document: with the val split as `docs` and too few val documents, `others` is the train split.
        j = others.sample(rng, min_len=1, exclude=d if others is docs else -1)
        return chunk[:a_len], others.segment(rng, j, self.budget - a_len), 1

    def _batch(self, docs: Documents, others: Documents, rng: np.random.Generator, n: int) -> dict[str, Tensor]:
        T = self.cfg.seq_len
        ids = np.full((n, T), self.pad_id, dtype=np.int64)
        types = np.zeros((n, T), dtype=np.int64)
        attn = np.zeros((n, T), dtype=bool)
        labels = np.zeros(n, dtype=np.int64)
        for i in range(n):
            a, b, labels[i] = self.pair(docs, others, rng)
            seq = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]])
            ids[i, :len(seq)], attn[i, :len(seq)] = seq, True
            types[i, len(a) + 2:len(seq)] = 1
        return self._mask(ids, rng, {"attention_mask": attn, "token_types": types, "nsp_labels": labels})

    def train_batches(self) -> Iterator[Any]:
        while True:
            yield self._batch(self.train_docs, self.train_docs, self.rng, self.cfg.batch_size)

    def eval_batches(self) -> Iterable[Any] | None:
        if self.val_docs is None:
            return None
        others = self.val_docs if self.val_docs.count(1) >= 2 else self.train_docs
        # As many pairs as the val split holds segments of seq_len (eval_batches = 0), or eval_batches batches.
        n_batches = self.cfg.eval_batches or max(1, math.ceil(self.val_ds.num_tokens / self.budget
                                                               / self.cfg.batch_size / self.rt.world_size))
        rng = self._eval_rng()
        return (self._batch(self.val_docs, others, rng, self.cfg.batch_size) for _ in range(n_batches))
