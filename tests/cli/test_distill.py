"""`lmforge distill`: a student distilled from a teacher through the one trainer lands a checkpoint that `lmforge
eval` reads; its --help teaches the method; bad input is one line, exit status 2, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from lmforge.cli.main import main

STUDENT = ["--student-layers", "1", "--model.d-model", "64", "--model.n-head", "4", "--seq-len", "32",
           "--batch-size", "8", "--steps", "12", "--log-every", "1", "--eval-every", "0", "--eval-batches", "2",
           "--optim.warmup-steps", "0", "--device", "cpu", "--no-tensorboard"]


def test_distill_trains_a_smaller_student_that_eval_reads(trained_lms, tiny_data, tmp_path, capsys):
    out = tmp_path / "student"
    rc = main(["distill", "--teacher", str(trained_lms["gpt"]), "--data", str(tiny_data), "--out", str(out),
               "--temperature", "3", "--alpha", "0.7", *STUDENT])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "trained 12 steps" in printed and "bits/byte" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("event") == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])  # it learns
    config = (out / "config.yaml").read_text()
    assert "objective: distill" in config and "temperature: 3.0" in config and "alpha: 0.7" in config
    best = out / "checkpoints" / "best"
    student = json.loads((best / "config.json").read_text())
    teacher = json.loads((trained_lms["gpt"] / "config.json").read_text())
    assert student["n_layer"] == 1 < teacher["n_layer"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(tiny_data), "--max-batches", "2"]) == 0
    assert "bits" in capsys.readouterr().out


def test_help_teaches_the_method_and_takes_the_trainers_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for words in ("--teacher", "--temperature", "--alpha", "--student-layers", "KL", "T²", "--optim.lr",
                  "--model.n-layer", "lmforge distill --teacher runs/train"):
        assert words in text, words


def another_tokenizer(teacher, tmp_path):
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace('"Ġthe"', '"Ġteh"', 1))
    return other


@pytest.mark.parametrize("flags,message", [
    ([], "no teacher checkpoint given"),
    (["--teacher", "no/such/run"], "teacher checkpoint not found"),
    (["--teacher", "TEACHER", "--temperature", "0"], "--temperature is 0, but it divides the logits"),
    (["--teacher", "TEACHER", "--temperature", "-1"], "must be > 0"),
    (["--teacher", "TEACHER", "--alpha", "1.5"], "--alpha is 1.5"),
    (["--teacher", "TEACHER", "--objective", "mlm"], "trains with the distill objective, not mlm"),
    (["--teacher", "OTHER"], "the teacher does not share the data's tokenizer"),
])
def test_bad_input_is_one_line_and_writes_nothing(flags, message, trained_lms, tiny_data, tmp_path, capsys):
    swap = {"TEACHER": str(trained_lms["gpt"]), "OTHER": str(another_tokenizer(trained_lms["gpt"], tmp_path))}
    out = tmp_path / "student"
    capsys.readouterr()
    rc = main(["distill", *[swap.get(f, f) for f in flags], "--data", str(tiny_data), "--out", str(out), *STUDENT])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("lmforge distill: error:"), err
    assert message in err, err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
