from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.eval.retrieval import evaluate_retrieval, retrieval_metrics, retrieval_sums
from lmforge.train.objectives.contrastive import info_nce

from . import (
    assert_learns,
    last_eval,
    make_objective,
    run_train,
    toy_pairs,
    write_tsv,
)

BERT = ["--preset", "bert-tiny", "--objective", "contrastive"]


def paraphrase_pairs(n: int = 160) -> list[tuple[str, str]]:
    """(a run of ten words, five of them shuffled): a match a tiny encoder learns to find in a few steps."""
    from itertools import islice

    import numpy as np

    from lmforge.data.builtin import python_docs

    words = " ".join(islice(python_docs(), 50)).split()
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(n):
        i = int(rng.integers(len(words) - 12))
        chunk = words[i:i + 10]
        pairs.append((" ".join(chunk), " ".join(rng.permutation(chunk)[:5])))
    return pairs


def test_info_nce_is_zero_for_perfect_pairs_and_log_b_for_collapsed_ones():
    z = F.normalize(torch.randn(8, 16), dim=-1) * 0 + torch.eye(8, 16)
    assert info_nce(z, z, temperature=0.01).item() == pytest.approx(0.0, abs=1e-6)
    same = F.normalize(torch.ones(8, 16), dim=-1)
    assert info_nce(same, same, temperature=0.05).item() / 8 == pytest.approx(math.log(8), rel=1e-5)


def test_retrieval_top1_and_mrr_count_ties_against_the_query():
    eye = torch.eye(4)
    assert retrieval_metrics(retrieval_sums(eye, eye)) == {"top1": 1.0, "mrr": 1.0}
    collapsed = F.normalize(torch.ones(4, 3), dim=-1)
    m = retrieval_metrics(retrieval_sums(collapsed, collapsed))
    assert m["top1"] == 0.0 and m["mrr"] == pytest.approx(0.25)  # every match ties for last of 4
    # Query 0 finds its match second (candidate 1 is nearer), the others first.
    q = torch.eye(3)
    c = torch.tensor([[0.6, 0.0, 0.8], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    m = retrieval_metrics(retrieval_sums(q, c, chunk=2))
    assert m["top1"] == pytest.approx(2 / 3) and m["mrr"] == pytest.approx((1 / 2 + 1 + 1) / 3)


def test_unsupervised_needs_dropout_and_the_family_must_be_an_encoder(tmp_path, tiny_data, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "run", *BERT)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "makes its two views of a sentence with dropout, but model.dropout is 0" in err
    assert "(fix: pass --model.dropout 0.1" in err
    rc, _ = run_train(tiny_data, tmp_path / "run", "--preset", "t5-tiny", "--objective", "contrastive")
    err = capsys.readouterr().err
    assert rc == 2 and "objective 'contrastive' trains encoder models, but the model is a t5 encoder-decoder (fix: " \
        "pass --preset bert-tiny, or an objective for encoder-decoder models (seq2seq, span_corruption))" in err
    assert not (tmp_path / "run").exists()


def test_simcse_batches_are_one_view_of_distinct_documents(tiny_data):
    obj = make_objective(tiny_data, "contrastive", "bert-tiny", model__dropout=0.1)
    batch = next(obj.train_batches())
    assert set(batch) == {"a", "a_mask"}  # the second view comes from dropout in forward
    a, mask = batch["a"], batch["a_mask"]
    cls, sep = obj.special_ids["cls"], obj.special_ids["sep"]
    assert (a[:, 0] == cls).all() and a.shape[1] <= 32
    assert all(row[int(m.sum()) - 1] == sep for row, m in zip(a, mask))
    assert len({tuple(r.tolist()) for r in a}) == len(a)
    held = next(iter(obj.eval_batches()))
    assert len(held["a"]) == 16  # eval_batches (2) x batch_size (8) held-out pairs: halves of val documents


def test_unsupervised_simcse_trains_from_the_cli_and_reports_retrieval(tmp_path, tiny_data):
    rc, records = run_train(tiny_data, tmp_path / "run", *BERT, "--model.dropout", "0.1", "--steps", "20")
    assert rc == 0
    assert_learns(records)
    val = last_eval(records)
    assert 0.0 <= val["val_retrieval_top1"] <= 1.0 and 1 / 16 <= val["val_retrieval_mrr"] <= 1.0
    assert val["val_pairs"] == 16


def test_supervised_pairs_learn_and_the_library_retrieval_agrees_with_training_eval(tmp_path, tiny_data):
    pairs = paraphrase_pairs()
    path = write_tsv(tmp_path / "pairs.tsv", pairs)
    rc, records = run_train(tiny_data, tmp_path / "run", *BERT, "--objective-options.pairs", str(path),
                            "--objective-options.pairs-val-fraction", "0.2", "--steps", "20", "--eval-batches", "0")
    assert rc == 0
    assert_learns(records)
    last = last_eval(records)
    assert last["val_retrieval_mrr"] > 0.5  # chance is about 0.17 among the 21 held-out pairs

    # lmforge.eval.retrieval on exactly the held-out pairs gives the numbers the training evaluation logged.
    from lmforge.data.examples import held_out

    val = held_out(len(pairs), 0.2)
    held = write_tsv(tmp_path / "held.tsv", [p for p, v in zip(pairs, val) if v])
    result = evaluate_retrieval(tmp_path / "run" / "checkpoints" / "step_000020", held, device="cpu")
    assert result.pairs == last["val_pairs"] == val.sum()
    assert result.top1 == pytest.approx(last["val_retrieval_top1"], abs=1e-6)
    assert result.mrr == pytest.approx(last["val_retrieval_mrr"], abs=1e-6)


def test_pair_longer_than_the_positions_is_one_line(tmp_path, tiny_data, capsys):
    path = write_tsv(tmp_path / "pairs.tsv", [*toy_pairs(10), ("short", " ".join(["word"] * 40))])
    flags = [*BERT, "--objective-options.pairs", str(path), "--model.max-seq-len", "32"]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the target of pair 11 has 122 tokens (with <cls>/<sep>), more than the 32 the model's positions allow" \
        in err
    assert not (tmp_path / "run").exists()
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags, "--objective-options.max-target-len", "32")
    assert rc == 0


@pytest.mark.parametrize("supervised", [False, True])
def test_training_stream_resumes_exactly(tmp_path, tiny_data, supervised):
    options = {"objective_options__pairs": str(write_tsv(tmp_path / "p.tsv", toy_pairs(40)))} if supervised else {}
    first = make_objective(tiny_data, "contrastive", "bert-tiny", model__dropout=0.1, **options)
    stream = first.train_batches()
    for _ in range(6):  # supervised: into the second epoch (about 36 training pairs in batches of 8)
        next(stream)
    state = first.state_dict()
    expected = next(stream)
    again = make_objective(tiny_data, "contrastive", "bert-tiny", model__dropout=0.1, **options)
    again.load_state_dict(state)
    got = next(again.train_batches())
    assert set(got) == set(expected) and all(torch.equal(expected[k], got[k]) for k in expected)
