"""Perplexity and bits per byte of a causal language model (or the n-gram baseline) on a split of prepared data.

    from lmforge.eval.perplexity import evaluate_checkpoint

    result = evaluate_checkpoint("runs/train", "data/prepared", split="val")
    print(result.score.ppl, result.score.bpb)

The split is read as the trainer's evaluation reads it (`SequentialLoader`: consecutive windows of `seq_len`
targets, each window starting from an empty context), every window of it unless `max_batches` is set. The loss is
the exact token-weighted mean: summed cross-entropy over all predicted tokens divided by their number, so batch
size and a short last batch change nothing. Bits per byte divide by the split's UTF-8 bytes per token, which makes
models with different tokenizers (and the n-gram baseline) comparable.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.models.registry import SCORE, Kind, kind_of, require

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from lmforge.data.loaders import TokenDataset
    from lmforge.models.config import ModelConfig
    from lmforge.models.ngram import NGramLM

@dataclass
class Score:
    """Language-modelling quality on a stream of tokens."""

    loss: float  # mean negative log-likelihood, nats per predicted token
    ppl: float  # exp(loss)
    bpb: float | None  # bits per UTF-8 byte of text (None when the byte count is unknown)
    tokens: int  # predicted tokens the mean is over

    @classmethod
    def from_sums(cls, nll_sum: float, count: int, bytes_per_token: float | None = None) -> Score:
        from lmforge.eval.metrics import lm_metrics

        return cls(**lm_metrics(nll_sum / max(count, 1), bytes_per_token), tokens=int(count))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckpointScore:
    checkpoint: Path  # the checkpoint directory evaluated (a run directory resolves to its best checkpoint)
    model: ModelConfig
    split: str
    seq_len: int
    score: Score


def evaluate_lm(model: nn.Module, ds: TokenDataset, *, seq_len: int, batch_size: int = 8,
                max_batches: int = 0, device: Any = None, autocast: Any = None) -> Score:
    """Score of `model` (idx -> logits) on dataset split `ds`, in windows of `seq_len` predicted tokens.

    `max_batches` > 0 stops after that many batches (a quick estimate); `autocast` is an optional context manager
    factory (e.g. `Runtime.autocast`) entered around each forward.
    """
    import contextlib

    import torch

    from lmforge.data.loaders import SequentialLoader
    from lmforge.errors import UserError
    from lmforge.eval.metrics import next_token_nll
    from lmforge.runtime import eval_mode

    device = device or next(model.parameters()).device
    loader = SequentialLoader(ds, batch_size, seq_len)
    if len(loader) == 0:
        raise UserError(f"the {ds.split} split has {ds.num_tokens} tokens, fewer than one window of {seq_len + 1}",
                        where=ds.directory, fix="pass a smaller --seq-len, or prepare more data")
    nll = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    with eval_mode(model):
        for x, y in itertools.islice(loader, max_batches or None):
            with autocast() if autocast else contextlib.nullcontext():
                logits = model(x.to(device))  # (B, T, V)
            loss_sum, n = next_token_nll(logits, y.to(device))  # the trainer's loss, summed in float64 here
            nll += loss_sum.double()
            count += n
    return Score.from_sums(float(nll), int(count), ds.bytes_per_token)


def check_data_matches(checkpoint: Path, cfg: ModelConfig, ds: TokenDataset) -> None:
    """Refuse data encoded by another tokenizer than the checkpoint's, in one line.

    A checkpoint written by `lmforge train` carries the tokenizer.json of its training data, whose sha256 the data
    manifest records; without one, only the vocabulary size can be checked.
    """
    from lmforge.data.tokenizer import TOKENIZER_FILE, check_vocab_fits, tokenizer_hash
    from lmforge.errors import UserError

    fix = (f"use data encoded with this model's tokenizer: lmforge prepare --tokenizer-from {checkpoint} "
           f"--out DIR ...")
    check_vocab_fits(ds.vocab_size, cfg.vocab_size, where=ds.directory, fix=fix)
    if (checkpoint / TOKENIZER_FILE).is_file():
        ours, theirs = tokenizer_hash(checkpoint), ds.manifest["tokenizer"].get("sha256")
        if theirs and ours != theirs:
            raise UserError(f"the data was encoded by another tokenizer than the checkpoint's (sha256 "
                            f"{theirs[:12]}... vs {ours[:12]}...)", where=ds.directory, fix=fix)


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "val", *, seq_len: int | None = None,
                        batch_size: int = 8, max_batches: int = 0, device: str = "auto",
                        precision: str = "auto", verify: bool = True) -> CheckpointScore:
    """Load a checkpoint (or a run directory's best) and score it on `split` of prepared data `data`.

    `seq_len` defaults to the length the model was trained at (its config's trained_seq_len; windows past it
    would score positions it never learned), else its max_seq_len; `precision` as in training (auto: bf16
    autocast on CUDA).
    """
    from lmforge.checkpoints import load_model, resolve_checkpoint
    from lmforge.data.loaders import TokenDataset
    from lmforge.errors import UserError
    from lmforge.runtime import local_runtime

    if not Path(checkpoint).exists():
        raise UserError("checkpoint not found", where=checkpoint,
                        fix="pass a checkpoint directory or a run directory made by `lmforge train`")
    path = resolve_checkpoint(checkpoint)
    ds = TokenDataset.open(data, split)
    rt = local_runtime(device, precision)
    model, cfg = load_model(path, rt.device, verify=verify)
    if cfg.labels:
        raise UserError(f"this checkpoint is a sequence classifier (labels {', '.join(cfg.labels)}), not a language "
                        f"model", where=path, fix="score it on a labelled file with --task classification --file "
                                              "FILE")
    require(cfg, SCORE, needed_for="perplexity", where=path)
    check_data_matches(path, cfg, ds)
    seq_len = seq_len or cfg.trained_seq_len or cfg.max_seq_len
    if seq_len > cfg.max_seq_len and kind_of(cfg) != Kind.RECURRENT:  # an LSTM has no position table
        raise UserError(f"seq_len {seq_len} is longer than the model's max_seq_len {cfg.max_seq_len}",
                        fix="lower --seq-len")
    score = evaluate_lm(model, ds, seq_len=seq_len, batch_size=batch_size, max_batches=max_batches,
                        device=rt.device, autocast=rt.autocast)
    return CheckpointScore(checkpoint=path, model=cfg, split=split, seq_len=seq_len, score=score)


def evaluate_ngram(model: NGramLM, tokens: np.ndarray, bytes_per_token: float | None = None) -> Score:
    """Mean NLL (nats/token), perplexity and bits per byte of a token stream (every token but the first)."""
    nll, count = model.nll_sum(tokens)
    return Score.from_sums(nll, count, bytes_per_token)


def ngram_baseline(data_dir: str | Path, order: int = 3, split: str = "val") -> dict[str, Any]:
    """Fit an order-`order` Kneser-Ney n-gram model on the train split of `data_dir` and score it on `split`.

    Returns {'loss': nats/token, 'ppl', 'bpb': bits per byte, 'order', 'train_tokens', 'tokens': scored tokens}.
    """
    from lmforge.data.loaders import TokenDataset
    from lmforge.models.ngram import NGramLM

    train = TokenDataset.open(data_dir, "train")
    held_out = TokenDataset.open(data_dir, split)
    model = NGramLM(order, train.vocab_size).fit(train.window(0, len(train)))
    score = evaluate_ngram(model, held_out.window(0, len(held_out)), held_out.bytes_per_token)
    return {"loss": score.loss, "ppl": score.ppl, "bpb": score.bpb, "order": order,
            "train_tokens": model.train_tokens, "tokens": score.tokens}
