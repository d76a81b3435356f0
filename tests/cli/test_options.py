"""Bad option values, bad choices and misspelled flags: one line on stderr, exit 2, no usage dump."""

from __future__ import annotations

import pytest

from lmforge.cli.main import main
from lmforge.train.logging import format_metric


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "usage:" not in err, err
    return err


@pytest.mark.parametrize("argv, line", [
    (["generate", "--max-new-tokens", "-5"], "--max-new-tokens is -5, but must be >= 1"),
    (["generate", "--top-k", "-1"], "--top-k is -1, but must be >= 0"),
    (["generate", "--temperature", "-1"], "--temperature is -1.0, but must be >= 0"),
    (["generate", "--temperature", "nan"], "--temperature is nan, but must be a finite number"),
    (["generate", "--top-p", "2"], "--top-p is 2.0, but must be in (0, 1]"),
    (["generate", "--top-p", "0"], "--top-p is 0.0, but must be in (0, 1]"),
    (["train", "--data", "/nonexistent", "--model.n-head", "0"], "--model.n-head is 0, but must be >= 1"),
    (["train", "--data", "/nonexistent", "--optim.lr", "nan"], "--optim.lr is nan, but must be a finite number"),
])
def test_bad_values_are_one_line_naming_the_flag(argv, line, capsys):
    assert line in _run(argv, capsys)


def test_bad_choice_lists_the_valid_ones_and_the_closest(capsys):
    err = _run(["prepare", "--tokenizer.kind", "nonsense"], capsys)
    assert "--tokenizer.kind is 'nonsense', but must be one of bpe, wordpiece, unigram, char" in err
    assert "(did you mean bf16?)" in _run(["train", "--precision", "bf61"], capsys)
    assert "must be one of auto, fp32, bf16, fp16" in _run(["train", "--precision", "fp8"], capsys)
    assert "(did you mean train?)" in _run(["trian"], capsys)


def test_misspelled_flag_suggests_the_closest(capsys):
    err = _run(["train", "--stesp", "5"], capsys)
    assert "unknown option '--stesp' (did you mean --steps?)" in err and err.startswith("lmforge train: error:")


def test_stop_takes_one_value_per_flag_and_leaves_the_prompt():
    from lmforge.cli.main import build_parser

    args = build_parser().parse_args(["generate", "--stop", ".", "ROMEO:", "--stop", "\n\n"])
    assert args.stop == [".", "\n\n"] and args.prompt_args == ["ROMEO:"]


def test_train_help_lists_the_presets(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "one of tiny, small," in out and "lstm-tiny" in out


def test_counts_print_as_integers():
    assert format_metric("val_examples", 612.0) == "612"
    assert format_metric("val_loss", 2.0) == "2.0000" and format_metric("val_ppl", 7.25) == "7.2500"
