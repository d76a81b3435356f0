"""Checksums of checkpoint files: the sha256 of each file, recorded in `checksums.json` after the files are written
and checked when they are read, so a flipped byte or a truncated copy is one line, not a silently wrong model.

Below every writer (single-file checkpoints in `train`, DCP shards in `parallel`) and the one loader
(`lmforge.checkpoints`), which all use these functions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmforge.atomic import write_json
from lmforge.errors import UserError

CHECKSUMS = "checksums.json"  # sha256 of a checkpoint's weight files, written last
CHECKSUMS_FORMAT = "lmforge-checksums/1"


class CorruptCheckpoint(UserError):
    """A checkpoint file whose bytes are not those that were written (a flipped byte, a truncated copy)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(directory: str | Path, names: list[str], **extra: str | None) -> None:
    """Record the sha256 of `directory`'s files `names` in `directory/checksums.json` (after they are written)."""
    directory = Path(directory)
    write_json(directory / CHECKSUMS, {"format": CHECKSUMS_FORMAT,
                                       "sha256": {n: file_sha256(directory / n) for n in names},
                                       **{k: v for k, v in extra.items() if v is not None}})


def read_checksums(directory: str | Path) -> dict | None:
    """`checksums.json` of a checkpoint; None for one written before checkpoints carried it."""
    path = Path(directory) / CHECKSUMS
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{CHECKSUMS} is unreadable ({type(e).__name__})", where=path,
                                fix="use an earlier checkpoint, or pass --no-verify to load it unchecked") from None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), dict):
        raise CorruptCheckpoint(f"{CHECKSUMS} is not an lmforge checksum file", where=path,
                                fix="use an earlier checkpoint, or pass --no-verify to load it unchecked")
    return record


def verify_checksums(directory: str | Path, names: list[str] | None = None) -> bool:
    """Check `directory`'s files (`names`, default every one recorded) against `checksums.json`.

    True when they match, False when the checkpoint has no checksums (older than them: nothing to check);
    CorruptCheckpoint, one line naming the file, when one differs or is missing.
    """
    directory = Path(directory)
    record = read_checksums(directory)
    if record is None:
        return False
    for name in names if names is not None else list(record["sha256"]):
        expected = record["sha256"].get(name)
        if expected is None:
            continue
        try:
            actual = file_sha256(directory / name)
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{name} is missing", where=directory,
                                    fix="use an earlier checkpoint") from None
        if actual != expected:
            raise CorruptCheckpoint(f"{name} does not match its recorded sha256 (damaged or truncated)",
                                    where=directory / name,
                                    fix="use an earlier checkpoint, or pass --no-verify to load it unchecked")
    return True
