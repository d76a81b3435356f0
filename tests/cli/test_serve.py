"""`lmforge serve`: bad input is one line and exit status 2, before anything is loaded or bound."""

from __future__ import annotations

import socket

from lmforge.cli.main import main
from lmforge.serve.server import ServeConfig, api_keys


def test_a_taken_port_is_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmforge serve: error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1


def test_a_missing_checkpoint_or_key_file_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing"), "--port", "0"]) == 2
    assert "no model checkpoint here" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--api-key-file", str(tmp_path / "keys.txt")]) == 2
    assert "API key file not found" in capsys.readouterr().err


def test_keys_come_from_flags_and_the_file_without_blanks_or_comments(tmp_path, capsys):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nalpha\n\n  beta  \nalpha\n", encoding="utf-8")
    cfg = ServeConfig(checkpoint=str(tmp_path), api_key=["gamma"], api_key_file=str(keys))
    assert api_keys(cfg) == ("gamma", "alpha", "beta")
    empty = tmp_path / "empty.txt"
    empty.write_text("# none yet\n", encoding="utf-8")
    assert main(["serve", str(tmp_path), "--port", "0", "--api-key-file", str(empty)]) == 2
    assert "holds no key" in capsys.readouterr().err


def test_it_binds_the_loopback_address_unless_told_otherwise():
    assert ServeConfig().host == "127.0.0.1"
