"""`lmforge train` from the command line: help, a summary on success, one line and exit 2 on bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmforge.cli.main import main

TINY = ["--model.n-layer", "1", "--model.d-model", "32", "--model.n-head", "2", "--seq-len", "32",
        "--batch-size", "4", "--eval-batches", "2", "--no-tensorboard", "--device", "cpu"]


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--resume" in out and "lmforge train --data data/prepared" in out
    for flag in ("--optim.schedule", "--grad-accum", "--optim.grad-clip", "--precision", "--compile, --no-compile",
                 "--early-stop-patience", "--on-nonfinite", "--keep-last", "--model.n-layer", "--eval-every"):
        assert flag in out, flag


def test_train_then_resume_for_longer_prints_summaries(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--steps", "3", *TINY]) == 0
    text = capsys.readouterr().out
    assert text.startswith("trained 3 steps (completed): val loss ") and "bits/byte" in text
    for line in (f"checkpoint:  {out / 'checkpoints' / 'step_000003'}", f"best:        {out / 'checkpoints' / 'best'}",
                 f"metrics:     {out / 'metrics.jsonl'}", f"loss curve:  {out / 'loss_curve.png'}",
                 f"config:      {out / 'config.yaml'}", f"next: lmforge generate --checkpoint {out}"):
        assert line in text
    # --resume reads OUT/config.yaml: no --data, and flags (more steps) override it.
    assert main(["train", "--out", str(out), "--resume", "--steps", "5"]) == 0
    assert capsys.readouterr().out.startswith("trained 5 steps (completed)")
    assert "steps: 5" in (out / "config.yaml").read_text()


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lmforge train: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(("args", "message"), [
    ([], "no prepared data given"),
    (["--data", "{tmp}/nope"], "no such data directory"),
    (["--data", "{data}", "--seq-len", "512"], "seq_len 512 is longer than the model's max_seq_len 256"),
    (["--data", "{data}", "--precision", "fp16"], "fp16 training is not supported on the CPU"),
    (["--data", "{data}", "--steps", "0"], "--steps is 0, but must be >= 1"),
    (["--data", "{data}", "--objective", "nope"], "unknown objective 'nope'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_data, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    args = [a.format(tmp=tmp_path, data=tiny_data) for a in args]
    err = one_line_error(capsys, ["train", "--out", str(out), *TINY, *args])  # args last: they win
    assert message in err
    assert not out.exists()


def test_existing_run_without_resume_is_refused_and_left_alone(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--steps", "2", *TINY]) == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in out.rglob("*")}
    err = one_line_error(capsys, ["train", "--data", str(tiny_data), "--out", str(out), "--steps", "2", *TINY])
    assert "already holds a training run" in err and "--resume" in err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in out.rglob("*")} == before


def test_divergence_exits_2_with_one_line(tiny_data, tmp_path):
    # An absurd learning rate: the loss is NaN/inf by the second step. A real process, for the real exit status.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_QUIET": "1"}
    r = subprocess.run([sys.executable, "-m", "lmforge", "train", "--data", str(tiny_data), "--out",
                        str(tmp_path / "run"), "--steps", "20", "--optim.lr", "1e6", "--optim.warmup-steps", "0",
                        "--eval-every", "0", *TINY], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "training diverged: the loss became NaN or infinite at step" in r.stderr
    assert "--on-nonfinite skip" in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_skip_mode_gives_up_after_many_nonfinite_steps_in_a_row(tiny_data, tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--steps",
                                  "100", "--optim.lr", "1e6", "--optim.warmup-steps", "0", "--eval-every", "0",
                                  "--on-nonfinite", "skip", *TINY])
    assert "training diverged: 25 non-finite steps in a row" in err


def test_help_shows_each_objectives_options_under_its_name(capsys):
    import dataclasses

    from lmforge.train.objectives import options_classes

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    sections: dict[str, list[str]] = {}  # "mlm, mlm_nsp" -> the flags of that group
    title = None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("objective_options of objective "):
            title = line.removeprefix("objective_options of objective ").removesuffix(":")
            sections[title] = []
        elif line and not line.startswith(" "):
            title = None
        elif title and line.lstrip().startswith("--objective-options."):
            sections[title].append(line.split()[0].rstrip(","))
    for objective, options in options_classes().items():
        mine = [flag for names, flags in sections.items() if objective in names.split(", ") for flag in flags]
        assert sorted(mine) == sorted(f"--objective-options.{f.name.replace('_', '-')}"
                                      for f in dataclasses.fields(options)), objective
    assert set(options_classes()) - {name for names in sections for name in names.split(", ")} == {"causal_lm"}


def test_the_trained_context_is_the_checkpoints_and_eval_scores_it(tiny_data, tmp_path, capsys):
    import json

    import torch

    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--steps", "2", *TINY]) == 0
    best = out / "checkpoints" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["trained_seq_len"] == 32 and config["max_seq_len"] == 256
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(tiny_data), "--max-batches", "1"]) == 0
    assert "windows of 32)" in capsys.readouterr().out  # not the preset's 256 positions, never trained
    # A checkpoint from before trained_seq_len was recorded still resumes (and records it from then on).
    step = out / "checkpoints" / "step_000002"
    state = torch.load(step / "train_state.pt", weights_only=True)
    del state["model_config"]["trained_seq_len"]
    torch.save(state, step / "train_state.pt")
    (step / "checksums.json").unlink()  # such checkpoints had no checksums either
    assert main(["train", "--out", str(out), "--resume", "--steps", "3"]) == 0
