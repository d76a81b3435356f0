"""Classification beyond one balanced label per text: class weights for imbalanced labels, and multi-label texts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.nn.functional as F

from lmforge.cli.main import main

from . import last_eval, make_objective, run_train, write_tsv
from .test_classification import toy_examples

LSTM = ["--preset", "lstm-tiny", "--objective", "classification"]


def multilabel_examples(n: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    """Words with "zebra" and/or "lion" in them; labels: the animals present (comma-separated, maybe none)."""
    rng = np.random.default_rng(seed)
    out = []
    for text, _ in toy_examples(n, seed):
        words = [w for w in text.split() if w != "zebra"]
        labels = [a for a in ("lion", "zebra") if rng.random() < 0.5]
        for animal in labels:
            words.insert(int(rng.integers(len(words) + 1)), animal)
        out.append((" ".join(words), ",".join(labels)))
    return out


def test_balanced_class_weights_are_inverse_frequencies_and_weigh_the_loss(tmp_path, tiny_data):
    rows = [(t, "rare" if i % 4 == 0 else "common") for i, (t, _) in enumerate(toy_examples(80))]
    pairs = write_tsv(tmp_path / "p.tsv", rows, header=("text", "label"))
    obj = make_objective(tiny_data, "classification", "lstm-tiny", model__d_model=32,
                         objective_options__pairs=str(pairs), objective_options__class_weights="balanced")
    # scikit-learn's "balanced": n / (classes x count): 80 / (2 x 60), 80 / (2 x 20); classes sorted.
    assert obj.labels == ["common", "rare"] and obj.weights.tolist() == pytest.approx([80 / 120, 80 / 40])
    model = obj.build_model().eval()
    batch = obj.batch(range(8))
    out = obj.forward(model, batch)
    logits = model(batch["ids"], attention_mask=batch["mask"]).float()
    expected = F.cross_entropy(logits, batch["labels"], weight=obj.weights)  # torch's weighted mean
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_explicit_class_weights_must_match_the_classes(tmp_path, tiny_data, capsys):
    pairs = write_tsv(tmp_path / "p.tsv", toy_examples(40), header=("text", "label"))
    for weights, message in (("1,2,3", "class_weights gives 3 weights for 2 classes (no, yes)"),
                             ("1,-2", "class_weights must be 'balanced' or positive numbers")):
        rc, _ = run_train(tiny_data, tmp_path / "run", *LSTM, "--objective-options.pairs", str(pairs),
                          "--objective-options.class-weights", weights)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
    rc, _ = run_train(tiny_data, tmp_path / "run", *LSTM, "--objective-options.pairs", str(pairs),
                      "--objective-options.class-weights", "1,3", "--steps", "2")
    assert rc == 0


@pytest.mark.slow
def test_multi_label_learns_label_sets_and_eval_scores_them_as_the_run_did(tmp_path, tiny_data, capsys):
    from lmforge.checkpoints import load_model, resolve_checkpoint
    from lmforge.data.examples import held_out

    rows = multilabel_examples(300)
    pairs = write_tsv(tmp_path / "p.tsv", rows, header=("text", "label"))
    obj = make_objective(tiny_data, "classification", "lstm-tiny", model__d_model=32,
                         objective_options__pairs=str(pairs), objective_options__multi_label=True)
    assert obj.labels == ["lion", "zebra"] and obj.cfg.model.multi_label
    assert {tuple(t) for t in obj.targets.tolist()} == {(0, 0), (0, 1), (1, 0), (1, 1)}  # none, one or both
    run = tmp_path / "run"
    rc, records = run_train(tiny_data, run, *LSTM, "--objective-options.pairs", str(pairs),
                            "--objective-options.multi-label", "--objective-options.pairs-val-fraction", "0.2",
                            "--eval-batches", "0", "--steps", "60", "--optim.lr", "1e-2", "--optim.schedule",
                            "constant")
    assert rc == 0
    val = last_eval(records)
    assert val["val_accuracy"] >= 0.6 and val["val_f1"] >= 0.8  # chance: 0.25 subset accuracy (this run: ~0.9)
    _, cfg = load_model(resolve_checkpoint(run))
    assert cfg.multi_label and cfg.labels == ["lion", "zebra"]

    dev = write_tsv(tmp_path / "dev.tsv", [r for r, h in zip(rows, held_out(len(rows), 0.2)) if h],
                    header=("text", "label"))
    capsys.readouterr()
    code = main(["eval", "--task", "classification", "--checkpoint", str(run / "checkpoints" / "step_000060"),
                 "--file", str(dev), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["multi_label"] and metrics["examples"] == val["val_examples"]
    assert metrics["accuracy"] == pytest.approx(val["val_accuracy"])
    assert metrics["macro_f1"] == pytest.approx(val["val_f1"])
    first = json.loads((tmp_path / "o" / "predictions.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "gold", "predicted", "probabilities"} and set(first["probabilities"]) == {
        "lion", "zebra"}


def test_multilabel_scores_by_hand():
    from lmforge.eval.metrics import multilabel_scores

    s = multilabel_scores([["a"], ["a", "b"], []], [["a"], ["b"], ["b"]], ["a", "b"])
    assert s.accuracy == pytest.approx(1 / 3)
    # a: tp 1, predicted 2, true 1 -> F1 2/3; b: tp 1, predicted 1, true 2 -> F1 2/3; micro: 2 x 2 / (3 + 3)
    assert s.per_class["a"].f1 == pytest.approx(2 / 3) and s.macro_f1 == pytest.approx(2 / 3)
    assert s.micro_f1 == pytest.approx(4 / 6)
