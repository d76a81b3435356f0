"""`lmforge predict CHECKPOINT --file F`: labels, answers or generated targets for each row, as JSON lines."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmforge.cli.main import main
from lmforge.models import build_model, get_preset
from lmforge.models.io import save_model


def predict(capsys, *argv):
    code = main(["predict", *map(str, argv), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny(tiny_data, tmp_path, preset, **kw):
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset(preset), vocab_size=512, d_model=32, n_layer=1, max_seq_len=64, **kw)
    return save_model(tmp_path / preset, build_model(cfg), cfg, tokenizer_dir=tiny_data)


def test_a_classifier_labels_every_row_as_eval_does(capsys, tiny_data, tmp_path):
    ckpt = tiny(tiny_data, tmp_path, "lstm-tiny", labels=["neg", "pos"], head="classify")
    (tmp_path / "in.tsv").write_text("sentence\nA fine film .\nDull and long .\nOkay .\n", encoding="utf-8")
    code, out, err = predict(capsys, ckpt, "--file", tmp_path / "in.tsv", "--text-column", "sentence", "--out",
                             tmp_path / "p.jsonl")
    assert code == 0 and "wrote labels for 3 rows" in out, err
    rows = lines(tmp_path / "p.jsonl")
    assert [r["sentence"] for r in rows] == ["A fine film .", "Dull and long .", "Okay ."]
    # The same labels `eval --task classification` predicts for the same texts.
    (tmp_path / "gold.tsv").write_text("sentence\tlabel\n" + "".join(f"{r['sentence']}\tneg\n" for r in rows))
    assert main(["eval", "--task", "classification", "--checkpoint", str(ckpt), "--file", str(tmp_path / "gold.tsv"),
                 "--text-column", "sentence", "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    scored = lines(tmp_path / "e" / "predictions.jsonl")
    assert [r["predicted"] for r in rows] == [s["predicted"] for s in scored]
    assert [r["probability"] for r in rows] == pytest.approx([s["probability"] for s in scored])


def test_rows_with_an_empty_or_too_long_text_are_one_line_or_skipped_with_a_count(capsys, tiny_data, tmp_path):
    ckpt = tiny(tiny_data, tmp_path, "lstm-tiny", labels=["neg", "pos"], head="classify")
    file = tmp_path / "in.csv"
    file.write_text('sentence\n"A fine film, really."\n""\n' + " ".join(["word"] * 100) + "\nOkay .\n",
                    encoding="utf-8")
    argv = [ckpt, "--file", file, "--text-column", "sentence", "--out", tmp_path / "p.jsonl"]
    code, out, err = predict(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "line 3: the source and target must both be non-empty text" in err and "--skip-bad-rows" in err
    code, out, err = predict(capsys, *argv, "--skip-bad-rows")
    assert code == 0, err
    assert f"skipped 2 row(s) of {file}: 1 empty, 1 longer than the context" in out and "for 2 rows" in out
    assert [r["sentence"] for r in lines(tmp_path / "p.jsonl")] == ["A fine film, really.", "Okay ."]


def test_a_seq2seq_model_generates_a_target_for_every_source(capsys, tiny_data, tmp_path):
    ckpt = tiny(tiny_data, tmp_path, "t5-tiny")
    (tmp_path / "in.jsonl").write_text('{"en": "A man rides a bike."}\n{"en": "Two dogs."}\n', encoding="utf-8")
    code, out, err = predict(capsys, ckpt, "--file", tmp_path / "in.jsonl", "--source-column", "en",
                             "--max-new-tokens", "5", "--out", tmp_path / "p.jsonl")
    assert code == 0 and "wrote generated targets for 2 rows" in out, err
    rows = lines(tmp_path / "p.jsonl")
    assert [r["en"] for r in rows] == ["A man rides a bike.", "Two dogs."] and all("generated" in r for r in rows)


def test_a_span_model_answers_each_question_from_its_context(capsys, tiny_data, tmp_path):
    ckpt = tiny(tiny_data, tmp_path, "bert-tiny", head="span")
    context = "the function returns a value"
    (tmp_path / "in.jsonl").write_text(json.dumps({"question": "what is returned?", "context": context}) + "\n",
                                       encoding="utf-8")
    code, _, err = predict(capsys, ckpt, "--file", tmp_path / "in.jsonl", "--no-answer-threshold", "1e9",
                           "--out", tmp_path / "p.jsonl")
    assert code == 0, err
    (row,) = lines(tmp_path / "p.jsonl")
    assert row["predicted"] == row["span"] and row["span"] and row["span"] in context


def test_bad_input_is_one_line(capsys, tiny_data, tmp_path):
    clf = tiny(tiny_data, tmp_path, "lstm-tiny", labels=["neg", "pos"], head="classify")
    lm = tiny(tiny_data, tmp_path / "lm", "lstm-tiny")
    (tmp_path / "in.tsv").write_text("text\nfine\n", encoding="utf-8")
    cases = [
        ([clf, "--file", tmp_path / "in.tsv", "--text-column", "review"], "no column 'review'"),
        ([clf, "--file", tmp_path / "missing.tsv"], "input file not found"),
        ([clf], "no input file given"),
        ([lm, "--file", tmp_path / "in.tsv"], "predict needs a checkpoint that classifies"),
    ]
    for argv, expected in cases:
        code, out, err = predict(capsys, *argv, "--out", tmp_path / "p.jsonl")
        assert code == 2 and out == "" and err.count("\n") == 1 and expected in err, (argv, err)
    assert not (tmp_path / "p.jsonl").exists()


def beam_spy(monkeypatch):
    """Every call of the beam search `generate_targets` makes: the GenerationConfig it got and the ids it found."""
    from lmforge.infer import generate

    calls = []
    real = generate.beam_search_ids

    def spy(model, prompts, cfg, **kw):
        ids = real(model, prompts, cfg, **kw)
        calls.append((cfg, ids))
        return ids

    monkeypatch.setattr(generate, "beam_search_ids", spy)
    return calls


def repeats(rows):
    return any(len(set(row)) < len(row) for row in rows)


def test_beam_options_reach_the_beam_search(capsys, tiny_data, tmp_path, monkeypatch):
    """`generate`'s beam options shape predict's beams: without --no-repeat-ngram-size 1 a random model repeats
    tokens, with it no generated target holds a token twice; each option arrives in the search's config."""
    ckpt = tiny(tiny_data, tmp_path, "t5-tiny")
    (tmp_path / "in.jsonl").write_text('{"source": "A man rides a bike."}\n{"source": "Two dogs run."}\n',
                                       encoding="utf-8")
    calls = beam_spy(monkeypatch)
    base = [ckpt, "--file", tmp_path / "in.jsonl", "--num-beams", "2", "--max-new-tokens", "12"]
    code, _, err = predict(capsys, *base, "--out", tmp_path / "plain.jsonl")
    assert code == 0, err
    ((cfg, plain),) = calls
    assert cfg.num_beams == 2 and cfg.no_repeat_ngram_size == 0 and repeats(plain)
    code, _, err = predict(capsys, *base, "--no-repeat-ngram-size", "1", "--length-penalty", "-0.5",
                           "--early-stopping", "--out", tmp_path / "banned.jsonl")
    assert code == 0, err
    cfg, banned = calls[1]
    assert (cfg.num_beams, cfg.no_repeat_ngram_size, cfg.length_penalty, cfg.early_stopping) == (2, 1, -0.5, True)
    assert banned and not repeats(banned)
    assert [r["generated"] for r in lines(tmp_path / "banned.jsonl")] != \
        [r["generated"] for r in lines(tmp_path / "plain.jsonl")]


@pytest.mark.parametrize("extra, message", [
    (["--no-repeat-ngram-size", "2"], "--no-repeat-ngram-size only applies with --num-beams N (N > 1)"),
    (["--length-penalty", "2", "--early-stopping"], "--length-penalty, --early-stopping only apply with --num-beams"),
    (["--num-beams", "2", "--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size is -1, but must be >= 0"),
    (["--num-beams", "0"], "--num-beams is 0, but must be >= 1"),
])
def test_bad_beam_options_are_one_line(capsys, tiny_data, tmp_path, extra, message):
    ckpt = tiny(tiny_data, tmp_path, "t5-tiny")
    (tmp_path / "in.tsv").write_text("source\nTwo dogs.\n", encoding="utf-8")
    code, out, err = predict(capsys, ckpt, "--file", tmp_path / "in.tsv", *extra, "--out", tmp_path / "p.jsonl")
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "p.jsonl").exists()
