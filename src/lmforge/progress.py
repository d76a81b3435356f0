"""Progress bars for long work (rich), with throughput in MB/s or items/s."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# One console for everything lmforge prints to a person; stderr so that stdout stays clean for pipes.
# Piped (not a terminal): lines are never wrapped at the default 80 columns, so a log keeps one line per message.
console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def quiet() -> bool:
    """True when progress bars should not be drawn (LMFORGE_QUIET=1, or not a terminal)."""
    return os.environ.get("LMFORGE_QUIET") == "1" or not sys.stderr.isatty()


class RateColumn(ProgressColumn):
    """Throughput: MB/s when the task counts bytes, else items/s."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("-", style="progress.data.speed")
        if task.fields.get("unit") == "bytes":
            return Text(f"{speed / 1e6:,.1f} MB/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {task.fields.get('unit', 'it')}/s", style="progress.data.speed")


def progress_bar(*, transient: bool = False) -> Progress:
    """A rich Progress with description, bar, count, rate, elapsed and ETA columns."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=quiet(),
    )
