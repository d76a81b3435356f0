"""`--select-by METRIC`: the best checkpoint (and early stopping) follows the objective's metric, not only the loss."""

from __future__ import annotations

import json

import pytest

from train.objectives import run_train
from train.objectives.test_classification import toy_examples


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
