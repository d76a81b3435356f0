"""`--select-by METRIC`: the best checkpoint (and early stopping) follows the objective's metric, not only the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train.objectives import run_train, write_tsv
from train.objectives.test_classification import toy_examples
from train.objectives.test_extractive_qa import QA, toy_squad


def write_labelled(path, rows):
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


CLASSIFY = ["--preset", "lstm-tiny", "--objective", "classification", "--eval-every", "4", "--eval-batches", "0",
            "--steps", "24", "--optim.lr", "1e-2", "--optim.schedule", "constant", "--log-every", "4"]


@pytest.mark.parametrize("select_by", ["accuracy", "val_f1", "val_loss"])
def test_best_checkpoint_is_the_evaluation_with_the_best_selected_metric(tmp_path, tiny_data, capsys, select_by):
    pairs = write_labelled(tmp_path / "train.tsv", toy_examples(160))
    rc, records = run_train(tiny_data, tmp_path / "run", *CLASSIFY, "--objective-options.pairs", str(pairs),
                            "--select-by", select_by)
    assert rc == 0
    evals = [r for r in records if r.get("event") == "eval"]
    key = "val_" + select_by.removeprefix("val_")
    lower = key == "val_loss"
    best = min(evals, key=lambda e: e[key]) if lower else max(evals, key=lambda e: e[key])  # the first of ties
    saved = json.loads((tmp_path / "run" / "checkpoints" / "best" / "metrics.json").read_text())
    assert saved["step"] == best["step"] and saved[key] == best[key]
    summary = capsys.readouterr().out
    if not lower:
        assert f"(val {key[4:]} {best[key]:.4f}, val loss {best['val_loss']:.4f} at step {best['step']})" in summary


def test_an_unreported_metric_is_one_line_before_anything_is_written(tmp_path, tiny_data, capsys):
    pairs = write_labelled(tmp_path / "train.tsv", toy_examples(40))
    rc, _ = run_train(tiny_data, tmp_path / "run", *CLASSIFY, "--objective-options.pairs", str(pairs),
                      "--select-by", "bleu")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "--select-by bleu: this objective's evaluation reports no 'bleu' (it reports: loss, accuracy, f1" in err
    assert not (tmp_path / "run").exists()


def test_a_language_model_run_selects_by_its_own_metrics(tmp_path, tiny_data, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "run", "--select-by", "exact_match", "--steps", "2")
    err = capsys.readouterr().err
    assert rc == 2 and "--select-by exact_match: this objective's evaluation reports no 'exact_match' (it reports: " \
                       "loss, ppl, bpb, tokens)" in err
    assert not (tmp_path / "run").exists()
    rc, records = run_train(tiny_data, tmp_path / "run", "--select-by", "bpb", "--steps", "4", "--eval-every", "2")
    assert rc == 0
    evals = [r for r in records if r.get("event") == "eval"]
    best = json.loads((tmp_path / "run" / "checkpoints" / "best" / "metrics.json").read_text())
    assert best["val_bpb"] == min(e["val_bpb"] for e in evals)


def test_an_objective_without_declared_metrics_is_checked_at_its_first_evaluation(tmp_path, tiny_data, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "run", "--preset", "bert-tiny", "--objective", "mlm", "--select-by",
                      "bleu", "--steps", "1")
    err = capsys.readouterr().err
    assert rc == 2 and "--select-by bleu: this objective's evaluation reports no 'bleu' (it reports: loss, " \
                       "mlm_loss" in err


def test_resuming_under_another_select_by_is_one_line(tmp_path, tiny_data, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "run", "--steps", "2", "--select-by", "bpb")
    assert rc == 0
    capsys.readouterr()
    rc, _ = run_train(tiny_data, tmp_path / "run", "--steps", "4", "--resume", "--select-by", "loss")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "select_by" in err, err


def copy_pairs(n: int = 200) -> list[tuple[str, str]]:
    """(4-6 of 12 one-token words, the same words): a t5-tiny copies it well enough in 60 steps for the generated
    text's scores to rise unevenly, each metric peaking at its own evaluation."""
    rng = np.random.default_rng(0)
    words = ["are", "statement", "and", "can", "method", "with", "not", "type", "str", "string", "return", "that"]
    rows = [" ".join(words[k] for k in rng.integers(len(words), size=int(rng.integers(4, 7)))) for _ in range(n)]
    return [(r, r) for r in rows]


def selected(records, key, out):
    """(the first evaluation with the best `key` in metrics.jsonl, checkpoints/best's metrics.json)."""
    evals = [r for r in records if r.get("event") == "eval"]
    lower = key == "val_loss"
    best = min(evals, key=lambda e: e[key]) if lower else max(evals, key=lambda e: e[key])  # the first of ties
    return best, json.loads((out / "checkpoints" / "best" / "metrics.json").read_text())


@pytest.mark.parametrize("select_by", ["bleu", "val_rouge_l"])
def test_seq2seq_selects_by_the_generated_texts_score(tmp_path, tiny_data, capsys, select_by):
    pairs = write_tsv(tmp_path / "p.tsv", copy_pairs())
    rc, records = run_train(tiny_data, tmp_path / "run", "--preset", "t5-tiny", "--objective", "seq2seq",
                            "--objective-options.pairs", str(pairs), "--objective-options.generate-eval",
                            "--steps", "60", "--eval-every", "6", "--eval-batches", "0", "--log-every", "6",
                            "--optim.lr", "3e-3", "--optim.schedule", "constant", "--select-by", select_by)
    assert rc == 0
    key = "val_" + select_by.removeprefix("val_")
    best, saved = selected(records, key, tmp_path / "run")
    # On the development CPU the metric peaks before the loss does (steps 48 / 54 against 60), so selecting by the
    # loss would fail this; that gap rests on exact float trajectories, which another CPU may not reproduce, so it is
    # not asserted here (test_extractive_qa_selects_by_exact_match asserts a gap that holds by construction).
    assert saved["step"] == best["step"] and saved[key] == best[key] and best[key] > 0
    summary = capsys.readouterr().out
    assert f"(val {key[4:]} {best[key]:.4f}, val loss {best['val_loss']:.4f} at step {best['step']})" in summary
    # The summary's first line reports the last evaluation's generated-text scores beside its loss.
    last = [r for r in records if r.get("event") == "eval"][-1]
    assert last["val_chrf"] > 0
    assert (f"trained 60 steps (completed): val loss {last['val_loss']:.4f}, accuracy {last['val_accuracy']:.4f}, "
            f"BLEU {last['val_bleu']:.2f}, chrF {last['val_chrf']:.2f}, ROUGE-L {last['val_rouge_l']:.4f}\n") in summary


def test_extractive_qa_selects_by_exact_match(tmp_path, tiny_data, capsys):
    rc, records = run_train(tiny_data, tmp_path / "run", *QA, "--objective-options.squad",
                            toy_squad(tmp_path / "toy.json", n=240), "--objective-options.max-len", "64",
                            "--seq-len", "64", "--batch-size", "16", "--objective-options.val-fraction", "0.2",
                            "--eval-batches", "0", "--steps", "40", "--eval-every", "5", "--log-every", "5",
                            "--optim.lr", "3e-3", "--optim.schedule", "constant", "--select-by", "exact_match")
    assert rc == 0
    best, saved = selected(records, "val_exact_match", tmp_path / "run")
    by_loss, _ = selected(records, "val_loss", tmp_path / "run")
    # Exact match saturates at 1.0 early (the first of the ties is kept) while the loss keeps falling (10 vs 35).
    assert best["step"] < by_loss["step"]
    assert saved["step"] == best["step"] and saved["val_exact_match"] == best["val_exact_match"]
    assert f"(val exact_match {best['val_exact_match']:.4f}, val loss {best['val_loss']:.4f} at step " \
           f"{best['step']})" in capsys.readouterr().out
