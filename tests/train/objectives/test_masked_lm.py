from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lmforge.data.loaders import TokenDataset
from lmforge.data.tokenizer import load_tokenizer
from lmforge.eval.metrics import IGNORE_INDEX
from lmforge.train.objectives.masked_lm import MaskedLMOptions, Masker, prediction_targets, word_start_table

from . import assert_learns, last_eval, make_objective, run_train

V, MASK, N_SPECIAL = 1000, 4, 7


def test_masking_rate_and_80_10_10_split_on_a_large_batch():
    special = np.zeros(V, dtype=bool)
    special[:N_SPECIAL] = True
    masker = Masker(special, MASK, MaskedLMOptions())
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(64, 512))
    ids[:, ::10] = rng.integers(0, N_SPECIAL, size=ids[:, ::10].shape)  # plenty of special tokens
    inputs, labels = masker(ids, rng)

    selected = labels != IGNORE_INDEX
    is_special = special[ids]
    assert not (selected & is_special).any()  # special tokens are never selected ...
    assert (inputs[is_special] == ids[is_special]).all()  # ... nor changed
    assert (labels[selected] == ids[selected]).all()
    assert (inputs[~selected] == ids[~selected]).all()  # only selected tokens change
    rate = selected.sum() / (~is_special).sum()
    assert rate == pytest.approx(0.15, abs=0.01)

    n = selected.sum()
    masked = (inputs == MASK) & selected
    kept = (inputs == ids) & selected
    randomised = selected & ~masked & ~kept
    assert masked.sum() / n == pytest.approx(0.8, abs=0.02)
    assert kept.sum() / n == pytest.approx(0.1, abs=0.02)
    assert randomised.sum() / n == pytest.approx(0.1, abs=0.02)
    assert not special[inputs[randomised]].any()  # a random replacement is an ordinary token


def test_prediction_targets_put_the_selected_positions_first():
    labels = np.array([[-100, 7, -100, 9], [5, -100, -100, -100]])
    positions, targets = prediction_targets(labels)
    assert positions.tolist() == [[1, 3], [0, 0]]
    assert targets.tolist() == [[7, 9], [5, IGNORE_INDEX]]


def test_whole_word_masking_selects_every_piece_of_a_word_together(tiny_data):
    ds = TokenDataset.open(tiny_data, "train")
    tok = load_tokenizer(ds.tokenizer_path)
    start = word_start_table(tok)
    pieces = tok.encode(" multiprocessing documentation").tokens
    assert [bool(start[tok.token_to_id(p)]) for p in pieces].count(True) == 2  # two words, more pieces
    assert len(pieces) > 2

    special = np.zeros(ds.vocab_size, dtype=bool)
    special[list(ds.special_ids.values())] = True
    masker = Masker(special, ds.special_ids["mask"], MaskedLMOptions(whole_word_mask=True), start)
    ids = np.stack([ds.window(i * 256, 256) for i in range(64)]).astype(np.int64)
    _, labels = masker(ids, np.random.default_rng(1))
    selected = labels != IGNORE_INDEX

    words = selected_multi_piece = 0
    for row, sel in zip(ids, selected):
        begins = start[row] | special[row]
        begins[1:] |= special[row[:-1]]
        begins[0] = True
        bounds = [*np.flatnonzero(begins), len(row)]
        for a, b in itertools.pairwise(bounds):
            if special[row[a]]:
                assert not sel[a:b].any()
                continue
            words += 1
            assert sel[a:b].all() or not sel[a:b].any(), (tok.decode(row[a:b].tolist()), sel[a:b])
            selected_multi_piece += int(b - a > 1 and sel[a])
    assert selected_multi_piece > 50  # the property was exercised on words of several pieces
    assert selected.sum() / (~special[ids]).sum() == pytest.approx(0.15, abs=0.03)
    assert words > 5000


def test_mlm_nsp_batches_are_bert_pairs(tiny_data):
    obj = make_objective(tiny_data, "mlm_nsp", "bert-tiny", seq_len=48)
    cls, sep, pad = obj.cls_id, obj.sep_id, obj.pad_id
    labels = []
    for batch, _ in zip(obj.train_batches(), range(20)):
        ids, types, attn = batch["input_ids"], batch["token_types"], batch["attention_mask"]
        assert ids.shape == (8, 48)
        for row, ty, m in zip(ids.tolist(), types.tolist(), attn.tolist()):
            n = sum(m)
            assert m == [True] * n + [False] * (48 - n)
            assert row[0] == cls and row[n - 1] == sep and row[n:] == [pad] * (48 - n)
            first_sep = row.index(sep)
            assert sep not in row[first_sep + 1:n - 1]
            assert ty[:first_sep + 1] == [0] * (first_sep + 1) and ty[first_sep + 1:n] == [1] * (n - first_sep - 1)
        labels += batch["nsp_labels"].tolist()
    assert 0.3 < np.mean(labels) < 0.7  # IsNext and NotNext about equally often

    # Label 0: B is the continuation of A in one document; label 1: B comes from another document.
    rng, docs = np.random.default_rng(3), obj.train_docs
    stream = np.asarray(obj.train_ds.window(0, obj.train_ds.num_tokens)).astype(np.int64)
    for _ in range(50):
        a, b, label = obj.pair(docs, docs, rng)
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= 48 - 3
        joined = np.concatenate([a, b])
        contiguous = any((stream[s:s + len(joined)] == joined).all()
                         for s in np.flatnonzero(stream[:len(stream) - len(joined) + 1] == joined[0]))
        if label == 0:
            assert contiguous


def test_training_stream_resumes_exactly_and_evaluation_is_fixed(tiny_data):
    first = make_objective(tiny_data, "mlm_nsp", "bert-tiny")
    stream = first.train_batches()
    next(stream)
    state = first.state_dict()
    expected = next(stream)
    again = make_objective(tiny_data, "mlm_nsp", "bert-tiny")
    again.load_state_dict(state)
    got = next(again.train_batches())
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    one, two = list(first.eval_batches()), list(again.eval_batches())
    assert len(one) == 2 and all(torch.equal(x[k], y[k]) for x, y in zip(one, two) for k in x)


@pytest.mark.parametrize("objective", ["mlm", "mlm_nsp"])
def test_each_encoder_objective_trains_from_the_cli(tmp_path, tiny_data, objective):
    rc, records = run_train(tiny_data, tmp_path / "run", "--preset", "bert-tiny", "--objective", objective)
    assert rc == 0
    val = last_eval(records)
    assert 0.0 <= val["val_mlm_accuracy"] <= 1.0
    assert ("val_nsp_accuracy" in val) == (objective == "mlm_nsp")
    assert (tmp_path / "run" / "checkpoints" / "step_000005" / "model.safetensors").is_file()


@pytest.mark.parametrize("flags", [["--objective", "mlm", "--objective-options.whole-word-mask"],
                                   ["--objective", "mlm_nsp"]])
def test_loss_decreases_over_20_steps(tmp_path, tiny_data, flags):
    rc, records = run_train(tiny_data, tmp_path / "run", "--preset", "bert-tiny", "--steps", "20",
                            "--optim.lr", "3e-3", "--optim.schedule", "constant", *flags)
    assert rc == 0
    assert_learns(records)


@pytest.fixture(scope="module")
def no_mask_data(tmp_path_factory):
    """Prepared data whose tokenizer has only <pad> <unk> <eos>."""
    from conftest import prepare_tiny

    return prepare_tiny(tmp_path_factory.mktemp("nomask"), docs=60, tokenizer__special_tokens=["pad", "unk", "eos"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--preset", "tiny", "--objective", "mlm"],
     "objective 'mlm' trains encoder models, but the model is a gpt decoder (fix: pass --preset bert-tiny, or an "
     "objective for decoder models (causal_lm, classification, seq2seq))"),
    (["--preset", "bert-tiny", "--objective", "mlm_nsp", "--seq-len", "300"],
     "seq_len 300 is longer than the model's max_seq_len 256"),
])
def test_bad_input_is_one_line(tmp_path, tiny_data, capsys, flags, message):
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing half-written


@pytest.mark.parametrize(("objective", "missing"), [("mlm", "<mask>"), ("mlm_nsp", "<mask>, <cls>, <sep>")])
def test_tokenizer_without_the_special_tokens_is_one_line(tmp_path, no_mask_data, capsys, objective, missing):
    rc, _ = run_train(no_mask_data, tmp_path / "run", "--preset", "bert-tiny", "--objective", objective)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"objective '{objective}' needs the special token(s) {missing}, which the tokenizer lacks (it has: " \
           f"<pad>, <unk>, <eos>)" in err
    assert not (tmp_path / "run").exists()
