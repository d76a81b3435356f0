from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.cli.main import main
from lmforge.data.tokenizer import TokenizerOptions, save_tokenizer, train_tokenizer
from lmforge.models import ModelConfig, build_model
from lmforge.models.config import FAMILIES
from lmforge.models.io import save_model

SENTENCES = ["The cat sat on the mat.", "Dogs bark at cats all day long.", "A bird sang a song."] * 4


def checkpoint(root: Path, family: str, kind: str = "bpe", **kw) -> Path:
    """A tiny random model saved with its tokenizer, as `lmforge train` would leave it."""
    tok = train_tokenizer(SENTENCES, TokenizerOptions(kind=kind, vocab_size=300, min_frequency=1))
    save_tokenizer(tok, root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=tok.get_vocab_size(), max_seq_len=24, n_layer=2, n_head=2,
                      d_model=32, **kw)
    return save_model(root / "ckpt", build_model(cfg), cfg, root / "tokenizer")


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> Path:
    return checkpoint(tmp_path_factory.mktemp("gpt"), "gpt")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_every_output_and_prints_the_paths(gpt, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "why"
    code, stdout, _ = run(capsys, "--checkpoint", str(gpt), "The cat sat on the", "--out", str(out),
                          "--target", " mat", "--ig-steps", "8", "--device", "cpu")
    assert code == 0
    names = ["attention_decoder.png", "surprise.html", "surprise.json", "attribution.html", "attribution.json"]
    assert stdout.split() == [str(out / n) for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # nothing else, no temporary files
    assert (out / "attention_decoder.png").read_bytes()[:4] == b"\x89PNG"
    attribution = json.loads((out / "attribution.json").read_text())
    assert attribution["target"]["label"] == "' mat'" and attribution["steps"] == 8
    surprise = json.loads((out / "surprise.json").read_text())
    assert surprise["units"] == "bits" and surprise["tokens"][0]["text"] == "<eos>"


def test_selected_outputs_method_and_units(gpt, tmp_path, capsys):
    code, stdout, _ = run(capsys, "--checkpoint", str(gpt), "A bird", "--out", str(tmp_path), "--what",
                          "attribution", "surprise", "--method", "grad_x_input", "--units", "nats", "--device",
                          "cpu")
    assert code == 0
    assert [Path(p).name for p in stdout.split()] == ["surprise.html", "surprise.json", "attribution.html",
                                                      "attribution.json"]
    assert json.loads((tmp_path / "attribution.json").read_text())["method"] == "grad_x_input"
    assert json.loads((tmp_path / "surprise.json").read_text())["units"] == "nats"


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{missing}", "text"], "no model checkpoint here"),
    (["--checkpoint", "{gpt}", ""], "no text to explain"),
    (["--checkpoint", "{gpt}", "The cat sat on the mat. " * 10], "more than the model's 24 positions"),
    (["--checkpoint", "{gpt}", "The cat", "--layers", "2"], "layer 2 does not exist: the model has 2 layers"),
    (["--checkpoint", "{gpt}", "The cat", "--heads", "-3"], "head -3 does not exist"),
    (["--checkpoint", "{gpt}", "The cat", "--target", " cat sat"], "is 2 tokens"),
    (["--checkpoint", "{gpt}", "The cat", "--what", "everything"], "unknown output 'everything'"),
    (["--checkpoint", "{gpt}", "The cat", "--ig-steps", "0"], "--ig-steps is 0"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(gpt, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = [a.format(gpt=gpt, missing=tmp_path / "nope") for a in args]
    code, stdout, stderr = run(capsys, *argv, "--out", str(out))
    assert code == 2 and stdout == ""
    assert stderr.startswith("lmforge explain: error: ") and message in stderr
    assert stderr.count("\n") == 1
    assert not out.exists()


def test_bert_checkpoint_explains_its_next_sentence_head(tmp_path, capsys):
    # tie_embeddings=False: models/io.py cannot yet load a BERT whose MLM output is tied (reported separately).
    ckpt = checkpoint(tmp_path, "bert", kind="wordpiece", type_vocab_size=2, embed_norm=True,
                      norm_position="post", tie_embeddings=False)
    code, stdout, _ = run(capsys, "--checkpoint", str(ckpt), "The cat sat. A bird sang.", "--out",
                          str(tmp_path / "o"), "--what", "surprise", "attribution", "--target", "random",
                          "--ig-steps", "4", "--device", "cpu")
    assert code == 0 and len(stdout.split()) == 4
    data = json.loads((tmp_path / "o" / "attribution.json").read_text())
    assert data["target"] == {"id": 1, "label": "random sentence (1)", "prob": data["target"]["prob"]}
    assert json.loads((tmp_path / "o" / "surprise.json").read_text())["method"] == "masked"


def test_t5_gets_three_attention_stacks_and_no_surprise(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ckpt = checkpoint(tmp_path, "t5", pos="relative", attn_scale=1.0)
    code, _, stderr = run(capsys, "--checkpoint", str(ckpt), "The cat", "--out", str(tmp_path / "o"),
                          "--what", "surprise")
    assert code == 2 and "per-token surprise needs a next-token model or a masked LM" in stderr
    assert not (tmp_path / "o").exists()
    code, stdout, stderr = run(capsys, "--checkpoint", str(ckpt), "The cat", "--out", str(tmp_path / "o"),
                               "--layers", "-1", "--heads", "0", "--ig-steps", "2", "--device", "cpu")
    assert code == 0 and "no surprise output" in stderr
    assert [Path(p).name for p in stdout.split()] == [
        "attention_encoder.png", "attention_decoder.png", "attention_decoder-cross.png", "attribution.html",
        "attribution.json"]


def test_lstm_gets_surprise_and_attribution_but_no_attention(tmp_path, capsys):
    if "lstm" not in FAMILIES:
        pytest.skip("no lstm family in this checkout")
    ckpt = checkpoint(tmp_path, "lstm")
    code, stdout, stderr = run(capsys, "--checkpoint", str(ckpt), "The cat sat", "--out", str(tmp_path / "o"),
                               "--ig-steps", "4", "--device", "cpu")
    assert code == 0 and "no attention output: a lstm model has no attention" in stderr
    assert [Path(p).name for p in stdout.split()] == ["surprise.html", "surprise.json", "attribution.html",
                                                      "attribution.json"]
    code, _, stderr = run(capsys, "--checkpoint", str(ckpt), "The cat", "--out", str(tmp_path / "x"), "--what",
                          "attention")
    assert code == 2 and "has no attention" in stderr and not (tmp_path / "x").exists()


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["explain", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "lmforge explain --checkpoint" in text
    for flag in ("--out", "--layers", "--heads", "--method", "--target", "--ig-steps", "--what"):
        assert flag in text
