from __future__ import annotations

import pytest

from lmforge.atomic import atomic_directory, atomic_file


def test_atomic_file_leaves_old_version_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"partial")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_directory_swaps_whole_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "a").write_text("2")
        raise RuntimeError("killed")
    assert (target / "a").read_text() == "1"
    with atomic_directory(target) as d:
        (d / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_killed_builds_temporary_directory_is_removed_at_the_next_start(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", "import os, signal, sys\n"
                             "from lmforge.atomic import atomic_directory\n"
                             "with atomic_directory(sys.argv[1]) as tmp:\n"
                             "    (tmp / 'half.bin').write_bytes(b'x')\n"
                             "    os.kill(os.getpid(), signal.SIGKILL)\n", str(out)],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -9
    (left,) = tmp_path.glob(".out.*.tmp")
    alive = tmp_path / f".out.pid{os.getppid()}.abcd.tmp"  # a live process's build: not touched
    alive.mkdir()
    unnamed = tmp_path / ".out.abcd.tmp"  # no pid in the name: cannot tell, left alone
    unnamed.mkdir()
    with atomic_directory(out) as tmp:
        (tmp / "done").write_text("ok")
    assert not left.exists() and alive.is_dir() and unnamed.is_dir()
    assert (out / "done").read_text() == "ok"
