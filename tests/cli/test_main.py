from __future__ import annotations

import subprocess
import sys

import lmforge
from lmforge.cli.main import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"lmforge {lmforge.__version__}"


def test_help_lists_verbs(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out or "VERB" in out


def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "lmforge", "--help"], capture_output=True, text=True, check=True)
    assert "lmforge" in out.stdout


def test_a_nul_byte_in_an_argument_is_one_line(capsys):
    from lmforge.cli.main import main

    assert main(["prepare", "corpus\x00.txt", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a NUL byte" in err and "Traceback" not in err


def test_a_verbs_usage_is_one_line_its_options_listed_once(capsys):
    import pytest

    from lmforge.cli.main import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "usage: lmforge train [--config FILE.yaml] [options]"
    assert out.count("--model.rope-theta") == 1  # in the option list, not again in the usage
