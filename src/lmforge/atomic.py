"""Atomic writes: a file or directory appears complete, or not at all.

Everything lmforge writes that a later step trusts (shards, manifests, checkpoints, tokenizers) goes through here:
write to a temporary sibling, fsync, then `os.replace`. A process killed at any moment leaves either the old
version or none, never a half-written one that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from lmforge.errors import UserError

# What a full disk, an exhausted quota or a file-size limit raise.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 for privacy while writing; finished outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems do not support fsync on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary siblings `atomic_directory` left for `path` when its process was killed.

    Their names hold the pid that made them (`.NAME.pid1234.XXXXXXXX.tmp`); one whose process still runs (another
    writer at work) or whose name holds no pid is left alone.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.pid*.tmp"):
        pid = tmp.name[len(path.name) + 5:].partition(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not tmp.is_dir():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # it exists, owned by someone else
            pass


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; on success swap it in for `path` (replacing any old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
                os.chmod(child, _FILE_MODE)  # some writers (safetensors) create owner-only files
        os.chmod(tmp, _DIR_MODE)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_disk_full(e: BaseException, directory: str | Path | None = None, need: int | None = None) -> bool:
    """Whether `e` says the disk (or quota) is full. Some writers hide the errno: torch.save raises a RuntimeError
    (`inline_container.cc ... unexpected pos`), safetensors its own error; for those, the free space of
    `directory` against the `need`ed bytes decides."""
    if isinstance(e, OSError) and e.errno in DISK_FULL:
        return True
    text = str(e).lower()
    if "no space left" in text or "quota exceeded" in text:
        return True
    if not (type(e) is RuntimeError or type(e).__name__ == "SafetensorError") or directory is None or not need:
        return False
    free = _free_bytes(Path(directory))
    return free is not None and free < need


def disk_full_error(path: str | Path, what: str, need: int | None = None) -> UserError:
    """One line for a write that ran out of space: what, where, about how much it needs, what is free."""
    free = _free_bytes(Path(path))
    sizes = ", ".join(s for s in (f"needs about {format_bytes(need)}" if need else "",
                                  f"{format_bytes(free)} free" if free is not None else "") if s)
    return UserError(f"no space left on the device while writing {what}" + (f" ({sizes})" if sizes else ""),
                     where=path, fix="free some space (or raise the quota), or write to another disk; nothing "
                                     "half-written was left behind")


@contextlib.contextmanager
def disk_full_as_user_error(path: str | Path, what: str, need: int | None = None) -> Iterator[None]:
    """Turn a disk-full error in the block (a writer's, anywhere below it) into `disk_full_error`'s one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if is_disk_full(e, Path(path), need):
            raise disk_full_error(path, what, need) from None
        raise


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None
