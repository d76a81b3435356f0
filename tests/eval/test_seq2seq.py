"""`lmforge eval --task translation / summarisation`: generated targets scored with BLEU / chrF / ROUGE."""

from __future__ import annotations

import json

import pytest

from lmforge.cli.main import main


def run(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def toy_pairs(n: int = 200):
    from train.objectives import toy_pairs as pairs  # tests/ is on the path (rootdir conftest)

    return pairs(n)


def write_tsv(path, rows, header=("source", "target")):
    path.write_text("\t".join(header) + "\n" + "".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A tiny GPT and a tiny T5 fine-tuned for 20 steps on reversing words, with generated-text evaluation."""
    root = tmp_path_factory.mktemp("seq2seq")
    rows = toy_pairs(120)
    pairs = write_tsv(root / "pairs.tsv", rows)
    runs = {}
    for preset in ("tiny", "t5-tiny"):
        out = root / preset
        code = main(["train", "--data", str(tiny_data), "--out", str(out), "--preset", preset, "--objective",
                     "seq2seq", "--objective-options.pairs", str(pairs), "--objective-options.generate-eval",
                     "--objective-options.eval-max-new-tokens", "24", "--objective-options.pairs-val-fraction",
                     "0.1", "--steps", "20", "--batch-size", "8", "--seq-len", "32", "--eval-batches", "0",
                     "--model.d-model", "64", "--optim.lr", "3e-3", "--optim.warmup-steps", "0", "--device", "cpu",
                     "--no-tensorboard", "--log-every", "10"])
        assert code == 0
        runs[preset] = out
    return rows, runs


@pytest.mark.parametrize("preset", ["tiny", "t5-tiny"])
def test_eval_scores_the_held_out_pairs_as_the_run_did(capsys, trained, preset, tmp_path):
    """The run's generated-text evaluation and `lmforge eval --task translation` on the same pairs agree."""
    from lmforge.data.examples import held_out

    rows, runs = trained
    records = [json.loads(line) for line in (runs[preset] / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("event") == "eval"][-1]
    dev = write_tsv(tmp_path / "dev.tsv", [r for r, h in zip(rows, held_out(len(rows), 0.1)) if h])
    code, out, err = run(capsys, "--task", "translation", "--checkpoint", runs[preset] / "checkpoints" /
                         "step_000020", "--file", dev, "--out", tmp_path / "o", "--max-new-tokens", "24",
                         "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    for key in ("bleu", "chrf", "rouge_1", "rouge_2", "rouge_l"):
        assert metrics[key] == pytest.approx(val[f"val_{key}"], abs=1e-6), key
    assert f"BLEU {metrics['bleu']:.2f} | chrF {metrics['chrf']:.2f}" in out and "signature: nrefs:1" in out
    predictions = [json.loads(line) for line in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert [(p["source"], p["reference"]) for p in predictions] == [r for r, h in zip(rows, held_out(len(rows), 0.1))
                                                                     if h]


def test_summarisation_reports_rouge_and_beams_are_a_choice(capsys, trained, tmp_path):
    rows, runs = trained
    dev = write_tsv(tmp_path / "dev.tsv", rows[:6], header=("article", "highlights"))
    code, out, err = run(capsys, "--task", "summarisation", "--checkpoint", runs["tiny"], "--file", dev,
                         "--source-column", "article", "--target-column", "highlights", "--num-beams", "2",
                         "--max-new-tokens", "8", "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert f"ROUGE-1 {metrics['rouge_1']:.4f} | ROUGE-2 {metrics['rouge_2']:.4f} | ROUGE-L {metrics['rouge_l']:.4f}" \
        in out and "2 beams" in out
    assert metrics["generation"]["num_beams"] == 2
    assert metrics["counts"] == {"pairs": 6, "skipped": 0, "skipped_by_reason": {}}


def test_beam_options_reach_the_beam_search(capsys, tiny_data, tmp_path, monkeypatch):
    """`generate`'s beam options shape eval's beams: without --no-repeat-ngram-size 1 a random model repeats tokens,
    with it no generated target holds a token twice; each option arrives in the search's config and metrics.json."""
    from cli.test_predict import beam_spy, repeats, tiny

    ckpt = tiny(tiny_data, tmp_path, "t5-tiny")
    pairs = write_tsv(tmp_path / "dev.tsv", [("A man rides a bike.", "Ein Mann."), ("Two dogs run.", "Zwei Hunde.")])
    calls = beam_spy(monkeypatch)
    base = ["--task", "translation", "--checkpoint", ckpt, "--file", pairs, "--num-beams", "2", "--max-new-tokens",
            "12", "--device", "cpu"]
    code, _, err = run(capsys, *base, "--out", tmp_path / "plain")
    assert code == 0, err
    ((cfg, plain),) = calls
    assert cfg.num_beams == 2 and cfg.no_repeat_ngram_size == 0 and repeats(plain)
    code, out, err = run(capsys, *base, "--no-repeat-ngram-size", "1", "--length-penalty", "-0.5", "--early-stopping",
                         "--out", tmp_path / "banned")
    assert code == 0 and "2 beams" in out, err
    cfg, banned = calls[1]
    assert (cfg.num_beams, cfg.no_repeat_ngram_size, cfg.length_penalty, cfg.early_stopping) == (2, 1, -0.5, True)
    assert banned and not repeats(banned)
    settings = json.loads((tmp_path / "banned" / "metrics.json").read_text())["generation"]
    assert settings == {"max_new_tokens": 12, "num_beams": 2, "length_penalty": -0.5, "no_repeat_ngram_size": 1,
                        "early_stopping": True, "max_source_len": None}


def test_generated_text_scores_from_additive_statistics_equal_the_corpus_scores():
    from lmforge.eval.metrics import bleu, chrf, rouge, text_scores, text_sums

    hyps = ["a cat sat on the mat", "the dog ran", "hello there", ""]
    refs = ["the cat sat on the mat", "a dog ran fast", "hello world there", "nothing"]
    parts = [text_sums(hyps[:1], refs[:1]), text_sums(hyps[1:], refs[1:])]
    totals = {k: sum(p[k] for p in parts) for k in parts[0]}
    scores = text_scores(totals)
    assert scores["bleu"] == pytest.approx(bleu(hyps, refs).score)
    assert scores["chrf"] == pytest.approx(chrf(hyps, refs).score)
    for key, value in rouge(hyps, refs).items():
        assert scores[key] == pytest.approx(value)


def test_bad_input_is_one_line(capsys, trained, tiny_data, tmp_path):
    rows, runs = trained
    good = write_tsv(tmp_path / "dev.tsv", rows[:4])
    empty_target = tmp_path / "empty.tsv"
    empty_target.write_text("source\ttarget\nsome words\t \n", encoding="utf-8")
    long_source = write_tsv(tmp_path / "long.tsv", [(" ".join(["word"] * 300), "short")])
    cases = [
        (["--task", "translation", "--checkpoint", runs["tiny"], "--file", empty_target],
         "the source and target must both be non-empty text"),
        (["--task", "translation", "--checkpoint", runs["tiny"], "--file", good, "--source-column", "en"],
         "no column 'en'"),
        (["--task", "translation", "--checkpoint", runs["tiny"], "--file", long_source],
         "the source of row 1 has"),
        (["--task", "translation", "--checkpoint", runs["tiny"]], "--task translation needs --file"),
        (["--task", "translation", "--checkpoint", runs["tiny"], "--file", good, "--label-column", "y"],
         "--label-column only applies with --task classification"),
        (["--task", "qa", "--checkpoint", runs["tiny"], "--file", good, "--num-beams", "2"],
         "--num-beams only applies with --task translation or summarisation"),
        (["--task", "translation", "--checkpoint", runs["tiny"], "--file", good, "--no-repeat-ngram-size", "2"],
         "--no-repeat-ngram-size only applies with --num-beams N (N > 1)"),
        (["--task", "translation", "--checkpoint", runs["tiny"], "--file", good, "--early-stopping"],
         "--early-stopping only applies with --num-beams N (N > 1)"),
        (["--task", "qa", "--checkpoint", runs["tiny"], "--file", good, "--early-stopping"],
         "--early-stopping only applies with --task translation or summarisation"),
        (["--task", "translation", "--checkpoint", runs["tiny"], "--file", good, "--num-beams", "2",
          "--length-penalty", "nan"], "--length-penalty is nan, but must be a finite number"),
    ]
    for argv, expected in cases:
        code, out, err = run(capsys, *argv, "--out", tmp_path / "o", "--device", "cpu")
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert expected in err, (argv, err)
    # A source over the positions is fine when truncated on purpose.
    code, _, err = run(capsys, "--task", "translation", "--checkpoint", runs["tiny"], "--file", long_source,
                       "--max-source-len", "16", "--max-new-tokens", "4", "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, err


def test_bad_pairs_are_one_line_or_skipped_with_a_count(capsys, trained, tmp_path):
    rows, runs = trained
    import csv

    file = tmp_path / "dev.csv"  # a CSV file of pairs, one with an empty target and one too long for the model
    with open(file, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("source", "target"), *rows[:4], ("some words", ""), (" ".join(["word"] * 300),
                                                                                     "short")])
    argv = ["--task", "translation", "--checkpoint", runs["tiny"], "--file", file, "--max-new-tokens", "4",
            "--out", tmp_path / "o", "--device", "cpu"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "line 6: the source and target must both be non-empty text" in err and "--skip-bad-rows" in err
    code, out, err = run(capsys, *argv, "--skip-bad-rows")
    assert code == 0, err
    assert "(4 pairs, 2 skipped, greedy)" in out
    assert f"skipped 2 row(s) of {file}: 1 empty, 1 longer than the context" in out
    counts = json.loads((tmp_path / "o" / "metrics.json").read_text())["counts"]
    assert counts == {"pairs": 4, "skipped": 2, "skipped_by_reason": {"empty": 1, "longer than the context": 1}}


@pytest.mark.parametrize("preset", ["tiny", "t5-tiny"])
def test_evaluation_frames_sources_as_training_did(tiny_data, trained, preset):
    """The one template: the ids `eval` generates from are the ids the objective trained and evaluated on."""
    from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from lmforge.data.tokenizer import special_token_ids
    from lmforge.eval.seq2seq import encode_sources
    from train.objectives import make_objective

    rows, runs = trained
    pairs = runs[preset].parent / "pairs.tsv"
    obj = make_objective(tiny_data, "seq2seq", preset, objective_options__pairs=str(pairs), model__d_model=64)
    path = resolve_checkpoint(runs[preset])
    _, cfg = load_model(path)
    tok = load_checkpoint_tokenizer(path, cfg)
    ids = encode_sources(cfg, tok, special_token_ids(tok), [s for s, _ in rows], max_source_len=None, where="x",
                         needed_for="translation")
    assert ids == obj.sources
