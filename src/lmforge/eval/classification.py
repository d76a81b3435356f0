"""Score a sequence classifier on a labelled file: accuracy, macro-F1, per-class P/R/F1 and a confusion matrix.

    from lmforge.eval.classification import evaluate_classifier

    result = evaluate_classifier("runs/sst2", "dev.tsv", text_column="content", out="runs/sst2-dev")
    print(result.scores.accuracy, result.scores.macro_f1)

Any checkpoint whose model can classify (`models.registry.can(cfg, CLASSIFY)`) is read with its own tokenizer and
its own classes (`cfg.labels`); the texts are framed and padded as the classification objective frames and pads
them (`data.examples.encode_texts`, `pad`), so a checkpoint scores a file as its training run's evaluation
scored its held-out examples. The file is read as training reads one (TSV or CSV with a header row, or JSONL), with
its own column names. A gold label the checkpoint does not know, an empty text or label, or a text longer than the
model's context (without `max_source_len`) is one error line, or with `skip_bad_rows` the row is left out and
counted (`BadRows`).

Written into `out`: metrics.json (the scores and counts), predictions.jsonl (text, gold, predicted, probability of
the prediction, one line per row scored, in file order) and confusion.png (when matplotlib is installed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lmforge.atomic import atomic_file

if TYPE_CHECKING:
    from torch import nn

    from lmforge.data.examples import BadRows
    from lmforge.eval.metrics import ClassificationScores, MultiLabelScores
    from lmforge.eval.task_checkpoint import TaskCheckpoint

RowT = TypeVar("RowT")

METRICS_FILE, PREDICTIONS_FILE, CONFUSION_PLOT = "metrics.json", "predictions.jsonl", "confusion.png"


@dataclass
class ClassifierEval:
    checkpoint: Path  # the checkpoint scored (a run directory resolves to its best checkpoint)
    file: Path
    scores: ClassificationScores | MultiLabelScores
    skipped: int  # rows left out with skip_bad_rows (gold label unknown to the checkpoint, empty, too long)
    metrics: Path
    predictions: Path
    plot: Path | None  # None when matplotlib is missing
    bad_rows: BadRows | None = None  # the skipped rows by reason; its summary() is the line to print


def class_probabilities(model: nn.Module, texts: list[list[int]], pad_id: int, *, batch_size: int = 32,
                        device: Any = None, autocast: Any = None) -> list[list[float]]:
    """Each framed id list's class probabilities: softmax over the classes, or for a multi-label model
    (`cfg.multi_label`) a sigmoid per label; `batch_size` at a time, right-padded with `pad_id` and masked as in
    training."""
    import contextlib

    import torch

    from lmforge.data.examples import pad
    from lmforge.runtime import eval_mode

    device = device or next(model.parameters()).device
    out: list[list[float]] = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            ids, mask = pad(texts[start:start + batch_size], pad_id)
            with autocast() if autocast else contextlib.nullcontext():
                logits = model(ids.to(device), attention_mask=mask.to(device)).float()  # (B, K)
            out += (logits.sigmoid() if model.cfg.multi_label else logits.softmax(-1)).tolist()
    return out


def predict(model: nn.Module, texts: list[list[int]], pad_id: int, *, batch_size: int = 32, device: Any = None,
            autocast: Any = None) -> tuple[list[int], list[float]]:
    """Predicted class index and its softmax probability for each framed id list, in order, `batch_size` at a
    time (right-padded with `pad_id`, masked as in training)."""
    import contextlib

    import torch

    from lmforge.data.examples import pad
    from lmforge.runtime import eval_mode

    device = device or next(model.parameters()).device
    classes: list[int] = []
    probs: list[float] = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            ids, mask = pad(texts[start:start + batch_size], pad_id)
            with autocast() if autocast else contextlib.nullcontext():
                logits = model(ids.to(device), attention_mask=mask.to(device))  # (B, K)
            p, c = logits.float().softmax(-1).max(-1)
            classes += c.tolist()
            probs += p.tolist()
    return classes, probs


def plot_confusion(scores: ClassificationScores, path: Path, title: str | None = None) -> Path | None:
    """The confusion matrix as a PNG (rows gold, columns predicted, each cell its count); None, with one notice,
    when matplotlib is missing."""

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from lmforge.progress import console

        console.print("[yellow]matplotlib is not installed: no confusion.png (pip install 'lmforge[train]')"
                      "[/yellow]")
        return None
    names = [str(c) for c in scores.classes]
    k = len(names)
    side = min(3.0 + 0.45 * k, 14.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=120)  # Figure + Agg directly: no pyplot global state
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(scores.confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if k <= 30:  # counts in the cells while they stay legible
        top = max((max(row) for row in scores.confusion), default=0)
        for i, row in enumerate(scores.confusion):
            for j, n in enumerate(row):
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                        color="white" if top and n > top / 2 else "black")
    ax.set_title(title or f"accuracy {scores.accuracy:.3f}, macro-F1 {scores.macro_f1:.3f}", fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    return path


def evaluate_classifier(checkpoint: str | Path, file: str | Path, *, out: str | Path, text_column: str = "text",
                        label_column: str = "label", batch_size: int = 32, max_source_len: int | None = None,
                        skip_bad_rows: bool = False, label_separator: str = ",", device: str = "auto",
                        precision: str = "auto", verify: bool = True) -> ClassifierEval:
    """Score the classifier `checkpoint` (or a run directory's best) on the labelled `file`; write into `out`.

    Texts longer than the model's max_seq_len (with their framing) are an error unless `max_source_len` truncates
    them to that many tokens, as `--objective-options.max-source-len` does in training.
    """
    from lmforge.atomic import write_json
    from lmforge.data.examples import UNKNOWN_LABEL, BadRows, read_pairs
    from lmforge.errors import UserError
    from lmforge.eval.metrics import classification_scores
    from lmforge.eval.task_checkpoint import open_task_checkpoint, require_file
    from lmforge.models.registry import CLASSIFY

    file = require_file(file, "labelled file", fix="pass --file FILE (.tsv or .csv with a header row, or .jsonl)")
    ckpt = open_task_checkpoint(checkpoint, capability=CLASSIFY, needed_for="classification",
                                fix="pass a checkpoint trained with --objective classification", device=device,
                                precision=precision, verify=verify)
    path, model, cfg, special, rt = ckpt.path, ckpt.model, ckpt.cfg, ckpt.special, ckpt.runtime
    bad_rows = BadRows(file, skip=skip_bad_rows, flag="--skip-bad-rows")
    rows = read_pairs(file, text_column, label_column, flags="--text-column / --label-column",
                      label_separator=label_separator if cfg.multi_label else None, bad_rows=bad_rows)
    if cfg.multi_label:
        return _evaluate_multilabel(ckpt, file, rows, out=out, text_column=text_column,
                                    label_column=label_column, batch_size=batch_size, max_source_len=max_source_len,
                                    bad_rows=bad_rows, label_separator=label_separator)

    known = {name: i for i, name in enumerate(cfg.labels)}
    kept = [(text, label.strip()) for text, label in rows if label.strip() in known]
    if len(kept) < len(rows) and not skip_bad_rows:
        bad = [(n, label.strip()) for n, (_, label) in enumerate(rows, start=1) if label.strip() not in known]
        unseen = list(dict.fromkeys(label for _, label in bad))
        raise UserError(f"{len(bad)} row(s) have labels the checkpoint does not know: "
                        f"{', '.join(map(repr, unseen[:5]))}{' ...' if len(unseen) > 5 else ''} (first at row "
                        f"{bad[0][0]}; column '{label_column}'; it knows {', '.join(map(repr, cfg.labels))})",
                        where=file, fix="pass --skip-bad-rows to score the other rows, or name the right column "
                                        "with --label-column")
    if len(kept) < len(rows):
        bad_rows.count(UNKNOWN_LABEL, len(rows) - len(kept))
    if not kept:
        raise UserError(f"no row of the file has a label the checkpoint knows ({', '.join(map(repr, cfg.labels))})",
                        where=file, fix="name the label column with --label-column")

    kept, texts = _encoded(ckpt, kept, file, max_source_len, bad_rows)
    predicted, probs = predict(model, texts, special.get("pad", 0), batch_size=batch_size, device=rt.device,
                               autocast=rt.autocast)
    names = list(cfg.labels)
    gold = [label for _, label in kept]
    guess = [names[c] for c in predicted]
    scores = classification_scores(guess, gold, names)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, predictions = out / METRICS_FILE, out / PREDICTIONS_FILE
    write_json(metrics, {"task": "classification", "checkpoint": str(path), "file": str(file),
                         "text_column": text_column, "label_column": label_column, **scores.to_dict(),
                         "counts": _counts(kept, bad_rows)})
    with atomic_file(predictions, "w") as f:
        for (text, label), p, prob in zip(kept, guess, probs, strict=True):
            f.write(json.dumps({"text": text, "gold": label, "predicted": p, "probability": round(prob, 6)},
                               ensure_ascii=False) + "\n")
    plot = plot_confusion(scores, out / CONFUSION_PLOT)
    return ClassifierEval(checkpoint=path, file=file, scores=scores, skipped=bad_rows.skipped, metrics=metrics,
                          predictions=predictions, plot=plot, bad_rows=bad_rows)


def _encoded(ckpt: TaskCheckpoint, rows: list[RowT], file: Path, max_source_len: int | None,
             bad_rows: BadRows) -> tuple[list[RowT], list[list[int]]]:
    """The (text, label) rows whose texts fit the model (too long ones skipped through `bad_rows`, or one error
    line), and those texts' ids as the classifier read texts in training."""
    from lmforge.data.examples import encode_texts, kept_rows
    from lmforge.errors import UserError
    from lmforge.models.registry import text_frame

    cfg, tok, special = ckpt.cfg, ckpt.tokenizer, ckpt.special
    kept, texts = kept_rows(rows, encode_texts(
        tok, [text for text, _ in rows], text_frame(cfg, special), special, limit=max_source_len or cfg.max_seq_len,
        truncate=max_source_len is not None, where=file, bad_rows=bad_rows,
        fix="truncate texts with --max-source-len N, or shorten the text"))
    if not kept:
        raise UserError(f"every row was skipped as bad ({bad_rows.summary()})", where=file,
                        fix="truncate texts with --max-source-len N")
    return kept, texts


def _counts(kept: list[Any], bad_rows: BadRows) -> dict[str, Any]:
    """metrics.json's counts: the rows read, scored and skipped (and why)."""
    return {"rows": len(kept) + bad_rows.skipped, "scored": len(kept), "skipped": bad_rows.skipped,
            "skipped_by_reason": dict(bad_rows.counts)}


def _evaluate_multilabel(ckpt: TaskCheckpoint, file: Path, rows: list[tuple[str, str]], *, out: str | Path,
                         text_column: str, label_column: str, batch_size: int, max_source_len: int | None,
                         bad_rows: BadRows, label_separator: str) -> ClassifierEval:
    """`evaluate_classifier` for a multi-label checkpoint: label sets, a label predicted over probability 0.5."""
    from lmforge.atomic import write_json
    from lmforge.data.examples import UNKNOWN_LABEL, split_labels
    from lmforge.errors import UserError
    from lmforge.eval.metrics import multilabel_scores

    path, model, cfg, special, rt = ckpt.path, ckpt.model, ckpt.cfg, ckpt.special, ckpt.runtime
    names = list(cfg.labels)
    sets = [split_labels(label, label_separator) for _, label in rows]
    bad = [(n, [x for x in s if x not in names]) for n, s in enumerate(sets, start=1) if any(x not in names for x in s)]
    if bad and not bad_rows.skip:
        unseen = list(dict.fromkeys(x for _, xs in bad for x in xs))
        raise UserError(f"{len(bad)} row(s) have labels the checkpoint does not know: "
                        f"{', '.join(map(repr, unseen[:5]))}{' ...' if len(unseen) > 5 else ''} (first at row "
                        f"{bad[0][0]}; column '{label_column}', labels separated by {label_separator!r}; it knows "
                        f"{', '.join(map(repr, names))})", where=file,
                        fix="pass --skip-bad-rows to score the other rows, or --label-separator / --label-column")
    skip = {n for n, _ in bad}
    if skip:
        bad_rows.count(UNKNOWN_LABEL, len(skip))
    kept = [(text, s) for n, ((text, _), s) in enumerate(zip(rows, sets), start=1) if n not in skip]
    if not kept:
        raise UserError("no row of the file has only labels the checkpoint knows", where=file,
                        fix="name the label column with --label-column")
    kept, texts = _encoded(ckpt, kept, file, max_source_len, bad_rows)
    probs = class_probabilities(model, texts, special.get("pad", 0), batch_size=batch_size, device=rt.device,
                                autocast=rt.autocast)
    guess = [[names[k] for k, p in enumerate(row) if p > 0.5] for row in probs]
    scores = multilabel_scores(guess, [s for _, s in kept], names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, predictions = out / METRICS_FILE, out / PREDICTIONS_FILE
    write_json(metrics, {"task": "classification", "multi_label": True, "checkpoint": str(path), "file": str(file),
                         "text_column": text_column, "label_column": label_column, **scores.to_dict(),
                         "counts": _counts(kept, bad_rows)})
    with atomic_file(predictions, "w") as f:
        for (text, gold), g, row in zip(kept, guess, probs, strict=True):
            f.write(json.dumps({"text": text, "gold": gold, "predicted": g,
                                "probabilities": {n: round(p, 6) for n, p in zip(names, row)}},
                               ensure_ascii=False) + "\n")
    return ClassifierEval(checkpoint=path, file=file, scores=scores, skipped=bad_rows.skipped, metrics=metrics,
                          predictions=predictions, plot=None, bad_rows=bad_rows)


__all__ = ["ClassifierEval", "class_probabilities", "evaluate_classifier", "plot_confusion", "predict"]
