"""Extractive question answering (`extractive_qa`): start/end logits of the answer's span, on BERT's `span` head.

The questions are a SQuAD v1.1 or v2.0 JSON file, `--objective-options.squad` (read by `lmforge.data.squad`; a
question whose answer is not in its context at `answer_start` is an error, or skipped and counted with
`--objective-options.skip-bad-rows`). The prepared data directory (`--data`) supplies the tokenizer, as for
classification.

Inputs are BERT's: `<cls> question <sep> context <sep>`, with token types 0 up to the first <sep> and 1 after it
when the model has segment embeddings. The question is cut to `max_query_len` tokens; a context longer than the
window (`max_len`, default the model's max_seq_len, less the question and the three special tokens) is read as
windows whose starts are `doc_stride` context tokens apart (BERT's run_squad: consecutive windows overlap by the
window's length less the stride). The answer's characters map to tokens through the tokenizer's offsets (the
first context token that ends after the answer's start, the last that begins before its end); a window that does
not hold the whole answer, and every window of an unanswerable question, targets the <cls> position 0 for both
start and end. Training takes the first gold answer; the unit of training is a window. The loss is the mean of the
start and the end cross-entropy (over the window's real tokens).

Held-out questions (`val_fraction` of the paragraphs, chosen by a hash of the paragraph's index, every question of
a held-out paragraph held out, so no scored context was trained on; or, with `val_squad`, every question
of that second file, and then every question of `squad` trains) are evaluated question by question,
all windows of a question in one batch: the answer is the best-scoring span (start logit + end logit) with
end >= start, at most `max_answer_len` tokens, inside the context, over its windows, mapped back to the
context's characters. The metrics are the official SQuAD exact match and F1 (`lmforge.eval.squad`, as fractions).
When the file has unanswerable questions (v2.0) the no-answer score is the smallest over the windows of
start + end logit at <cls>, the question's margin that less its best span's score, and the answer is "" when the
margin exceeds `no_answer_threshold`; the best exact match and F1 over thresholds, and the threshold of the best
F1, are reported beside them (`best_exact_match`, `best_f1`, `best_f1_threshold`), as the v2.0 script does.
Per-question results travel as `Output.sums` keys of their own (`em/Q`, `f1/Q`, `na/Q`): each held-out question
is in exactly one batch of one rank, so the summed totals hold every question's values.
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
from lmforge.data.examples import EpochSampler
from lmforge.data.squad import Question, Window, question_windows, read_squad, windows_of
from lmforge.errors import UserError
from lmforge.eval import squad
from lmforge.eval.qa import best_spans, question_answers, window_inputs
from lmforge.models.registry import Kind
from lmforge.train.objectives import Objective, Options, Output, register
from lmforge.train.objectives.options import require_special, require_vocab
from lmforge.train.objectives.seq2seq import ExampleBatches


@dataclass
class ExtractiveQAOptions(Options):
    squad: str | None = field(None, "SQuAD v1.1 or v2.0 JSON file of questions (data -> paragraphs -> context, qas)")
    val_fraction: float = field(0.1, "fraction of the paragraphs whose questions are held out for evaluation "
                                     "(chosen by a hash of the paragraph's index, so always the same ones); "
                                     "ignored with val_squad", min=0, lt=1)
    val_squad: str | None = field(None, "SQuAD file whose questions are the held-out ones (e.g. another "
                                        "article's, so no validation context is trained on); every question of "
                                        "squad then trains")
    max_len: int | None = field(None, "tokens per window, <cls> question <sep> context <sep> (default: the "
                                      "model's max_seq_len)", min=8)
    doc_stride: int = field(128, "context tokens between the starts of consecutive windows of a long context",
                            min=1)
    max_query_len: int = field(64, "truncate questions to this many tokens", min=1)
    max_answer_len: int = field(30, "longest answer predicted, in tokens", min=1)
    no_answer_threshold: float = field(0.0, "v2.0: answer \"\" when the no-answer score exceeds the best span's by "
                                            "more than this", finite=True)
    skip_bad_rows: bool = field(False, "skip (and count) questions whose answer is not in the context at its "
                                       "answer_start, instead of stopping")


@register("extractive_qa", options=ExtractiveQAOptions)
class ExtractiveQA(ExampleBatches, Objective):
    """Cross-entropy of the answer's start and end token under the span head's logits."""

    kinds = (Kind.ENCODER,)
    head = "span"
    opts: ExtractiveQAOptions

    def __init__(self, cfg, rt) -> None:
        from lmforge.data.loaders import TokenDataset
        from lmforge.data.tokenizer import load_tokenizer

        super().__init__(cfg, rt)
        o = self.opts
        if not o.squad:
            raise UserError("objective 'extractive_qa' trains on questions, but no SQuAD file is given",
                            fix="pass --objective-options.squad FILE (SQuAD v1.1 or v2.0 JSON)")
        cfg.model.validate()
        train_ds = TokenDataset.open(cfg.data, "train")
        require_vocab(cfg, train_ds.vocab_size, cfg.data)
        special = train_ds.special_ids
        require_special(special, ("cls", "sep"), self.name, cfg.data, why="(to frame question and context)")
        self.tokenizer_dir = train_ds.tokenizer_path.parent
        self.cls_id, self.sep_id, self.pad_id = special["cls"], special["sep"], special.get("pad", 0)
        self.segments = cfg.model.type_vocab_size >= 2

        max_len = o.max_len or cfg.model.max_seq_len
        if max_len > cfg.model.max_seq_len:
            raise UserError(f"objective_options.max_len {max_len} is longer than the model's max_seq_len "
                            f"{cfg.model.max_seq_len}", fix=f"lower it to at most {cfg.model.max_seq_len}")
        reads = [(o.squad, read_squad(o.squad, skip_bad=o.skip_bad_rows))]
        if o.val_squad:
            reads.append((o.val_squad, read_squad(o.val_squad, skip_bad=o.skip_bad_rows)))
        for path, read in reads:
            if read.skipped and rt.is_main:
                from lmforge.progress import console

                console.print(f"[yellow]skipped {read.skipped} question(s) of {path} whose answer is not in the "
                              f"context at its answer_start[/yellow]")
        n_train = len(reads[0][1].questions)
        self.questions: list[Question] = [q for _, read in reads for q in read.questions]
        self.skipped = sum(read.skipped for _, read in reads)
        self.v2 = any(not q.answerable for q in self.questions)

        built = question_windows(load_tokenizer(train_ds.tokenizer_path), self.questions, cls=self.cls_id,
                                 sep=self.sep_id, max_len=max_len, stride=o.doc_stride,
                                 max_query_len=o.max_query_len, where=o.squad)
        self.windows, self.windows_of, self.offsets = built.windows, built.of_question, built.offsets

        if o.val_squad:
            self.train_idx, self.val_idx = np.arange(n_train), np.arange(n_train, len(self.questions))
        else:
            # Whole paragraphs are held out, not single questions: a held-out question on a trained paragraph is
            # scored on a text the model has read beside its neighbours' answers.
            paragraph: dict[str, int] = {}
            groups = [paragraph.setdefault(q.context, len(paragraph)) for q in self.questions]
            self.split_indices(len(self.questions), o.val_fraction, "questions", o.squad, groups=groups)
        self.val_questions = self.val_idx
        # Training walks the windows of the training questions.
        self.train_idx = np.array([w for q in self.train_idx for w in self.windows_of[q]], dtype=np.int64)
        self.sampler = EpochSampler(len(self.train_idx), cfg.batch_size, cfg.seed, rt.rank, rt.world_size)

    # ------------------------------------------------------------------------------------------------ batches
    def batch(self, idx: Iterable[int]) -> dict[str, Tensor]:
        """The windows `idx` (indices into `self.windows`), padded."""
        ws = [self.windows[i] for i in idx]
        return {**window_inputs(ws, self.pad_id, self.segments), "starts": torch.tensor([w.start for w in ws]),
                "ends": torch.tensor([w.end for w in ws]), "windows": torch.tensor(list(idx), dtype=torch.int64)}

    def eval_batches(self) -> Iterable[Any] | None:
        """Batches of `batch_size` held-out questions, each with all its windows."""
        return self.ranked_batches(self.val_questions,
                                   lambda questions: self.batch([w for q in questions for w in self.windows_of[q]]))

    # ------------------------------------------------------------------------------------------------- loss
    def forward(self, model: nn.Module, batch: Any) -> Output:
        b = self.to_device(batch)
        logits = model(b["ids"], attention_mask=b["mask"], token_types=b.get("token_types")).float()  # (W, T, 2)
        logits = logits.masked_fill(~b["mask"][:, :, None], float("-inf"))
        start, end = logits.unbind(-1)
        loss_sum = (F.cross_entropy(start, b["starts"], reduction="sum") +
                    F.cross_entropy(end, b["ends"], reduction="sum")) / 2
        n = len(b["starts"])
        sums: dict[str, Tensor | float] = {"loss": loss_sum.detach(), "count": float(n), "tokens": b["mask"].sum()}
        if not model.training:
            sums.update(self._answers(start, end, batch["windows"].tolist()))
        return Output(loss=loss_sum / n, sums=sums)

    def _answers(self, start: Tensor, end: Tensor, windows: list[int]) -> dict[str, float]:
        """Per question of these windows: the exact match and F1 of its best span, and its no-answer margin."""
        answers = question_answers([self.windows[w] for w in windows], start, end, self.questions, self.offsets,
                                   self.opts.max_answer_len)
        out: dict[str, float] = {}
        for q, (text, margin) in answers.items():
            golds = [a.text for a in self.questions[q].answers]
            out[f"em/{q}"] = squad.best_over_golds(squad.exact_match, text, golds)
            out[f"f1/{q}"] = squad.best_over_golds(squad.token_f1, text, golds)
            out[f"na/{q}"] = margin
            if not text:
                out[f"empty/{q}"] = 1.0
        return out

    def metric_names(self) -> tuple[str, ...]:
        v2 = ("best_exact_match", "best_f1", "best_f1_threshold") if self.v2 else ()
        return ("loss", "windows", "exact_match", "f1", *v2, "questions")

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = {"loss": sums["loss"] / max(sums["count"], 1), "windows": sums["count"]}
        qs = [int(k[3:]) for k in sums if k.startswith("em/")]
        if not qs:
            return metrics
        has = {q: self.questions[q].answerable for q in qs}
        na = {q: sums[f"na/{q}"] for q in qs}
        empty = {q: f"empty/{q}" in sums for q in qs}
        for name in ("em", "f1"):
            answered = {q: sums[f"{name}/{q}"] for q in qs}
            if self.v2:  # "" beyond the threshold: right on an unanswerable question, wrong on the others
                final = [float(not has[q]) if na[q] > self.opts.no_answer_threshold else answered[q] for q in qs]
            else:
                final = list(answered.values())
            key = "exact_match" if name == "em" else "f1"
            metrics[key] = sum(final) / len(final)
            if self.v2:
                metrics[f"best_{key}"], thresh = squad.best_threshold(answered, has, na, empty)
                if name == "f1":
                    metrics["best_f1_threshold"] = thresh
        metrics["questions"] = float(len(qs))
        return metrics


__all__ = ["ExtractiveQA", "ExtractiveQAOptions", "Window", "best_spans", "windows_of"]
