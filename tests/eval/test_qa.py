"""`lmforge eval --task qa`: an extractive-QA checkpoint on a SQuAD file, scored as its training run scored it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli.main import main


def run(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def toy_squad(path, **kw):
    from train.objectives.test_extractive_qa import toy_squad as make  # tests/ is on the path (rootdir conftest)

    return make(path, **kw)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A bert-tiny span head trained for 30 steps on toy SQuAD v2.0 questions (a quarter unanswerable)."""
    root = tmp_path_factory.mktemp("qa")
    squad = toy_squad(root / "train.json", n=160, unanswerable=0.25)
    out = root / "run"
    code = main(["train", "--data", str(tiny_data), "--out", str(out), "--preset", "bert-tiny", "--objective",
                 "extractive_qa", "--objective-options.squad", squad, "--objective-options.val-fraction", "0.2",
                 "--objective-options.max-len", "24", "--objective-options.doc-stride", "6", "--seq-len", "24",
                 "--steps", "30", "--batch-size", "16", "--eval-batches", "0", "--model.d-model", "64",
                 "--optim.lr", "3e-3", "--optim.warmup-steps", "0", "--device", "cpu", "--no-tensorboard",
                 "--log-every", "10"])
    assert code == 0
    return squad, out


def test_eval_scores_the_held_out_questions_as_the_run_did(capsys, trained, tmp_path):
    from lmforge.data.examples import held_out

    squad, out = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("event") == "eval"][-1]
    doc = json.loads(Path(squad).read_text())
    paragraphs = doc["data"][0]["paragraphs"]
    kept = [p for p, h in zip(paragraphs, held_out(len(paragraphs), 0.2)) if h]  # one question per paragraph
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"version": "v2.0", "data": [{"title": "toy", "paragraphs": kept}]}))
    code, stdout, err = run(capsys, "--task", "qa", "--checkpoint", out / "checkpoints" / "step_000030", "--file",
                            dev, "--max-len", "24", "--doc-stride", "6", "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["questions"] == val["val_questions"] == len(kept)
    for key in ("exact_match", "f1", "best_exact_match", "best_f1", "best_f1_threshold"):
        assert metrics[key] == pytest.approx(val[f"val_{key}"]), key
    assert f"exact match {metrics['exact_match']:.4f} | F1 {metrics['f1']:.4f}" in stdout
    assert "has_answer_f1" in metrics and metrics["counts"]["windows"] > len(kept)  # long contexts: several windows
    predictions = [json.loads(line) for line in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [p["qas"][0]["id"] for p in kept]


def test_bad_input_is_one_line(capsys, trained, tiny_data, tmp_path):
    squad, out = trained
    doc = json.loads(Path(squad).read_text())
    no_answers = json.loads(json.dumps(doc))
    no_answers["data"][0]["paragraphs"][3]["qas"][0].update(answers=[], is_impossible=False)
    (tmp_path / "no_answers.json").write_text(json.dumps(no_answers))
    moved = json.loads(json.dumps(doc))
    qa = next(p["qas"][0] for p in moved["data"][0]["paragraphs"] if p["qas"][0]["answers"])
    qa["answers"][0]["answer_start"] += 1
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    (tmp_path / "lines.tsv").write_text("text\tlabel\nx\ty\n")
    cases = [
        (["--file", tmp_path / "no_answers.json"], "has no answers and is not marked is_impossible"),
        (["--file", tmp_path / "moved.json"], "does not occur in the context at answer_start"),
        (["--file", tmp_path / "moved.json"], "(fix: correct answer_start, or pass --skip-bad-rows to skip"),
        (["--file", tmp_path / "lines.tsv"], "SQuAD file is not valid JSON"),
        (["--file", squad, "--max-len", "300"], "--max-len 300 is longer than the model's max_seq_len 256"),
        (["--file", squad, "--text-column", "x"], "--text-column only applies with --task classification"),
    ]
    for argv, expected in cases:
        code, stdout, err = run(capsys, "--task", "qa", "--checkpoint", out, *argv, "--out", tmp_path / "o",
                                "--device", "cpu")
        assert code == 2 and stdout == "" and err.count("\n") == 1, (argv, err)
        assert expected in err, (argv, err)
    code, stdout, err = run(capsys, "--task", "qa", "--checkpoint", out, "--file", tmp_path / "moved.json",
                            "--skip-bad-rows", "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0 and "1 skipped (answer not in its context)" in stdout, err
    # A checkpoint without a span head cannot answer.
    from lmforge.models import build_model, get_preset
    from lmforge.models.io import save_model

    cfg = get_preset("tiny")
    gpt = save_model(tmp_path / "gpt", build_model(cfg), cfg, tokenizer_dir=tiny_data)
    code, _, err = run(capsys, "--task", "qa", "--checkpoint", gpt, "--file", squad, "--device", "cpu")
    assert code == 2 and "question answering needs a model that can extract answer spans" in err
