from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.train.objectives import total
from lmforge.train.objectives.classification import class_sums, macro_f1

from . import assert_learns, last_eval, make_objective, run_train, train_losses, write_tsv

LSTM = ["--preset", "lstm-tiny", "--objective", "classification"]


def toy_examples(n: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    """(words, "yes" if they include "zebra" else "no"): separable by one word, wherever it stands."""
    from itertools import islice

    from lmforge.data.builtin import python_docs

    words = [w for w in " ".join(islice(python_docs(), 50)).split() if "zebra" not in w and "\t" not in w]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = [words[j] for j in rng.integers(len(words), size=int(rng.integers(3, 9)))]
        if i % 2:
            text.insert(int(rng.integers(len(text) + 1)), "zebra")
        out.append((" ".join(text), "yes" if i % 2 else "no"))
    return out


def labelled(tmp_path, examples) -> str:
    return str(write_tsv(tmp_path / "labels.tsv", examples, header=("text", "label")))


def test_lstm_classifier_learns_a_toy_task_and_its_checkpoint_reloads(tmp_path, tiny_data, capsys):
    from lmforge.checkpoints import load_model, resolve_checkpoint
    from lmforge.cli.main import main
    from lmforge.models.lstm import LSTMClassifier

    pairs = labelled(tmp_path, toy_examples(300))
    run = tmp_path / "run"
    held_out = ["--objective-options.pairs-val-fraction", "0.2", "--eval-batches", "0"]  # all 43 of them
    rc, records = run_train(tiny_data, run, *LSTM, "--objective-options.pairs", pairs, *held_out, "--steps", "40",
                            "--optim.lr", "1e-2", "--optim.schedule", "constant", "--log-every", "2")
    assert rc == 0
    assert_learns(records)
    val = last_eval(records)
    assert val["val_examples"] == 43
    assert val["val_accuracy"] >= 0.8 and val["val_f1"] >= 0.8  # chance: 0.5 (this run: 0.91)

    ckpt = resolve_checkpoint(run)
    assert json.loads((ckpt / "config.json").read_text())["labels"] == ["no", "yes"]
    model, cfg = load_model(ckpt)
    assert isinstance(model, LSTMClassifier) and cfg.labels == ["no", "yes"]
    # The reloaded model scores the held-out examples exactly as the run's last evaluation did.
    obj = make_objective(tiny_data, "classification", "lstm-tiny", model__d_model=64, eval_batches=0,
                         objective_options__pairs=pairs, objective_options__pairs_val_fraction=0.2)
    with torch.no_grad():
        again = obj.summarize(total(obj.forward(model, b).sums for b in obj.eval_batches()))
    assert again["accuracy"] == val["val_accuracy"] and again["f1"] == pytest.approx(val["val_f1"])
    assert again["loss"] == pytest.approx(val["val_loss"], rel=1e-5)

    # No Hugging Face export of an lstm (classifier or not): one line, nothing written.
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "lmforge family 'lstm' has no Hugging Face export yet" in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()

    # Perplexity is for language models: one line instead of a failure on the class logits.
    assert main(["eval", "--checkpoint", str(run), "--data", str(tiny_data)]) == 2
    err = capsys.readouterr().err
    assert "this checkpoint is a sequence classifier (labels no, yes)" in err and err.count("\n") == 1
    # explain attributes the predicted class to the words (attention and surprise do not apply to it).
    from lmforge.config import resolve
    from lmforge.explain.report import ExplainConfig, explain
    result = explain(resolve(ExplainConfig, checkpoint=str(run), text="the old zebra sleeps",
                             out=str(tmp_path / "explain"), ig_steps=16, device="cpu"))
    assert result.target == "'yes'" and result.target_prob > 0.5
    assert sorted(p.name for p in result.files) == ["attribution.html", "attribution.json"]
    words = json.loads((tmp_path / "explain" / "attribution.json").read_text())["tokens"]
    top = max(words, key=lambda t: t["score"])
    assert top["text"].strip() and top["text"].strip() in "zebra"  # a piece of the word the labels depend on


@pytest.mark.parametrize(("preset", "pooling", "model_class"), [
    ("tiny", "auto", "DecoderLM"),  # a gpt reads its last real token
    ("llama-tiny", "auto", "DecoderLM"),
    ("bert-tiny", "mean", "EncoderModel"),  # the mean of the real tokens instead of [CLS] through the pooler
])
def test_transformer_classifier_learns_the_toy_task_and_its_checkpoint_reloads(tmp_path, tiny_data, preset, pooling,
                                                                               model_class):
    import lmforge.models as models
    from lmforge.checkpoints import load_model, resolve_checkpoint

    pairs = labelled(tmp_path, toy_examples(300))
    run = tmp_path / "run"
    options = ["--objective-options.pairs", pairs, "--objective-options.pairs-val-fraction", "0.2"]
    rc, records = run_train(tiny_data, run, "--preset", preset, "--objective", "classification", *options,
                            "--model.n-layer", "2", "--model.pooling", pooling, "--eval-batches", "0", "--steps",
                            "60", "--optim.lr", "1e-3", "--optim.schedule", "constant", "--log-every", "2")
    assert rc == 0
    assert_learns(records)
    val = last_eval(records)
    assert val["val_examples"] == 43
    assert val["val_accuracy"] >= 0.8 and val["val_f1"] >= 0.8  # chance: 0.5 (seeds 0-2: 0.93-0.98)

    model, cfg = load_model(resolve_checkpoint(run))
    assert isinstance(model, getattr(models, model_class))
    assert (cfg.head, cfg.labels, cfg.pooling) == ("classify", ["no", "yes"], pooling)
    # The reloaded model scores the held-out examples exactly as the run's last evaluation did.
    obj = make_objective(tiny_data, "classification", preset, model__d_model=64, model__n_layer=2,
                         model__pooling=pooling, eval_batches=0, objective_options__pairs=pairs,
                         objective_options__pairs_val_fraction=0.2)
    with torch.no_grad():
        again = obj.summarize(total(obj.forward(model.eval(), b).sums for b in obj.eval_batches()))
    assert again["accuracy"] == val["val_accuracy"] and again["f1"] == pytest.approx(val["val_f1"])
    assert again["loss"] == pytest.approx(val["val_loss"], rel=1e-5)


def test_batches_frame_texts_after_eos_with_their_label_ids(tmp_path, tiny_data):
    from lmforge.data.loaders import TokenDataset

    pairs = labelled(tmp_path, [("a cat", "pets"), ("a tree", "plants"), ("two dogs", "pets")] * 10)
    obj = make_objective(tiny_data, "classification", "lstm-tiny", objective_options__pairs=pairs)
    assert obj.cfg.model.labels == obj.labels == ["pets", "plants"]
    b = next(obj.train_batches())
    for ids, n, y in zip(b["ids"], b["mask"].sum(1), b["labels"]):
        text = ids[:int(n)].tolist()
        assert text in obj.texts and obj.targets[obj.texts.index(text)] == y
        assert (ids[int(n):] == obj.pad_id).all()
    eos = TokenDataset.open(tiny_data, "train").special_ids["eos"]
    assert all(t[0] == eos and eos not in t[1:] for t in obj.texts)  # read as a document: after <eos>


def test_length_buckets_batch_texts_of_similar_length_and_covers_them_all(tmp_path, tiny_data):
    rng = np.random.default_rng(0)
    words = ["cat", "tree", "dog", "leaf"]
    examples = [(" ".join(rng.choice(words, size=int(k))), "pets" if i % 2 else "plants")
                for i, k in enumerate(rng.integers(1, 40, size=400))]
    pairs = labelled(tmp_path, examples)

    def padded_epoch(**options):  # tokens one epoch of batches costs (size x longest), and the texts it saw
        obj = make_objective(tiny_data, "classification", "lstm-tiny", batch_size=16, objective_options__pairs=pairs,
                             **{f"objective_options__{k}": v for k, v in options.items()})
        stream, cost, seen = obj.train_batches(), 0, 0
        for _ in range(len(obj.train_idx) // 16):
            b = next(stream)
            cost, seen = cost + b["ids"].numel(), seen + len(b["ids"])
        return cost, seen, obj

    plain, seen_plain, obj = padded_epoch()
    grouped, seen_grouped, _ = padded_epoch(length_buckets=10)
    assert seen_plain == seen_grouped
    real = sum(len(obj.texts[i]) for i in obj.train_idx)
    assert grouped < 1.25 * real < 0.8 * plain


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_data):
    # 40 examples (36 train) in batches of 8: the resumed half crosses an epoch boundary.
    flags = [*LSTM, "--objective-options.pairs", labelled(tmp_path, toy_examples(40)), "--checkpoint-every", "3",
             "--optim.schedule", "constant"]
    rc, straight = run_train(tiny_data, tmp_path / "straight", *flags, "--steps", "6")
    assert rc == 0
    rc, _ = run_train(tiny_data, tmp_path / "resumed", *flags, "--steps", "3")
    assert rc == 0
    rc, resumed = run_train(None, tmp_path / "resumed", "--resume", "--steps", "6")  # labels from config.yaml
    assert rc == 0
    assert train_losses(resumed)[3:] == pytest.approx(train_losses(straight)[3:], rel=1e-5)


def test_given_labels_fix_the_classes_and_their_order(tmp_path, tiny_data):
    pairs = labelled(tmp_path, toy_examples(40))
    obj = make_objective(tiny_data, "classification", "lstm-tiny", objective_options__pairs=pairs,
                         model__labels=["yes", "maybe", "no"])
    assert obj.labels == ["yes", "maybe", "no"]
    assert {int(y) for y in obj.targets} == {0, 2}


def test_val_pairs_are_the_held_out_examples_and_every_pairs_example_trains(tmp_path, tiny_data, capsys):
    train = toy_examples(40)
    held = toy_examples(10, seed=1)
    pairs = labelled(tmp_path, train)
    val = str(write_tsv(tmp_path / "val.tsv", held, header=("text", "label")))
    obj = make_objective(tiny_data, "classification", "lstm-tiny", eval_batches=0, objective_options__pairs=pairs,
                         objective_options__val_pairs=val, objective_options__pairs_val_fraction=0.5)
    assert obj.train_idx.tolist() == list(range(40)) and obj.val_idx.tolist() == list(range(40, 50))
    assert [obj.targets[i] for i in obj.val_idx] == [obj.labels.index(label) for _, label in held]
    assert sum(len(b["labels"]) for b in obj.eval_batches()) == 10
    # A held-out label the training file lacks is one line.
    bad = str(write_tsv(tmp_path / "bad.tsv", [("a cat", "maybe"), *held], header=("text", "label")))
    rc, _ = run_train(tiny_data, tmp_path / "run", *LSTM, "--objective-options.pairs", pairs,
                      "--objective-options.val-pairs", bad)
    err = capsys.readouterr().err
    assert rc == 2 and "the val_pairs file has labels the training file lacks: 'maybe'" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_text_longer_than_max_seq_len_is_one_line_and_truncation_fixes_it(tmp_path, tiny_data, capsys):
    pairs = labelled(tmp_path, [*toy_examples(20), (" ".join(["word"] * 100), "no")])
    flags = [*LSTM, "--objective-options.pairs", pairs, "--model.max-seq-len", "64", "--steps", "2"]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the text of example 21 has 301 tokens with <eos>, more than model.max_seq_len 64" in err, err
    assert not (tmp_path / "run").exists()
    # An lstm has no position limit: the cap may exceed max_seq_len.
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags, "--objective-options.max-source-len", "128")
    assert rc == 0


@pytest.mark.parametrize(("flags", "examples", "message"), [
    (["--preset", "t5-tiny", "--objective", "classification"], None,
     "objective 'classification' trains decoder or encoder or recurrent models, but the model is a t5 "
     "encoder-decoder (fix: pass --preset tiny (or another: llama-tiny, bert-tiny, lstm-tiny)"),
    (LSTM, "no file", "objective 'classification' trains on labelled texts, but no labels file is given"),
    (LSTM, [("a cat", "pets"), ("two dogs", "pets")] * 5,
     "the labels file has 1 distinct label ('pets') in column 'label': a classifier needs two or more"),
    ([*LSTM, "--objective-options.text-column", "body"], [("a cat", "pets"), ("a tree", "plants")] * 5,
     "the TSV header has no column 'body' (it has: 'text', 'label') (fix: name the columns with "
     "--objective-options.text-column / label-column"),
    ([*LSTM, "--objective-options.label-column", "topic"], [("a cat", "pets"), ("a tree", "plants")] * 5,
     "the TSV header has no column 'topic' (it has: 'text', 'label')"),
    ([*LSTM, "--model.labels", "pets", "animals"], [("a cat", "pets"), ("a tree", "plants")] * 5,
     "the labels file has labels that model.labels lacks: 'plants'"),
])
def test_bad_input_is_one_line(tmp_path, tiny_data, capsys, flags, examples, message):
    if examples != "no file":
        flags = [*flags, "--objective-options.pairs", labelled(tmp_path, examples or toy_examples(20))]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_labels_with_the_language_model_objective_are_one_line(tmp_path, tiny_data, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "run", "--preset", "lstm-tiny", "--model.labels", "a", "b")
    err = capsys.readouterr().err
    assert rc == 2 and "trains the language-model head, but the model config asks for a classify head" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_macro_f1_against_a_hand_computed_example():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 2])
    # class 0: tp 2, predicted 3, true 3 -> F1 4/6; class 1: tp 1, predicted 2, true 2 -> 2/4;
    # class 2: tp 3, predicted 4, true 4 -> 6/8; class 3: absent from both, left out.
    expected = (4 / 6 + 2 / 4 + 6 / 8) / 3
    whole = total([class_sums(pred, labels, 4)])
    assert macro_f1(whole, 4) == pytest.approx(expected)
    # The counts add up over batches (and ranks): two halves give the same F1 as the whole.
    halves = total([class_sums(pred[:4], labels[:4], 4), class_sums(pred[4:], labels[4:], 4)])
    assert halves == whole
    # A class that is predicted but never true counts, with F1 0.
    assert macro_f1(total([class_sums(torch.tensor([0, 1]), torch.tensor([0, 0]), 2)]), 2) == pytest.approx(
        (2 / 3 + 0) / 2)
    assert macro_f1({}, 3) == 0.0


def test_a_csv_labels_file_with_bad_rows_is_one_line_or_skipped_and_counted(tmp_path, tiny_data, capsys):
    import csv

    rows = [*toy_examples(30), ("", "yes"), (" ".join(["word"] * 300), "no"), ("quoted, with\na newline", "no")]
    file = tmp_path / "labels.csv"
    with open(file, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("sentence", "label"), *rows])
    flags = [*LSTM, "--objective-options.pairs", str(file), "--objective-options.text-column", "sentence",
             "--model.max-seq-len", "128", "--steps", "2"]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"{file}: line 32: the source and target must both be non-empty text" in err
    assert "--objective-options.skip-bad-rows" in err and not (tmp_path / "run").exists()

    obj = make_objective(tiny_data, "classification", "lstm-tiny", model__max_seq_len=128,
                         objective_options__pairs=str(file), objective_options__text_column="sentence",
                         objective_options__skip_bad_rows=True)
    assert f"skipped 2 row(s) of {file}: 1 empty, 1 longer than the context" in capsys.readouterr().err
    assert obj.skipped_rows == 2 and len(obj.texts) == len(obj.targets) == 31
    assert obj.targets.tolist() == [obj.labels.index(y) for _, y in [*toy_examples(30), rows[-1]]]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags, "--objective-options.skip-bad-rows")
    assert rc == 0
