"""User-facing errors.

A `UserError` is a mistake the user can fix (a bad path, a bad option, a corrupt file). The CLI prints it as one
line, what went wrong, where, and how to fix it, and exits with status 2, without a traceback. Anything else that
escapes is a bug in lmforge and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input: reported as one line, exit status 2."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | Path | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = None if where is None else str(where)
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())  # always a single line
