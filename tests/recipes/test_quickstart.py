"""quickstart end to end at toy scale: every stage runs and leaves its files; the CLI prints where they are."""

from __future__ import annotations

import json

from conftest import write_corpus
from lmforge.cli.main import main


def test_quickstart_runs_every_stage_and_says_where_things_are(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", docs=150)
    out = tmp_path / "qs"
    code = main(["quickstart", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "400", "--steps", "12",
                 "--batch-size", "4", "--seq-len", "32", "--samples", "2", "--max-new-tokens", "8"])
    assert code == 0
    captured = capsys.readouterr()
    printed, progress = captured.out, captured.err  # the stages' lines and the table go to stderr
    assert "quickstart finished in" in printed and "lmforge generate --checkpoint" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert [b["order"] for b in summary["baselines"]] == [1, 2, 3] and summary["baselines"][0]["ppl"] > 1
    assert "trigram (Kneser-Ney)" in progress
    # The default recipe trained it: its options are in the run's config.
    config = (out / "train" / "config.yaml").read_text()
    assert summary["config"]["recipe"] == "fast" and "recipe: fast" in config and "name: muon" in config
    assert summary["transformer"]["val_ppl"] > 1 and len(summary["samples"]) == 2
    for path in ("data/manifest.json", "data/report.json", "train/checkpoints/best/model.safetensors",
                 "train/loss_curve.png", "train/metrics.jsonl"):
        assert (out / path).is_file(), path
    # Running it again starts over instead of refusing the existing run.
    assert main(["quickstart", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "400", "--steps", "2",
                 "--batch-size", "2", "--seq-len", "16", "--samples", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["steps"] == 2


def test_without_steps_the_time_budget_sets_them(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", docs=60)
    out = tmp_path / "qs"
    assert main(["quickstart", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "300", "--minutes", "0.01",
                 "--max-steps", "3", "--batch-size", "2", "--seq-len", "16", "--samples", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["steps"] == 3


def test_refuses_to_replace_a_directory_it_did_not_make(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data").mkdir()
    (tmp_path / "mine" / "data" / "precious.txt").write_text("keep me")
    assert main(["quickstart", "--out", str(tmp_path / "mine"), "--steps", "1"]) == 2
    assert "quickstart did not make" in capsys.readouterr().err
    assert (tmp_path / "mine" / "data" / "precious.txt").read_text() == "keep me"


def test_verdict_is_in_bits_per_byte_and_says_when_every_baseline_is_beaten():
    from lmforge.recipes.quickstart import _verdict

    val = {"val_ppl": 40.0, "val_bpb": 1.50}
    uni = {"order": 1, "ppl": 700.0, "bpb": 2.6}
    bigram, trigram = {"order": 2, "ppl": 100.0, "bpb": 1.8}, {"order": 3, "ppl": 46.0, "bpb": 1.45}
    assert ("beats the unigram and bigram in bits/byte; the trigram model is still ahead"
            in _verdict(val, [uni, bigram, trigram]))
    assert "beats every n-gram baseline here (unigram, bigram)" in _verdict(val, [uni, bigram])
    assert "bigram and trigram models are still ahead" in _verdict({"val_ppl": 120.0, "val_bpb": 1.9},
                                                                   [uni, bigram, trigram])
    assert "does not clearly beat the unigram" in _verdict({"val_ppl": 650.0, "val_bpb": 2.5}, [uni, bigram])
