"""The import-linter contracts of pyproject.toml (`[tool.importlinter]`): a wrong arrow between layers fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lmforge

ROOT = Path(__file__).resolve().parents[1]
# The checkout under test: a fresh process imports the same lmforge as this one.
SRC = Path(lmforge.__file__).resolve().parents[1]

LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def test_the_layers_point_one_way():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
