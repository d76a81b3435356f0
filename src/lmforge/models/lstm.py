"""LSTM language model and LSTM classifier: the recurrent baselines, with the Transformer's interface.

`LSTMLM` maps idx (B, T) -> logits (B, T, V) like `DecoderLM`, so the same trainer, objective, checkpoint format
and evaluation serve both (`lmforge train --preset lstm-tiny`). From `ModelConfig` it uses: vocab_size, d_model
(embedding and hidden width), n_layer (stacked LSTM layers), dropout (on the embeddings, between layers and before
the output), tie_embeddings, init_std (embeddings and output matrix; the lstm presets use 0.25). max_seq_len is
only the default training length: a recurrent model has no position table, so it reads sequences of any length.
The attention fields (n_head, pos, norm, ...) are ignored.

`LSTMClassifier` is the same embedding + LSTM read by a pooled linear head (n_classes logits per sequence). A
config with `labels` (the class names) describes one: `build_model` builds it with one logit per label, and that is
how a checkpoint of it reloads (mean pooling unless `pooling` says last or max). With `bidirectional`, a second LSTM
reads each text right to left (packed, so it starts at the text's own last token, not in its padding) and the head
reads both directions' states; max pooling over them is InferSent's BiLSTM-max sentence encoder (Conneau et al.
2017), the SST-2 recipe's model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.heads import pool as pool_states
from lmforge.models.heads import pooling

State = tuple[Tensor, Tensor]  # (h, c), each (n_layer, B, d_model)


class LSTMLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.bidirectional:
            raise UserError("a language model cannot read the text right to left: bidirectional is for an lstm "
                            "classifier", fix="drop --model.bidirectional, or train --objective classification")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        _init(self.tok, self.lstm, cfg)
        nn.init.normal_(self.lm_head.weight, std=cfg.init_std)
        if cfg.tie_embeddings:  # hidden width == embedding width, so the output can reuse the input matrix
            self.lm_head.weight = self.tok.weight

    def forward(self, idx: Tensor, state: State | None = None, *,
                return_state: bool = False) -> Tensor | tuple[Tensor, State]:
        """Logits (B, T, V) for tokens idx (B, T); from `state` (None: zeros), returned too if `return_state`."""
        x = self.drop(self.tok(idx))  # (B, T, C)
        h, state = self.lstm(x, state)  # (B, T, C)
        logits = self.lm_head(self.drop(h))
        return (logits, state) if return_state else logits


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM (one or both directions) -> pooled over the real tokens (mean, last or max) -> n_classes
    logits.

    Its `tok` and `lstm` are named as in `LSTMLM`, so `from_lm` starts it from a trained language model.
    """

    def __init__(self, cfg: ModelConfig, n_classes: int | None = None, pool: str | None = None) -> None:
        """`n_classes` defaults to the number of `cfg.labels` (and, with labels, must equal it); `pool` to
        `cfg.pooling` (auto: mean; or last, max)."""
        super().__init__()
        pool = pool or pooling(cfg)
        if pool not in ("mean", "last", "max"):
            raise ValueError(f"pool must be 'mean', 'last' or 'max', got {pool!r}")
        if n_classes is None:
            n_classes = len(cfg.labels)
        if n_classes < 1 or (cfg.labels and n_classes != len(cfg.labels)):
            raise ValueError(f"n_classes {n_classes} does not match the config's {len(cfg.labels)} labels")
        self.cfg, self.pool = cfg, pool
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, bidirectional=cfg.bidirectional)
        self.head = nn.Linear(cfg.d_model * (2 if cfg.bidirectional else 1), n_classes)
        _init(self.tok, self.lstm, cfg)
        nn.init.normal_(self.head.weight, std=cfg.init_std)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_lm(cls, lm: LSTMLM, labels: Sequence[str], pool: str | None = None) -> LSTMClassifier:
        """A classifier over `labels` whose embedding and LSTM are copies of a language model's (the head is new);
        its config is the language model's with the labels, so its checkpoints reload as this classifier."""
        model = cls(dataclasses.replace(lm.cfg, labels=list(labels)), pool=pool)
        model.tok.load_state_dict(lm.tok.state_dict())
        model.lstm.load_state_dict(lm.lstm.state_dict())
        return model

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Class logits (B, n_classes) for tokens idx (B, T); `attention_mask` (B, T) is 1 on real tokens,
        0 on right padding."""
        x = self.drop(self.tok(idx))  # (B, T, C)
        if self.cfg.bidirectional and attention_mask is not None:
            # The right-to-left LSTM must start at each text's last real token, not in its padding: a packed
            # sequence runs each row over its own length only.
            lengths = attention_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            h, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                    total_length=idx.shape[1])  # (B, T, 2C), zeros past the end
        else:
            h, _ = self.lstm(x)  # (B, T, C), or (B, T, 2C) bidirectional
        # "last": the state after the last real token; with right padding, the padding never reaches it
        pooled = pool_states(h, attention_mask, self.pool)
        if self.cfg.bidirectional and self.pool == "last":  # the right-to-left LSTM ends on the first token
            pooled = torch.cat([pooled[:, :self.cfg.d_model], h[:, 0, self.cfg.d_model:]], dim=-1)
        return self.head(self.drop(pooled))  # (B, n_classes)


def _init(tok: nn.Embedding, lstm: nn.LSTM, cfg: ModelConfig) -> None:
    nn.init.normal_(tok.weight, std=cfg.init_std)
    # LSTM weights keep PyTorch's uniform(-1/sqrt(d), 1/sqrt(d)); the forget gate starts open (bias 1, split
    # over the two bias vectors) so gradients flow through long sequences from the first step.
    d = cfg.d_model
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias"):
                p.zero_()
                p[d:2 * d].fill_(0.5)  # gate order: input, forget, cell, output
