from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.models import build_model, get_preset
from lmforge.models.io import save_model


@pytest.fixture(scope="module")
def checkpoints(tiny_data, tmp_path_factory):
    """Random GPT and LSTM checkpoints carrying the tiny data's tokenizer (as `lmforge train` writes them)."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for preset in ("tiny", "lstm-tiny"):
        torch.manual_seed(0)
        cfg = dataclasses.replace(get_preset(preset), vocab_size=512, d_model=32, n_layer=1, max_seq_len=64)
        paths[preset] = save_model(root / preset, build_model(cfg), cfg, tokenizer_dir=tiny_data)
    return paths


def run(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_scores_a_checkpoint_on_a_split(capsys, checkpoints, tiny_data):
    code, out, _ = run(capsys, "--checkpoint", checkpoints["tiny"], "--data", tiny_data, "--max-batches", 2,
                       "--device", "cpu")
    assert code == 0
    assert "on val (2,048 tokens, windows of 64)" in out  # 2 batches of 16 windows
    assert "loss " in out and "ppl " in out and "bits/byte" in out


def test_missing_checkpoint_is_one_line_and_exit_2(capsys, tiny_data, tmp_path):
    code, out, err = run(capsys, "--checkpoint", tmp_path / "nope", "--data", tiny_data)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lmforge eval: error: ")
    assert "checkpoint not found" in err
    code, _, err = run(capsys, "--data", tiny_data)
    assert code == 2 and "no checkpoint given" in err and "--compare" in err


def test_compare_only_flags_without_compare_are_one_line_and_exit_2(capsys, checkpoints, tiny_data):
    code, out, err = run(capsys, "--checkpoint", checkpoints["tiny"], "--data", tiny_data, "--steps", 5,
                         "--ngram-order", 4, "--lstm-checkpoint", checkpoints["tiny"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--lstm-checkpoint, --ngram-order, --steps only apply with --compare" in err
    code, _, err = run(capsys, "--checkpoint", checkpoints["tiny"], "--data", tiny_data, "--out", "x")
    assert code == 2 and "--out only applies with --compare" in err


def test_data_from_another_tokenizer_is_one_line_and_exit_2(capsys, checkpoints, tmp_path):
    from conftest import prepare_tiny

    other = prepare_tiny(tmp_path, kind="char", docs=60)
    code, out, err = run(capsys, "--checkpoint", checkpoints["tiny"], "--data", other)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "another tokenizer than the checkpoint's" in err


def test_compare_prints_one_table_and_writes_json_and_chart(capsys, checkpoints, tiny_data, tmp_path):
    out_dir = tmp_path / "cmp"
    code, out, _ = run(capsys, "--compare", "--data", tiny_data, "--checkpoint", checkpoints["tiny"],
                       "--lstm-checkpoint", checkpoints["lstm-tiny"], "--out", out_dir, "--ngram-order", 2,
                       "--max-batches", 1, "--device", "cpu")
    assert code == 0
    for word in ("2-gram KN", "LSTM", "Transformer", "ppl", "bits/byte", "compare.json", "compare.png"):
        assert word in out
    saved = json.loads((out_dir / "compare.json").read_text())
    assert [m["kind"] for m in saved["models"]] == ["ngram", "lstm", "transformer"]
    # The Transformer reads at most 64 tokens, so both neural models are scored on windows of 64, not 128.
    assert saved["seq_len"] == 64 and saved["models"][1]["tokens"] == saved["models"][2]["tokens"] == 16 * 64
    assert (out_dir / "compare.png").stat().st_size > 1000
    assert not (out_dir / "lstm").exists() and not (out_dir / "transformer").exists()  # loaded, not trained


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "lmforge eval --compare --data" in out and "--lstm-checkpoint" in out


# ------------------------------------------------------------------------------------ --task classification
def zebra_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(words, "yes" if they include "zebra" else "no"): a toy task a tiny LSTM learns in a few dozen steps."""
    from train.objectives.test_classification import toy_examples  # tests/ is on the path (rootdir conftest)

    return toy_examples(n, seed)


def write_labelled(path, rows, header=("text", "label")):
    path.write_text("\t".join(header) + "\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def classifier(tiny_data, tmp_path_factory):
    """A random-weight LSTM classifier over labels no / yes, carrying the tiny data's tokenizer."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("lstm-tiny"), vocab_size=512, d_model=32, max_seq_len=64,
                              labels=["no", "yes"], head="classify")
    return save_model(tmp_path_factory.mktemp("clf") / "ckpt", build_model(cfg), cfg, tokenizer_dir=tiny_data)


def classify(capsys, *argv):
    return run(capsys, "--task", "classification", "--device", "cpu", *argv)


def test_classification_writes_metrics_predictions_and_confusion_plot(capsys, classifier, tmp_path):
    from lmforge.checkpoints import load_model
    from lmforge.data.examples import pad
    from lmforge.data.tokenizer import load_tokenizer, special_token_ids
    from lmforge.models.registry import text_frame

    rows = zebra_examples(21)
    # SST-2's dev file names its text column "content" and puts the label first: columns are mapped, not assumed.
    file = write_labelled(tmp_path / "dev.tsv", [(y, t) for t, y in rows], header=("label", "content"))
    out_dir = tmp_path / "scored"
    code, out, _ = classify(capsys, "--checkpoint", classifier, "--file", file, "--text-column", "content",
                            "--out", out_dir, "--batch-size", 4)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 5 and "on dev.tsv (21 examples): accuracy " in lines[0] and "macro-F1 " in lines[0]
    assert lines[1].startswith("  per class F1: no ")

    metrics = json.loads((out_dir / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert metrics["counts"] == {"rows": 21, "scored": 21, "skipped": 0, "skipped_by_reason": {}}
    assert metrics["classes"] == ["no", "yes"]
    assert [p["text"] for p in predictions] == [t for t, _ in rows]
    assert [p["gold"] for p in predictions] == [y for _, y in rows]
    assert all(0.5 <= p["probability"] <= 1 for p in predictions)  # the probability of the predicted class
    correct = sum(p["gold"] == p["predicted"] for p in predictions)
    assert metrics["accuracy"] == pytest.approx(correct / 21) and f"accuracy {correct / 21:.4f}" in lines[0]
    assert sum(map(sum, metrics["confusion_matrix"])) == 21
    assert set(metrics["per_class"]["yes"]) == {"precision", "recall", "f1", "support", "predicted"}
    assert (out_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    # The predictions are the model's on the texts framed and padded as training frames and pads them.
    model, cfg = load_model(classifier)
    tok = load_tokenizer(classifier)
    special = special_token_ids(tok)
    before, after = text_frame(cfg, special)
    ids, mask = pad([[*before, *tok.encode(t, add_special_tokens=False).ids, *after] for t, _ in rows],
                    special.get("pad", 0))
    with torch.no_grad():
        probs = model.eval()(ids, attention_mask=mask).softmax(-1)
    assert [p["predicted"] for p in predictions] == [cfg.labels[i] for i in probs.argmax(-1).tolist()]
    assert [p["probability"] for p in predictions] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_unseen_labels_are_one_line_or_skipped_with_a_count(capsys, classifier, tmp_path):
    rows = [*zebra_examples(6), ("a maybe text", "maybe"), ("another", "perhaps")]
    file = write_labelled(tmp_path / "odd.tsv", rows)
    code, out, err = classify(capsys, "--checkpoint", classifier, "--file", file, "--out", tmp_path / "o")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "2 row(s) have labels the checkpoint does not know: 'maybe', 'perhaps' (first at row 7" in err
    assert str(file) in err and "--skip-bad-rows" in err
    assert not (tmp_path / "o").exists()

    code, out, _ = classify(capsys, "--checkpoint", classifier, "--file", file, "--out", tmp_path / "o",
                            "--skip-bad-rows")
    assert code == 0 and "(6 examples, 2 skipped)" in out
    assert f"skipped 2 row(s) of {file}: 2 with a label the checkpoint does not know" in out
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["counts"] == {
        "rows": 8, "scored": 6, "skipped": 2, "skipped_by_reason": {"with a label the checkpoint does not know": 2}}


def test_a_csv_file_with_empty_and_too_long_texts_is_one_line_or_skipped_with_a_count(capsys, classifier, tmp_path):
    import csv

    rows = [*zebra_examples(6), ("", "yes"), (" ".join(["word"] * 100), "no"), ("commas, and\na newline", "no")]
    file = tmp_path / "dev.csv"
    with open(file, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("id", "sentence", "label"), *((n, t, y) for n, (t, y) in enumerate(rows))])
    argv = ["--checkpoint", classifier, "--file", file, "--text-column", "sentence", "--out", tmp_path / "o"]
    code, out, err = classify(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{file}: line 8: the source and target must both be non-empty text" in err and "--skip-bad-rows" in err
    code, out, err = classify(capsys, *argv, "--skip-bad-rows")
    assert code == 0, err
    assert "(7 examples, 2 skipped)" in out and f"skipped 2 row(s) of {file}: 1 empty, 1 longer than the context" in out
    predictions = [json.loads(line) for line in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert predictions[-1]["text"] == "commas, and\na newline"  # a quoted CSV field keeps its comma and newline
    counts = json.loads((tmp_path / "o" / "metrics.json").read_text())["counts"]
    assert counts == {"rows": 9, "scored": 7, "skipped": 2,
                      "skipped_by_reason": {"empty": 1, "longer than the context": 1}}


def test_classification_mistakes_are_one_line_and_exit_2(capsys, classifier, checkpoints, tiny_data, tmp_path):
    file = write_labelled(tmp_path / "dev.tsv", zebra_examples(4))
    cases = [
        (["--checkpoint", classifier, "--file", file, "--text-column", "sentence"], "no column 'sentence'"),
        (["--checkpoint", classifier, "--file", file, "--text-column", "sentence"], "--text-column / --label-column"),
        (["--checkpoint", classifier], "--task classification needs --file"),
        (["--checkpoint", classifier, "--file", tmp_path / "nope.tsv"], "labelled file not found"),
        (["--checkpoint", checkpoints["tiny"], "--file", file], "classification needs a model that can"),
        (["--checkpoint", classifier, "--file", file, "--data", tiny_data], "--data only applies with the "
                                                                            "perplexity task"),
        (["--checkpoint", classifier, "--file", file, "--compare"], "--compare compares language models"),
    ]
    for argv, expected in cases:
        code, out, err = classify(capsys, *argv, "--out", tmp_path / "o")
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert expected in err, (argv, err)
    # A classification flag without the task would be silently ignored: refused instead.
    code, _, err = run(capsys, "--checkpoint", checkpoints["tiny"], "--data", tiny_data, "--file", file)
    assert code == 2 and "--file only applies with --task classification" in err


def test_a_trained_classifier_scores_its_held_out_examples_as_its_run_did(capsys, tiny_data, tmp_path):
    """The run's last evaluation and `lmforge eval --task classification` on the same held-out rows agree."""
    from lmforge.data.examples import held_out

    rows = zebra_examples(240)
    pairs = write_labelled(tmp_path / "train.tsv", rows)
    run_dir = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--out", str(run_dir), "--preset", "lstm-tiny",
                 "--objective", "classification", "--objective-options.pairs", str(pairs),
                 "--objective-options.pairs-val-fraction", "0.2", "--eval-batches", "0", "--steps", "30",
                 "--batch-size", "8", "--optim.lr", "1e-2", "--optim.schedule", "constant", "--optim.warmup-steps",
                 "0", "--model.d-model", "64", "--device", "cpu", "--no-tensorboard", "--log-every", "10"])
    assert code == 0
    summary = capsys.readouterr().out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("event") == "eval"][-1]
    assert f"accuracy {val['val_accuracy']:.4f}" in summary and f"macro-F1 {val['val_f1']:.4f}" in summary

    dev = write_labelled(tmp_path / "dev.tsv", [r for r, h in zip(rows, held_out(len(rows), 0.2)) if h])
    code, out, _ = classify(capsys, "--checkpoint", run_dir, "--file", dev, "--out", tmp_path / "scored")
    assert code == 0
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert metrics["examples"] == val["val_examples"]
    assert metrics["accuracy"] == pytest.approx(val["val_accuracy"])
    assert metrics["macro_f1"] == pytest.approx(val["val_f1"])


@pytest.mark.shared_data
def test_sst2_dev_file_with_its_own_columns_is_scored(capsys, shared_data, tiny_data, classifier, tmp_path):
    """SST-2's dev file (label, content) read as it is; a random classifier over labels 0 / 1 only shows the
    mechanics (accuracy near chance), not a figure."""
    dev = shared_data / "sst2" / "dev.tsv"
    if not dev.is_file():
        pytest.skip(f"{dev} not present")
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("lstm-tiny"), vocab_size=512, d_model=32, max_seq_len=64,
                              labels=["0", "1"], head="classify")
    ckpt = save_model(tmp_path / "sst2", build_model(cfg), cfg, tokenizer_dir=tiny_data)
    code, out, _ = classify(capsys, "--checkpoint", ckpt, "--file", dev, "--text-column", "content",
                            "--max-source-len", "64", "--out", tmp_path / "o", "--batch-size", "64")
    assert code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["counts"]["skipped"] == 0 and metrics["examples"] == metrics["counts"]["rows"] > 800
    assert 0.3 < metrics["accuracy"] < 0.7


def test_a_damaged_checkpoint_is_one_line_and_no_verify_skips_the_check(capsys, checkpoints, tiny_data, tmp_path):
    import shutil

    from lmforge.checkpoints import write_checksums
    from lmforge.models.io import WEIGHTS

    path = shutil.copytree(checkpoints["tiny"], tmp_path / "ckpt")
    write_checksums(path, [WEIGHTS])
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-3] ^= 0x01  # a flipped bit in the last weight
    (path / WEIGHTS).write_bytes(bytes(data))
    flags = ["--checkpoint", path, "--data", tiny_data, "--max-batches", 1, "--device", "cpu"]
    code, _, err = run(capsys, *flags)
    assert code == 2 and err.count("\n") == 1 and "sha256" in err
    code, out, _ = run(capsys, *flags, "--no-verify")
    assert code == 0 and "ppl " in out
