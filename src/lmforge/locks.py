"""One process owns an output directory while it writes there: an exclusive lock file beside it.

    from lmforge.locks import DirectoryLock

    with DirectoryLock("runs/train", "train"):
        ...  # a second `lmforge train --out runs/train` is refused in one line naming this process

The lock is the file `.NAME.lock` in the directory's parent (beside it, not in it: `prepare` and the exporters
build a directory in a temporary sibling and swap it in whole, and the lock covers that sibling too). It holds one
line of JSON, `{"pid": ..., "host": ..., "verb": ..., "since": ...}`, and is locked with `fcntl.lockf`: a POSIX
record lock, which the kernel drops when its process dies (and which the processes it forks do not inherit), so a
lock is held exactly as long as its process lives. A lock file left by a killed process is therefore not locked:
the next writer takes it over, with a one-line notice naming the process that left it. The file is removed on
release.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from lmforge.errors import UserError

_HELD: set[Path] = set()  # lock files this process holds (a POSIX lock never refuses its own process)


def lock_path(directory: str | Path) -> Path:
    """The lock file of `directory`: `.NAME.lock` beside it."""
    directory = Path(directory).resolve()
    return directory.with_name(f".{directory.name}.lock")


class DirectoryLock:
    """An exclusive lock on `directory` for `verb`; a context manager (or `acquire()` / `release()`)."""

    def __init__(self, directory: str | Path, verb: str) -> None:
        self.directory = Path(directory)
        self.verb = verb
        self.path = lock_path(directory)
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        if self.path in _HELD:
            raise UserError(f"{self.directory} is already in use by this process", where=self.path,
                            fix="write to another directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise UserError(f"{self.directory} is in use by another process ({_describe(_read(self.path))})",
                                where=self.directory,
                                fix="wait for it to finish, stop it, or choose another --out") from None
            # The holder before us may have removed the file between our open and our lock: lock the file that
            # is there now, not an unlinked one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_fd(fd)
        if previous:
            print(f"note: taking over the lock of {self.directory} left by {_describe(previous)}, which is no "
                  f"longer running", file=sys.stderr, flush=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "verb": self.verb,
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        _HELD.add(self.path)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked, so nobody takes over a file that is about to go
        os.close(self._fd)  # drops the lock
        self._fd = None
        _HELD.discard(self.path)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _read_fd(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "pid unknown"
    verb = f"lmforge {record['verb']}, " if record.get("verb") else ""
    since = f", since {record['since']}" if record.get("since") else ""
    return f"{verb}pid {record.get('pid', '?')} on {record.get('host', '?')}{since}"


__all__ = ["DirectoryLock", "lock_path"]
