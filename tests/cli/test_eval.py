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
