"""`lmforge quantize` and `lmforge prune` end to end: what they print, what they write, and one line for bad input."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from lmforge.checkpoints import load_model
from lmforge.cli.main import main
from lmforge.compress.prune import prunable_layers, sparsity
from lmforge.eval.perplexity import evaluate_checkpoint
from lmforge.models import build_model
from lmforge.models.config import get_preset
from lmforge.models.io import save_model
from lmforge.recipes.compress import QuantizeConfig, quantize_checkpoint


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_quantize_reports_size_perplexity_and_speed_and_writes_a_loadable_checkpoint(trained_lms, tiny_data,
                                                                                      tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", str(trained_lms["gpt"]), "--bits", "8", "--out", str(out), "--data", str(tiny_data),
                 "--new-tokens", "16"]) == 0
    text = capsys.readouterr().out
    assert "int8, 8 linear layers swapped" in text and "x smaller" in text and "tokens/s" in text
    before, after = map(float, re.search(r"perplexity: +([\d.]+) -> ([\d.]+)", text).groups())
    # printed to 3 decimals; the quantised one scored as every verb loads it, through the one loader
    assert before == pytest.approx(evaluate_checkpoint(trained_lms["gpt"], tiny_data).score.ppl, abs=6e-4)
    assert after == pytest.approx(evaluate_checkpoint(out, tiny_data).score.ppl, abs=6e-4)
    assert abs(after / before - 1) < 0.01  # int8 within 1% of fp32
    assert main(["generate", "--checkpoint", str(out), "The", "--max-new-tokens", "4", "--temperature", "0"]) == 0


def test_int4_report_without_data_says_how_to_get_perplexity(trained_lms, tmp_path):
    report = quantize_checkpoint(trained_lms["llama"], QuantizeConfig(out=str(tmp_path / "int4"), bits=4,
                                                                      group_size=32, new_tokens=0))
    assert report.after.ppl is None and report.after.tokens_per_s is None
    assert report.spec.group_size == 32 and report.after.bytes * 2.5 < report.before.bytes
    assert load_model(tmp_path / "int4")[0].blocks[0].mlp.gate.group_size == 32


def test_bad_quantize_input_is_one_line(trained_lms, tiny_data, tmp_path, capsys):
    ckpt = str(trained_lms["gpt"])
    assert "--bits is 3" in one_line_error(capsys, "quantize", ckpt, "--bits", "3", "--out", str(tmp_path / "q"))
    assert "--group-size is 48" in one_line_error(capsys, "quantize", ckpt, "--bits", "4", "--group-size", "48",
                                                  "--out", str(tmp_path / "q"))
    assert "no output directory" in one_line_error(capsys, "quantize", ckpt)
    cfg = dataclasses.replace(get_preset("lstm-tiny"), vocab_size=512, max_seq_len=16)
    lstm = save_model(tmp_path / "lstm", build_model(cfg), cfg, tiny_data)
    err = one_line_error(capsys, "quantize", str(lstm), "--out", str(tmp_path / "q"))
    assert "this checkpoint is a lstm recurrent model" in err
    assert not (tmp_path / "q").exists()


def test_prune_prints_the_table_and_recovers_through_the_trainer(trained_lms, tiny_data, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", str(trained_lms["llama"]), "--data", str(tiny_data), "--levels", "0", "--levels", "0.5",
                 "--levels", "2:4", "--recover-steps", "6", "--batch-size", "4", "--out", str(out),
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    table = captured.err + captured.out  # the table goes to the console (stderr), the paths to stdout
    rows = {cells[0]: cells for line in table.splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.split("│")[1:-1]]]}
    base = evaluate_checkpoint(trained_lms["llama"], tiny_data).score.ppl
    assert rows["0%"][1:3] == ["0.0%", f"{base:.2f}"] and rows["0%"][4] == "-"  # the checkpoint's own perplexity
    assert "recovered: 6 fine-tune steps, the zeros held" in " ".join(table.split())
    for level in ("50%", "2:4"):
        assert rows[level][1] == "50.0%" and float(rows[level][2]) > base
        assert float(rows[level][4]) < float(rows[level][2])  # the recovery fine-tune won some of it back
        assert rows[level][6] == "50.0%"  # and kept every pruned weight at zero
    for level in ("sparsity0.50", "2of4"):
        pruned, _ = load_model(out / level / "pruned")
        recovered, _ = load_model(out / level / "recovered")
        assert sparsity(pruned) == pytest.approx(0.5, abs=1e-3)
        assert sparsity(recovered) == sparsity(pruned)  # exactly: the zeros held through the fine-tune
        for name, before in prunable_layers(pruned).items():
            after = prunable_layers(recovered)[name].weight
            assert torch.equal(after == 0, before.weight == 0)  # the same weights are zero, no others
            assert not torch.equal(after, before.weight)  # and the kept ones moved
        assert evaluate_checkpoint(out / level / "pruned", tiny_data).score.ppl > base
    assert not (out / "sparsity0.00" / "recovered").exists()  # nothing to recover at 0%


def test_bad_prune_input_is_one_line(trained_lms, tiny_data, tmp_path, capsys):
    ckpt = str(trained_lms["gpt"])
    assert "outside [0, 1)" in one_line_error(capsys, "prune", ckpt, "--data", str(tiny_data), "--levels", "1")
    assert "no prepared data" in one_line_error(capsys, "prune", ckpt)
    assert "pass --out DIR with --recover-steps" in one_line_error(capsys, "prune", ckpt, "--data", str(tiny_data),
                                                                   "--recover-steps", "5")
