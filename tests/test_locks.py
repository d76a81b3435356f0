"""An output directory is one process's while it writes there: a second is refused, a dead one's lock taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lmforge.errors import UserError
from lmforge.locks import DirectoryLock, lock_path

HOLD = """
import sys, time
from lmforge.locks import DirectoryLock
with DirectoryLock(sys.argv[1], "train"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as e:
            DirectoryLock(out, "train").acquire()
        line = e.value.line()
        assert "in use by another process" in line and f"pid {proc.pid}" in line and "\n" not in line
    finally:
        proc.kill()
        proc.wait()
    # Killed: the kernel dropped its lock; the file it left is taken over, with a notice.
    assert json.loads(lock_path(out).read_text())["pid"] == proc.pid
    with DirectoryLock(out, "train"):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()  # removed on release


def test_a_stale_lock_is_taken_over_with_a_notice(tmp_path, capsys):
    out = tmp_path / "data"
    lock_path(out).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "verb": "prepare"}) + "\n")
    with DirectoryLock(out, "prepare"):
        pass
    err = capsys.readouterr().err
    assert "taking over the lock" in err and "pid 999999" in err and len(err.splitlines()) == 1


def test_the_lock_is_beside_the_directory_and_not_reentrant(tmp_path):
    out = tmp_path / "x"
    with DirectoryLock(out, "export"):
        assert lock_path(out) == tmp_path / ".x.lock" and not out.exists()
        with pytest.raises(UserError, match="already in use by this process"):
            DirectoryLock(out, "export").acquire()
    with DirectoryLock(out, "export"):  # released: free again
        time.sleep(0)
