"""Sequence classification (`classification`): one label per text, cross-entropy on the model's class logits.

The labelled file is `--objective-options.pairs`, read as seq2seq reads its pairs: TSV or CSV with a header row, or
JSONL with one object per line (any of them may be gzipped); the text is in column `text`, its label in column `label`
(`--objective-options.text-column` / `label-column` name others; a JSONL label may be a number or a boolean). The
prepared data directory (`--data`) supplies the tokenizer, so the classifier reads texts with the tokenizer of the
language models trained on the same shards, framed as the model's kind read text in pretraining
(`models.registry.text_frame`: a decoder or LSTM after `<eos>`, an encoder as `<cls> text <sep>`), so a classifier
started from a pretrained checkpoint (`lmforge train --init-from CKPT`) begins from the state it knows.

The classes are the sorted distinct labels of the file. They are written into the model config (`model.labels`,
like Hugging Face's id2label) before the model is built, so the run's config.yaml and every checkpoint's
config.json describe the classifier and `load_model` rebuilds it. `--model.labels A B C` fixes the classes and
their order instead (the file's labels must be among them), e.g. when the file lacks a rare class.

A fixed fraction of the examples (`pairs_val_fraction`, chosen by a hash of the example's index, so always the same
ones) is held out; or, with `--objective-options.val-pairs FILE`, that file's labelled texts (same columns) are the
held-out ones and every example of `pairs` trains (e.g. whole sentences none of whose phrases is in `pairs`, so the
checkpoint is chosen on texts like the test set's rather than on neighbours of trained ones). Evaluation reports the
loss, the accuracy and the macro-F1 (`f1`: the unweighted mean of the per-class F1 over the classes present among the
held-out labels or predictions, as scikit-learn's default).

Length: a text longer than `model.max_seq_len` tokens (with its framing tokens) is an error unless
`--objective-options.max-source-len N` truncates texts to N tokens. An LSTM has no position limit, so N may exceed
max_seq_len; the cap exists because a batch is padded to its longest text, and one huge text would make its batches
slow, which should be a choice. A bad row (an empty text or label, a text too long) is one error line, or with
`--objective-options.skip-bad-rows` skipped, and the count printed (`skipped N row(s) of FILE: ...`).

The objective trains every family whose registry entry has a `classify` head (`lmforge.models.registry`: gpt and
llama pool the last real token, bert its [CLS] through the pooler, lstm the mean); the model built from
`cfg.labels` is called as `model(ids (B, T), attention_mask=mask (B, T)) -> logits (B, K)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import field
from lmforge.data.examples import BadRows, encode_texts, kept_rows, pad, read_pairs, split_labels
from lmforge.errors import UserError
from lmforge.eval.metrics import class_sums, label_sums, macro_f1
from lmforge.models.registry import CLASSIFY, families_that, text_frame
from lmforge.train.objectives import Objective, Output, register
from lmforge.train.objectives.options import (
    SKIP_BAD_ROWS_FLAG,
    ExamplesFileOptions,
    length_buckets_field,
    report_bad_rows,
    require_vocab,
    skip_bad_rows_field,
)
from lmforge.train.objectives.seq2seq import ExampleBatches

COLUMNS_FIX = "name the columns with --objective-options.text-column / label-column"


@dataclass
class ClassificationOptions(ExamplesFileOptions):
    text_column: str = field("text", "column (TSV/CSV header / JSON key) of the text")
    label_column: str = field("label", "column of the label (text, or a JSON number or boolean)")
    multi_label: bool = field(False, "each text has any number of labels, separated by the label separator (an "
                                     "empty label field: none); a sigmoid per label, binary cross-entropy, a label "
                                     "predicted when its probability is over 0.5")
    label_separator: str = field(",", "with multi-label: what separates a text's labels")
    length_buckets: int = length_buckets_field("texts", "length")
    class_weights: str | None = field(None, "weigh the loss of each class: 'balanced' (n / (classes x count), "
                                            "scikit-learn's rule; multi-label: negatives / positives per label) or "
                                            "one number per class in the order of the sorted labels, comma-"
                                            "separated (default: all 1)")
    val_pairs: str | None = field(None, "a second labelled file (same columns) whose texts are the held-out ones, "
                                        "instead of a fraction of pairs; every example of pairs then trains")
    skip_bad_rows: bool = skip_bad_rows_field("text", "label")

    def problems(self) -> list[str]:
        out = super().problems()
        if self.class_weights not in (None, "balanced"):
            try:
                weights = [float(w) for w in self.class_weights.split(",")]
            except ValueError:
                weights = []
            if not weights or any(not (w > 0 and np.isfinite(w)) for w in weights):
                out.append(f"class_weights must be 'balanced' or positive numbers separated by commas, got "
                           f"{self.class_weights!r}")
        if not self.label_separator.strip():
            out.append("label_separator must not be blank")
        return out


@register("classification", options=ClassificationOptions)
class Classification(ExampleBatches, Objective):
    """Cross-entropy of each text's label under the model's class logits."""

    kinds = tuple(dict.fromkeys(f.kind for f in families_that(CLASSIFY)))  # any kind some family classifies with
    head = "classify"
    opts: ClassificationOptions

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import TokenDataset
        from lmforge.data.tokenizer import load_tokenizer

        super().__init__(cfg, rt)
        o = self.opts
        if not o.pairs:
            raise UserError("objective 'classification' trains on labelled texts, but no labels file is given",
                            fix="pass --objective-options.pairs FILE (.tsv or .csv with a header row, or .jsonl) with "
                                "columns text and label (or name them with --objective-options.text-column / "
                                "label-column)")
        train_ds = TokenDataset.open(cfg.data, "train")
        require_vocab(cfg, train_ds.vocab_size, cfg.data)
        self.tokenizer_dir = train_ds.tokenizer_path.parent
        special = train_ds.special_ids
        self.pad_id = special.get("pad", 0)  # padding is masked: its id only must exist

        tok = load_tokenizer(train_ds.tokenizer_path)
        files = [o.pairs, *([o.val_pairs] if o.val_pairs else [])]  # with val_pairs, its examples are the held-out
        bad_rows = [BadRows(file, skip=o.skip_bad_rows, flag=SKIP_BAD_ROWS_FLAG) for file in files]
        examples: list[tuple[str, str]] = []
        self.texts: list[list[int]] = []
        n_train = 0
        for file, bad in zip(files, bad_rows):
            read = read_pairs(file, o.text_column, o.label_column, options="text-column / label-column",
                              label_separator=o.label_separator if o.multi_label else None, bad_rows=bad)
            ids = encode_texts(tok, [text for text, _ in read], text_frame(cfg.model, special), special,
                               limit=o.max_source_len or cfg.model.max_seq_len,
                               truncate=o.max_source_len is not None, where=file, bad_rows=bad,
                               fix="truncate texts with --objective-options.max-source-len N (an lstm reads any "
                                   "length), or raise --model.max-seq-len, or shorten the text")
            read, ids = kept_rows(read, ids)
            if not read:
                raise UserError(f"every row was skipped as bad ({bad.summary()})", where=file,
                                fix="check the columns and the length limits")
            examples += read
            self.texts += ids
            n_train = n_train or len(examples)  # the training file's examples come first
        self.skipped_rows = report_bad_rows(rt, *bad_rows)
        self.multi_label = o.multi_label
        if cfg.model.multi_label and not o.multi_label:  # e.g. --init-from a multi-label checkpoint
            raise UserError("the model is a multi-label classifier (model.multi_label) but the objective reads one "
                            "label per text", fix="pass --objective-options.multi-label, or --no-model.multi-label "
                                                  "for a single-label head")
        if o.multi_label:
            sets = [split_labels(label, o.label_separator) for _, label in examples]
            self.labels = self._classes(sorted({name for names in sets[:n_train] for name in names}))
            self._check_val_labels({name for names in sets[n_train:] for name in names})
            cfg.model.multi_label = True
            index = {name: i for i, name in enumerate(self.labels)}
            self.targets = np.zeros((len(sets), len(self.labels)), dtype=np.float32)  # multi-hot
            for row, names in enumerate(sets):
                self.targets[row, [index[name] for name in names]] = 1.0
        else:
            names = [label.strip() for _, label in examples]
            self.labels = self._classes(sorted(set(names[:n_train])))
            self._check_val_labels(set(names[n_train:]))
            index = {name: i for i, name in enumerate(self.labels)}
            self.targets = np.array([index[name] for name in names], dtype=np.int64)
        self.weights = self._class_weights(self.targets[:n_train])

        self.split_examples(len(examples), o.pairs_val_fraction, "examples", o.pairs,
                            lengths=[len(t) for t in self.texts], bucket_batches=o.length_buckets,
                            val_from=n_train if o.val_pairs else None)

    def _check_val_labels(self, found: set[str]) -> None:
        """The val_pairs file's labels are among the classes (those of the training file)."""
        unknown = sorted(found - set(self.labels))
        if unknown:
            raise UserError(f"the val_pairs file has labels the training file lacks: "
                            f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}",
                            where=self.opts.val_pairs, fix="give held-out texts of the trained classes only, or "
                                                           "name the classes with --model.labels")

    def _classes(self, found: list[str]) -> list[str]:
        """The classes, set in the model config: the file's sorted labels, or those the config already names."""
        o, model = self.opts, self.cfg.model
        if model.labels:  # given (--model.labels, or the run's own config.yaml): keep their order
            unknown = [name for name in found if name not in model.labels]
            if unknown:
                raise UserError(f"the labels file has labels that model.labels lacks: "
                                f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}",
                                where=o.pairs, fix="add them to --model.labels, or leave it out to take the "
                                                   "file's labels")
            return list(model.labels)
        if len(found) < 2:
            raise UserError(f"the labels file has {len(found)} distinct label ({', '.join(map(repr, found))}) in "
                            f"column '{o.label_column}': a classifier needs two or more", where=o.pairs,
                            fix="give examples of two or more classes, or " + COLUMNS_FIX)
        model.labels = found
        model.validate()
        return found

    def _class_weights(self, targets: np.ndarray) -> Tensor | None:
        """The loss weight of each class (single-label) or each label's positives (multi-label), or None, from the
        training examples' `targets`."""
        o, k = self.opts, len(self.labels)
        if o.class_weights is None:
            return None
        if o.class_weights == "balanced":
            if self.multi_label:
                positives = targets.sum(0)
                weights = (len(targets) - positives) / np.maximum(positives, 1)
            else:
                counts = np.bincount(targets, minlength=k)
                weights = len(targets) / (k * np.maximum(counts, 1))
        else:
            weights = np.array([float(w) for w in o.class_weights.split(",")])
            if len(weights) != k:
                raise UserError(f"objective_options.class_weights gives {len(weights)} weights for {k} classes "
                                f"({', '.join(self.labels)})", where=o.pairs,
                                fix="give one weight per class, in the order of the sorted labels")
        return torch.tensor(weights, dtype=torch.float32)

    # ------------------------------------------------------------------------------------------------ batches
    def batch(self, idx: Iterable[int]) -> dict[str, Tensor]:
        idx = list(idx)
        ids, mask = pad([self.texts[i] for i in idx], self.pad_id)
        return {"ids": ids, "mask": mask, "labels": torch.from_numpy(self.targets[idx])}  # (B,) or (B, K) multi-hot

    # ------------------------------------------------------------------------------------------------- loss
    def forward(self, model: nn.Module, batch: Any) -> Output:
        b = self.to_device(batch)
        logits = model(b["ids"], attention_mask=b["mask"]).float()  # (B, K)
        labels = b["labels"]
        weights = None if self.weights is None else self.weights.to(logits.device)
        if self.multi_label:  # (B, K) multi-hot: binary cross-entropy summed over the labels, mean over the texts
            loss_sum = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum", pos_weight=weights)
            pred = logits > 0
            gold = labels > 0.5
            correct = (pred == gold).all(-1).sum()  # every label of the text right (subset accuracy)
            divisor: Tensor | float = float(len(labels))
        else:
            loss_sum = F.cross_entropy(logits, labels, reduction="sum", weight=weights)
            pred = logits.argmax(-1)
            correct = (pred == labels).sum()
            # A weighted loss is the weighted mean, as torch's reduction="mean" with weights divides.
            divisor = weights[labels].sum() if weights is not None else float(len(labels))
        sums = {"loss": loss_sum.detach(), "count": float(len(labels)), "correct": correct, "tokens": b["mask"].sum()}
        if weights is not None and not self.multi_label:
            sums["weight"] = divisor
        if not model.training:  # evaluation only: the trainer reads every training sum each step, one sync per key
            sums.update(label_sums(pred, gold, len(self.labels)) if self.multi_label else
                        class_sums(pred, labels, len(self.labels)))
        return Output(loss=loss_sum / divisor, sums=sums)

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy", "f1", "examples")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1)
        return {"loss": sums["loss"] / max(sums.get("weight", count), 1e-12), "accuracy": sums["correct"] / count,
                "f1": macro_f1(sums, len(self.labels)), "examples": sums["count"]}


__all__ = ["Classification", "ClassificationOptions", "class_sums", "macro_f1"]
