"""Where training metrics go: a JSONL file, TensorBoard, a live progress line, and a loss-curve plot at the end.

The loop hands `RunLogger` one record per log or eval event; each sink does one thing with it. Only the main
process of a multi-process run makes a `RunLogger` (others get `NullLogger`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_file, write_text
from lmforge.progress import console

# Dense bf16/fp16 tensor-core peak FLOP/s by GPU name (first match wins: specific names before general ones).
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s for MFU: env LMFORGE_PEAK_FLOPS, else the table for known GPUs; None on CPU/MPS/unknown."""
    if os.environ.get("LMFORGE_PEAK_FLOPS"):
        return float(os.environ["LMFORGE_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


class MetricsFile:
    """`metrics.jsonl`: one JSON record per event, flushed as written so a killed run keeps what it logged."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.is_file():
            # Drop what a killed run logged after its last checkpoint: the resumed run logs those steps again.
            keep = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            write_text(path, "".join(line + "\n" for line in keep))
        elif path.exists():
            path.unlink()
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", math.inf)
    except (json.JSONDecodeError, AttributeError):
        return math.inf  # a line cut short by a kill


class TensorBoardSink:
    """Scalars under `train/...` and `eval/...` in OUT/tensorboard; off (with one notice) without tensorboard."""

    def __init__(self, logdir: Path, resume_step: int | None) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            console.print("[yellow]tensorboard is not installed: no TensorBoard events "
                          "(pip install 'lmforge[train]')[/yellow]")
            return
        old_files = sorted(logdir.glob("events.out.tfevents.*")) if logdir.is_dir() else []
        if resume_step is None:
            # A fresh run in this directory (an earlier one never reached a checkpoint): its curves start over.
            for old in old_files:
                old.unlink()
        else:
            _wait_for_later_second(old_files)
        # purge_step hides events a killed run wrote after the checkpoint we resume from.
        self.writer = SummaryWriter(str(logdir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        prefix = record.get("event", "train")
        for key, value in record.items():
            if key not in ("event", "step") and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _wait_for_later_second(event_files: list[Path]) -> None:
    """Readers take event files in name order, and a name starts with its creation time in whole seconds: a
    resumed run's file must sort after the killed run's, or its purge of the redone steps is read first and the
    stale steps after it. Only a resume within the same second as the last start waits (under a second)."""
    stamps = []
    for f in event_files:
        with contextlib.suppress(IndexError, ValueError):
            stamps.append(int(f.name.split(".")[3]))  # events.out.tfevents.<seconds>.<host>.<pid>.<n>
    deadline = time.monotonic() + 1.5  # a stamp from the future (another clock) is not waited for
    while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
        time.sleep(0.05)


class ProgressLine:
    """A live rich progress line on a terminal; a plain line per log event when output is not a terminal."""

    def __init__(self, total_steps: int, start_step: int) -> None:
        self.live = sys.stderr.isatty() and os.environ.get("LMFORGE_QUIET") != "1"
        self.plain = not self.live and os.environ.get("LMFORGE_QUIET") != "1"
        self.total = total_steps
        self.progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
            self.progress.start()

    def update(self, step: int, record: dict[str, Any] | None = None) -> None:
        if record is not None:
            info = format_train(record)
            if self.progress is not None:
                self.progress.update(self.task, completed=step, info=info)
            elif self.plain:
                console.print(f"step {step}/{self.total} {info}", highlight=False)
        elif self.progress is not None:
            self.progress.update(self.task, completed=step)

    def message(self, text: str) -> None:
        if self.live or self.plain:
            console.print(text, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


COUNTS = ("examples", "tokens", "count", "pairs", "documents", "sequences", "steps", "step")


def format_metric(name: str, value: Any) -> str:
    """A metric as printed: a count (`val_examples`, an int) as an integer, anything else to 4 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (name.rsplit("_", 1)[-1] in COUNTS and float(value).is_integer()):
        return str(int(value))
    return f"{value:.4f}"


def format_train(r: dict[str, Any]) -> str:
    parts = [f"loss {r['loss']:.4f}", f"lr {r['lr']:.2e}", f"{r['tokens_per_s']:,.0f} tok/s"]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    if r.get("eta_s") is not None:
        parts.append(f"ETA {_hms(r['eta_s'])}")
    return " | ".join(parts)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Throughput:
    """Tokens per second of training (step time only, not eval or checkpoints), MFU, and the run's ETA."""

    def __init__(self, start_step: int, total_steps: int, start_tokens: int, flops_per_token: float,
                 peak: float | None) -> None:
        self.start_step, self.total = start_step, total_steps
        self.flops_per_token, self.peak = flops_per_token, peak
        self.t0 = time.perf_counter()
        self.tokens_last, self.busy_last = start_tokens, 0.0

    def measure(self, step: int, tokens: int, busy_s: float) -> dict[str, float | None]:
        """`tokens` seen so far in the run, `busy_s` seconds spent in training steps so far in this process."""
        rate = (tokens - self.tokens_last) / max(busy_s - self.busy_last, 1e-9)
        self.tokens_last, self.busy_last = tokens, busy_s
        done = step - self.start_step
        eta = (time.perf_counter() - self.t0) / done * (self.total - step) if done > 0 else None
        mfu = rate * self.flops_per_token / self.peak if self.peak else None
        return {"tokens_per_s": rate, "mfu": mfu, "eta_s": eta}


def plot_loss_curve(history: dict[str, list], path: Path) -> Path | None:
    """Train and val loss against step, as a PNG (None, with one notice, when matplotlib is missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        console.print("[yellow]matplotlib is not installed: no loss_curve.png (pip install 'lmforge[train]')"
                      "[/yellow]")
        return None
    # Figure + Agg canvas directly: no pyplot, so no global backend or figure state is touched.
    fig = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, label, style in (("train", "train", "-"), ("val", "val", "o-")):
        points = history.get(key) or []
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    return path


class RunLogger:
    """Every sink of a run, fed by the loop with `train`, `eval` and `event` records."""

    def __init__(self, out: Path, *, total_steps: int, start_step: int, start_tokens: int, resume: bool,
                 tensorboard: bool, flops_per_token: float, peak: float | None) -> None:
        resume_step = start_step if resume else None
        self.metrics = MetricsFile(out / "metrics.jsonl", resume_step)
        self.tb = TensorBoardSink(out / "tensorboard", resume_step) if tensorboard else None
        self.progress = ProgressLine(total_steps, start_step)
        self.throughput = Throughput(start_step, total_steps, start_tokens, flops_per_token, peak)

    def step(self, step: int) -> None:
        self.progress.update(step)

    def train(self, record: dict[str, Any], busy_s: float) -> None:
        """A training record (step, loss, lr, tokens, ...); `busy_s`: time spent in steps so far."""
        record = {"event": "train", **record, **self.throughput.measure(record["step"], record["tokens"], busy_s)}
        self._write(record)
        self.progress.update(record["step"], record)

    def eval(self, record: dict[str, Any]) -> None:
        record = {"event": "eval", **record}
        self._write(record)
        shown = " | ".join(f"{k} {format_metric(k, v)}" for k, v in record.items()
                           if k.startswith("val_") and k != "val_tokens")
        self.progress.message(f"eval at step {record['step']}: {shown}")

    def event(self, record: dict[str, Any], message: str | None = None) -> None:
        self._write(record)
        if message:
            self.progress.message(message)

    def _write(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        if self.tb is not None:
            self.tb.write(record)

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()


class NullLogger:
    """What non-main ranks log to."""

    def step(self, step: int) -> None: ...
    def train(self, record: dict[str, Any], busy_s: float) -> None: ...
    def eval(self, record: dict[str, Any]) -> None: ...
    def event(self, record: dict[str, Any], message: str | None = None) -> None: ...
    def close(self) -> None: ...
