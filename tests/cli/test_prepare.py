"""`lmforge prepare` from the command line: summary on success, one line and exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

from lmforge.cli.main import main


def test_prepare_prints_a_summary_and_writes_the_effective_config(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Paragraph number {i} talks about tokens and models." for i in range(50)))
    code = main(["prepare", str(corpus), "--out", str(tmp_path / "out"), "--tokenizer.kind", "char",
                 "--tokenizer.vocab-size", "60", "--val-fraction", "0.1", "--workers", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "documents:" in out and "bytes/token" in out and "next: lmforge train --data" in out
    config = (tmp_path / "out" / "config.yaml").read_text()
    assert "kind: char" in config and "vocab_size: 60" in config
    assert json.loads((tmp_path / "out" / "report.json").read_text())["tokenizer"]["kind"] == "char"


def test_yaml_config_with_flag_override(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Line {i} of a small corpus." for i in range(30)))
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"inputs: [{corpus}]\nout: {tmp_path / 'out'}\ntokenizer:\n  kind: char\n  vocab_size: 50\n")
    assert main(["prepare", "--config", str(cfg), "--seed", "7", "--workers", "1"]) == 0
    assert "seed: 7" in (tmp_path / "out" / "config.yaml").read_text()


def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lmforge", "prepare", str(tmp_path / "nope.txt"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such file or directory" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_help_teaches(capsys):
    try:
        main(["prepare", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--tokenizer.kind" in out and "builtin:python-docs" in out
