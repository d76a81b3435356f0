"""The logging sinks: metrics.jsonl (and how a resume trims it), TensorBoard, the progress line, MFU, the plot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from lmforge.train import logging as tl
from lmforge.train.logging import MetricsFile, RunLogger, Throughput, format_train, peak_flops, plot_loss_curve


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_file_on_resume_drops_what_came_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"event": "train", "step": s, "loss": 1.0 / s} for s in range(1, 7)] + [{"event": "eval", "step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"event": "train", "st')  # cut by a kill
    m = MetricsFile(path, resume_step=4)
    m.write({"event": "resume", "step": 4})
    m.close()
    assert [(r["event"], r["step"]) for r in read(path)] == [("train", 1), ("train", 2), ("train", 3),
                                                              ("train", 4), ("eval", 4), ("resume", 4)]
    MetricsFile(path, resume_step=None).close()  # a fresh run starts an empty file
    assert path.read_text() == ""


def test_run_logger_writes_jsonl_and_tensorboard_and_a_fresh_run_drops_old_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def log(resume: bool, steps: range) -> None:
        logger = RunLogger(tmp_path, total_steps=10, start_step=steps.start - 1, start_tokens=0, resume=resume,
                           tensorboard=True, flops_per_token=1e3, peak=None)
        for s in steps:
            logger.train({"step": s, "loss": 10.0 - s, "lr": 0.1, "grad_norm": 1.0, "tokens": 100 * s}, 0.01 * s)
        logger.eval({"step": steps.stop - 1, "val_loss": 2.0, "val_ppl": 7.4})
        logger.close()

    log(False, range(1, 4))  # a run that never reached a checkpoint ...
    log(False, range(1, 3))  # ... started over in the same directory
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert {"train/loss", "train/lr", "train/tokens_per_s", "eval/val_loss", "eval/val_ppl"} <= set(
        acc.Tags()["scalars"])
    records = read(tmp_path / "metrics.jsonl")
    assert [r["event"] for r in records] == ["train", "train", "eval"]
    assert records[1]["tokens_per_s"] == pytest.approx(100 / 0.01) and records[1]["mfu"] is None


def test_throughput_mfu_and_eta():
    t = Throughput(start_step=0, total_steps=100, start_tokens=0, flops_per_token=6e6, peak=1e12)
    t.t0 -= 10.0  # 10 s since the start
    m = t.measure(step=20, tokens=20_000, busy_s=2.0)
    assert m["tokens_per_s"] == pytest.approx(10_000)
    assert m["mfu"] == pytest.approx(10_000 * 6e6 / 1e12)
    assert m["eta_s"] == pytest.approx(10.0 / 20 * 80, rel=0.01)
    assert Throughput(0, 100, 0, 6e6, None).measure(1, 10, 1.0)["mfu"] is None  # CPU: no peak, no MFU


def test_progress_line_shows_loss_lr_throughput_mfu_and_eta():
    line = format_train({"loss": 3.14159, "lr": 3e-4, "tokens_per_s": 12345.6, "mfu": 0.412, "eta_s": 3725})
    assert line == "loss 3.1416 | lr 3.00e-04 | 12,346 tok/s | MFU 41.2% | ETA 1:02:05"
    assert "MFU" not in format_train({"loss": 1.0, "lr": 1e-3, "tokens_per_s": 1.0, "mfu": None, "eta_s": None})


def test_plain_progress_when_not_a_terminal(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("LMFORGE_QUIET", raising=False)
    logger = RunLogger(tmp_path, total_steps=4, start_step=0, start_tokens=0, resume=False, tensorboard=False,
                       flops_per_token=1.0, peak=None)
    logger.train({"step": 2, "loss": 1.5, "lr": 1e-3, "grad_norm": 1.0, "tokens": 64}, 0.1)
    logger.eval({"step": 2, "val_loss": 1.25, "val_ppl": 3.49, "val_tokens": 10})
    logger.close()
    err = capsys.readouterr().err
    assert "step 2/4 loss 1.5000 | lr 1.00e-03 | 640 tok/s" in err
    assert "eval at step 2: val_loss 1.2500 | val_ppl 3.4900" in err and "val_tokens" not in err


def test_peak_flops_for_mfu(monkeypatch):
    monkeypatch.delenv("LMFORGE_PEAK_FLOPS", raising=False)
    assert peak_flops(torch.device("cpu")) is None
    monkeypatch.setattr(tl.torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(torch.device("cuda")) == 989e12
    monkeypatch.setattr(tl.torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_flops(torch.device("cuda")) == 756e12
    monkeypatch.setenv("LMFORGE_PEAK_FLOPS", "1e15")
    assert peak_flops(torch.device("cpu")) == 1e15


def test_loss_curve_png(tmp_path):
    path = plot_loss_curve({"train": [(1, 5.0), (2, 4.0), (3, 3.5)], "val": [(3, 3.8)]}, tmp_path / "sub" / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.png"]  # no temporary file left


def test_live_progress_line_on_a_terminal(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("LMFORGE_QUIET", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    logger = RunLogger(tmp_path, total_steps=4, start_step=0, start_tokens=0, resume=False, tensorboard=False,
                       flops_per_token=1e9, peak=1e13)
    assert logger.progress.live
    logger.step(1)
    logger.train({"step": 2, "loss": 1.5, "lr": 1e-3, "grad_norm": 1.0, "tokens": 64}, 0.1)
    logger.close()
    err = capsys.readouterr().err
    assert "2/4" in err and "loss 1.5000 | lr 1.00e-03 | 640 tok/s | MFU 6.4% | ETA" in err


def test_resumed_tensorboard_file_sorts_after_the_killed_runs(tmp_path):
    pytest.importorskip("tensorboard")
    # The killed run's file, started this very second on a host whose name sorts late.
    killed = tmp_path / f"events.out.tfevents.{int(time.time())}.zzzz.99999.0"
    killed.write_bytes(b"")
    sink = tl.TensorBoardSink(tmp_path, resume_step=3)
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0] == killed.name  # readers see the resumed run's purge last
