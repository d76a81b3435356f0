from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.data.loaders import SequentialLoader, TokenDataset
from lmforge.errors import UserError
from lmforge.eval.perplexity import Score, evaluate_checkpoint, evaluate_lm, ngram_baseline
from lmforge.models import build_model, get_preset
from lmforge.models.io import save_model


def tiny_model(preset: str = "tiny", **kw):
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset(preset), **{"vocab_size": 512, "d_model": 32, "n_layer": 1,
                                                     "max_seq_len": 64, **kw})
    return build_model(cfg), cfg


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory) -> Path:
    """A random GPT checkpoint carrying the tiny data's tokenizer, as `lmforge train` writes one."""
    model, cfg = tiny_model()
    return save_model(tmp_path_factory.mktemp("ckpt") / "model", model, cfg, tokenizer_dir=tiny_data)


def test_score_from_sums():
    s = Score.from_sums(nll_sum=20.0, count=10, bytes_per_token=4.0)
    assert s.loss == 2.0 and s.ppl == pytest.approx(math.exp(2.0)) and s.tokens == 10
    assert s.bpb == pytest.approx(2.0 / math.log(2) / 4.0)
    assert Score.from_sums(1.0, 1).bpb is None


def test_loss_is_the_exact_token_weighted_mean_whatever_the_batch_size(tiny_data):
    model, _ = tiny_model()
    ds = TokenDataset.open(tiny_data, "val")
    seq_len, windows = 16, 10
    by_3 = evaluate_lm(model, ds, seq_len=seq_len, batch_size=3, max_batches=4)  # 4 batches: 12 windows
    by_12 = evaluate_lm(model, ds, seq_len=seq_len, batch_size=12, max_batches=1)
    assert by_3.tokens == by_12.tokens == 12 * seq_len
    assert by_3.loss == pytest.approx(by_12.loss, rel=1e-6)
    # By hand: every window's summed cross-entropy, over all predicted tokens.
    total = 0.0
    with torch.no_grad():
        for x, y in list(SequentialLoader(ds, 1, seq_len))[:windows]:
            total += F.cross_entropy(model(x)[0], y[0], reduction="sum").item()
    exact = evaluate_lm(model, ds, seq_len=seq_len, batch_size=5, max_batches=2)
    assert exact.tokens == windows * seq_len
    assert exact.loss == pytest.approx(total / (windows * seq_len), rel=1e-6)
    assert exact.bpb == pytest.approx(exact.loss / math.log(2) / ds.bytes_per_token)


def test_whole_split_and_the_last_short_batch(tiny_data):
    model, _ = tiny_model()
    ds = TokenDataset.open(tiny_data, "val")
    seq_len = 64
    n_windows = (ds.num_tokens - 1) // seq_len
    assert n_windows % 7  # the last batch is short
    score = evaluate_lm(model, ds, seq_len=seq_len, batch_size=7)
    assert score.tokens == n_windows * seq_len
    whole = evaluate_lm(model, ds, seq_len=seq_len, batch_size=n_windows)
    assert score.loss == pytest.approx(whole.loss, rel=1e-6)


def test_checkpoint_or_run_directory_on_a_split(checkpoint, tiny_data, tmp_path):
    r = evaluate_checkpoint(checkpoint, tiny_data, "val", batch_size=16, max_batches=2, device="cpu")
    assert r.checkpoint == checkpoint and r.seq_len == 64 and r.split == "val"
    assert r.score.tokens == 2 * 16 * 64
    assert 0.8 * math.log(512) < r.score.loss < 1.2 * math.log(512)  # a random model: about uniform
    # A run directory resolves to its best checkpoint.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best").symlink_to(checkpoint)
    again = evaluate_checkpoint(run, tiny_data, seq_len=32, max_batches=1, device="cpu")
    assert again.seq_len == 32 and again.score.tokens == 8 * 32


def test_missing_checkpoint_is_one_clear_error(tiny_data, tmp_path):
    with pytest.raises(UserError, match="checkpoint not found") as e:
        evaluate_checkpoint(tmp_path / "nope", tiny_data)
    assert "\n" not in e.value.line()
    with pytest.raises(UserError, match="no model checkpoint here"):
        evaluate_checkpoint(tmp_path, tiny_data)


def test_data_from_another_tokenizer_is_refused(checkpoint, tiny_data, tmp_path):
    from conftest import prepare_tiny

    other = prepare_tiny(tmp_path, kind="char", docs=60)  # another tokenizer, a smaller vocabulary
    with pytest.raises(UserError, match="another tokenizer than the checkpoint's") as e:
        evaluate_checkpoint(checkpoint, other, device="cpu")
    assert "--tokenizer-from" in e.value.line() and "\n" not in e.value.line()
    # A model whose vocabulary is too small for the data's tokenizer.
    model, cfg = tiny_model(vocab_size=100)
    small = save_model(tmp_path / "small", model, cfg)  # no tokenizer files: only the vocabulary can be checked
    with pytest.raises(UserError, match="the model's vocabulary is 100"):
        evaluate_checkpoint(small, tiny_data, device="cpu")


def test_non_causal_model_and_too_long_windows_are_refused(tiny_data, tmp_path, checkpoint):
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_preset("bert-tiny"), vocab_size=512, d_model=32, n_layer=1)
    bert = save_model(tmp_path / "bert", build_model(cfg), cfg, tokenizer_dir=tiny_data)
    with pytest.raises(UserError, match=r"\(a causal language model\); this checkpoint is a bert encoder"):
        evaluate_checkpoint(bert, tiny_data, device="cpu")
    with pytest.raises(UserError, match="longer than the model's max_seq_len 64"):
        evaluate_checkpoint(checkpoint, tiny_data, seq_len=65, device="cpu")
    lstm, lstm_cfg = tiny_model("lstm-tiny")
    path = save_model(tmp_path / "lstm", lstm, lstm_cfg, tokenizer_dir=tiny_data)
    with pytest.raises(UserError, match="fewer than one window"):
        evaluate_checkpoint(path, tiny_data, seq_len=10**7, device="cpu")


def test_evaluate_checkpoint_of_a_trained_run_equals_the_trainers_logged_val_metrics(tiny_data, tmp_path):
    # `lmforge eval` and the trainer's evaluation score with the same function: same windows, same numbers.
    import json

    from lmforge.config import resolve
    from lmforge.train import TrainConfig, train

    cfg = resolve(TrainConfig, data=str(tiny_data), out=str(tmp_path / "run"), steps=4, eval_every=2,
                  eval_batches=2, seq_len=32, batch_size=4, model__n_layer=1, model__d_model=32, model__n_head=2,
                  tensorboard=False, device="cpu")
    result = train(cfg)
    evals = [r for r in map(json.loads, (result.out / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "eval" and r["step"] == result.best_step]
    assert len(evals) == 1
    got = evaluate_checkpoint(result.out, tiny_data, seq_len=32, batch_size=4, max_batches=2, device="cpu").score
    assert got.tokens == evals[0]["val_tokens"] == 2 * 4 * 32
    for name in ("loss", "ppl", "bpb"):
        assert getattr(got, name) == pytest.approx(evals[0][f"val_{name}"], rel=0, abs=1e-5)


def test_higher_orders_beat_the_unigram_on_real_text(tiny_data):
    results = {n: ngram_baseline(tiny_data, order=n) for n in (1, 2, 3)}
    assert results[3]["ppl"] < results[2]["ppl"] < 0.5 * results[1]["ppl"]
    train, val = TokenDataset.open(tiny_data, "train"), TokenDataset.open(tiny_data, "val")
    r = results[3]
    assert set(r) >= {"loss", "ppl", "bpb", "order", "train_tokens"}
    assert r["order"] == 3 and r["train_tokens"] == len(train) and r["tokens"] == len(val) - 1
    assert r["ppl"] == pytest.approx(math.exp(r["loss"]))
    assert r["bpb"] == pytest.approx(r["loss"] / math.log(2) / val.bytes_per_token)
