from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.cli.main import main
from lmforge.data.tokenizer import load_tokenizer, special_token_ids
from lmforge.models import build_model, get_preset
from lmforge.models.io import save_model

SENTENCES = ["The tutorial introduces the reader informally.", "A list is a sequence.",
             "def f(x): return x * 2", "Ünïcödé sentences keep their text."]


def checkpoint(path, tiny_data, preset: str = "bert-tiny"):
    """A randomly initialised tiny model saved with the test data's tokenizer."""
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset(preset), vocab_size=512, max_seq_len=32, d_model=32, d_ff=64)
    save_model(path, build_model(cfg).eval(), cfg, tokenizer_dir=tiny_data)
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory, tiny_data):
    return checkpoint(tmp_path_factory.mktemp("bert") / "ckpt", tiny_data)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def reference(bert_dir, text: str) -> np.ndarray:
    """Embedding of one sentence computed by hand: mean of the hidden states over <cls> text <sep>, unit norm."""
    from lmforge.checkpoints import load_model

    model, _ = load_model(bert_dir)
    tok = load_tokenizer(bert_dir)
    ids = special_token_ids(tok)
    seq = torch.tensor([[ids["cls"], *tok.encode(text, add_special_tokens=False).ids, ids["sep"]]])
    with torch.no_grad():
        v = model(seq)[0].mean(0)
    return (v / v.norm()).numpy()


def test_embed_npy_rows_are_unit_norm_mean_pooled_and_in_line_order(tmp_path, bert, capsys):
    inp = write_lines(tmp_path / "s.txt", SENTENCES)
    # batch size 3: padded batches (mixed lengths) must give what each sentence gives alone
    assert main(["embed", "--checkpoint", str(bert), "--input", str(inp), "--out", str(tmp_path / "e.npy"),
                 "--batch-size", "3", "--device", "cpu"]) == 0
    assert f"wrote 4 embeddings of dimension 32 to {tmp_path / 'e.npy'}" in capsys.readouterr().out
    emb = np.load(tmp_path / "e.npy")
    assert emb.shape == (4, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for row, text in zip(emb, SENTENCES):
        np.testing.assert_allclose(row, reference(bert, text), atol=1e-5)


def test_embed_jsonl_holds_each_text_and_the_same_vectors(tmp_path, bert):
    inp = write_lines(tmp_path / "s.txt", SENTENCES)
    assert main(["embed", "--checkpoint", str(bert), "--input", str(inp), "--out", str(tmp_path / "e.npy")]) == 0
    assert main(["embed", "--checkpoint", str(bert), "--input", str(inp), "--out", str(tmp_path / "e.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == SENTENCES
    np.testing.assert_allclose(np.array([r["embedding"] for r in records]), np.load(tmp_path / "e.npy"), atol=1e-6)


def test_sentence_longer_than_the_positions_is_one_line_unless_truncated(tmp_path, bert, capsys):
    inp = write_lines(tmp_path / "s.txt", [SENTENCES[0], " ".join(["word"] * 40)])
    out = tmp_path / "e.npy"
    assert main(["embed", "--checkpoint", str(bert), "--input", str(inp), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "line 2 has 122 tokens (with <cls>/<sep>), more than the 32 the model's positions allow (fix: shorten " \
           "it, or pass --truncate)" in err
    assert not out.exists()
    assert main(["embed", "--checkpoint", str(bert), "--input", str(inp), "--out", str(out), "--truncate"]) == 0
    assert np.load(out).shape == (2, 32)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, bert, tiny_data, capsys):
    good = write_lines(tmp_path / "s.txt", SENTENCES)
    gpt = checkpoint(tmp_path / "gpt", tiny_data, preset="tiny")
    npy, csv = str(tmp_path / "e.npy"), str(tmp_path / "e.csv")
    cases = [
        (["--checkpoint", str(gpt), "--input", str(good), "--out", npy],
         "sentence embeddings needs a model that can embed texts (an encoder); this checkpoint is a gpt decoder"),
        (["--checkpoint", str(bert), "--input", str(write_lines(tmp_path / "b.txt", ["a", "", "b"])),
          "--out", npy], "line 2 is blank (fix: remove blank lines"),
        (["--checkpoint", str(bert), "--input", str(good), "--out", csv],
         f"cannot tell the output format of {csv} (fix: end --out with .npy or .jsonl)"),
        (["--checkpoint", str(bert), "--input", str(tmp_path / "none.txt"), "--out", npy],
         "none.txt: input file not found"),
        (["--checkpoint", str(bert), "--out", npy], "no input file given"),
        (["--checkpoint", str(tmp_path), "--input", str(good), "--out", npy], "no model checkpoint here"),
    ]
    for argv, message in cases:
        assert main(["embed", *argv]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("lmforge embed: error: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("e.*")) and not list(tmp_path.glob(".e.*"))


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "lmforge embed --checkpoint" in out and "--truncate" in out
