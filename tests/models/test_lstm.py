from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmforge.checkpoints import load_model
from lmforge.config import resolve
from lmforge.errors import UserError
from lmforge.models import LSTMLM, ModelConfig, build_model, get_preset
from lmforge.models.io import save_model
from lmforge.models.lstm import LSTMClassifier


def small_cfg(**kw) -> ModelConfig:
    return dataclasses.replace(get_preset("lstm-tiny"), **{"vocab_size": 50, "d_model": 32, **kw})


def test_preset_builds_an_lstm_mapping_tokens_to_next_token_logits():
    cfg = small_cfg(n_layer=2)
    model = build_model(cfg)
    assert isinstance(model, LSTMLM) and model.lstm.num_layers == 2
    idx = torch.randint(0, 50, (3, 7))
    assert model(idx).shape == (3, 7, 50)
    # Longer than max_seq_len is fine for a recurrent model.
    assert model(torch.randint(0, 50, (1, cfg.max_seq_len + 5))).shape == (1, cfg.max_seq_len + 5, 50)


def test_logits_depend_only_on_the_past_and_state_carries_over():
    torch.manual_seed(0)
    model = build_model(small_cfg(n_layer=2)).eval()
    idx = torch.randint(0, 50, (2, 10))
    full = model(idx)
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 50
    torch.testing.assert_close(model(changed)[:, :6], full[:, :6])
    assert not torch.allclose(model(changed)[:, 6:], full[:, 6:])
    first, state = model(idx[:, :4], return_state=True)
    second = model(idx[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full)


def test_tied_and_untied_output_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    tied = build_model(small_cfg())
    assert tied.lm_head.weight is tied.tok.weight
    untied = build_model(small_cfg(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok.weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 50 * 32
    for name, model in (("tied", tied), ("untied", untied)):
        save_model(tmp_path / name, model, model.cfg)
        loaded, cfg = load_model(tmp_path / name)
        assert isinstance(loaded, LSTMLM) and cfg == model.cfg
        idx = torch.randint(0, 50, (2, 9))
        torch.testing.assert_close(loaded(idx), model.eval()(idx))
    assert loaded.lm_head.weight is not loaded.tok.weight


def test_parameter_count_and_flops_have_no_attention_term():
    cfg = small_cfg(n_layer=2)
    model = build_model(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    lstm_params = cfg.num_params(include_embeddings=False)
    assert lstm_params == sum(p.numel() for p in model.lstm.parameters())
    # 6 N per token (N: recurrent weights + output matrix), whatever the sequence length.
    assert cfg.flops_per_token(16) == cfg.flops_per_token(1024) == 6 * lstm_params + 6 * 50 * 32


def test_trains_through_the_one_training_loop_and_its_loss_drops(tiny_data, tmp_path):
    from lmforge.train import TrainConfig, train

    cfg = resolve(TrainConfig, data=str(tiny_data), out=str(tmp_path / "run"), preset="lstm-tiny",
                  model__d_model=128, steps=50, batch_size=16, seq_len=32, optim__lr=1e-2, log_every=5,
                  eval_every=0, eval_batches=4, tensorboard=False, device="cpu")
    assert cfg.model.family == "lstm" and cfg.model.vocab_size == 512
    result = train(cfg)
    losses = [loss for _, loss in result.history["train"]]
    assert losses[0] > 5.5  # ~ln(512) at the start
    assert losses[-1] < losses[0] - 1.0
    assert result.val["val_loss"] < 5.1  # below the unigram model's ~5.3: it uses the context
    model, model_cfg = load_model(result.checkpoint)
    assert isinstance(model, LSTMLM) and model_cfg.d_model == 128


def toy_batch(gen: torch.Generator, n: int = 32, vocab: int = 16, t: int = 12):
    """Class 0: tokens 1..7, class 1: tokens 8..15, right-padded with 0 to random lengths."""
    labels = torch.randint(0, 2, (n,), generator=gen)
    idx = torch.randint(1, 8, (n, t), generator=gen) + 7 * labels[:, None]
    lengths = torch.randint(3, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return idx * mask, mask, labels


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_classifier_learns_a_toy_task_in_a_few_steps(pool):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = LSTMClassifier(small_cfg(vocab_size=16), n_classes=2, pool=pool)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(15):
        idx, mask, labels = toy_batch(gen)
        loss = F.cross_entropy(model(idx, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    idx, mask, labels = toy_batch(gen, n=200)
    with torch.no_grad():
        accuracy = (model.eval()(idx, mask).argmax(-1) == labels).float().mean().item()
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy > 0.95


def test_classifier_ignores_right_padding_and_starts_from_a_language_model():
    torch.manual_seed(0)
    lm = build_model(small_cfg())
    for pool in ("mean", "last"):
        model = LSTMClassifier.from_lm(lm, ["a", "b", "c"], pool=pool).eval()
        assert model.cfg.labels == ["a", "b", "c"] and model.head.out_features == 3 and not lm.cfg.labels
        torch.testing.assert_close(model.lstm.weight_hh_l0, lm.lstm.weight_hh_l0)
        torch.testing.assert_close(model.tok.weight, lm.tok.weight)
        idx = torch.randint(1, 50, (1, 5))
        padded = torch.cat([idx, torch.zeros(1, 4, dtype=torch.long)], 1)
        mask = torch.tensor([[1] * 5 + [0] * 4])
        torch.testing.assert_close(model(padded, mask), model(idx))


def test_a_config_with_labels_builds_a_classifier_that_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg(labels=["neg", "neu", "pos"])
    model = build_model(cfg)
    assert isinstance(model, LSTMClassifier) and model.head.out_features == 3
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    # No output projection over the vocabulary: the LM's 6 V d term is gone.
    assert small_cfg().flops_per_token() - cfg.flops_per_token() == 6 * 50 * 32 - 6 * (32 * 3 + 3)
    save_model(tmp_path / "clf", model, cfg)
    assert ModelConfig.load(tmp_path / "clf" / "config.json") == cfg
    loaded, loaded_cfg = load_model(tmp_path / "clf")
    assert isinstance(loaded, LSTMClassifier) and loaded_cfg.labels == ["neg", "neu", "pos"]
    idx = torch.randint(1, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    torch.testing.assert_close(loaded(idx, mask), model.eval()(idx, mask))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg and not get_preset("lstm-tiny").labels


@pytest.mark.parametrize(("kw", "message"), [
    (dict(family="t5", labels=["a", "b"]), "a t5 model has no 'classify' head"),
    (dict(family="gpt", head="span"), "a gpt model has no 'span' head"),
    (dict(head="classify"), "a classify head needs labels"),
    (dict(labels=["a"]), "labels must be two or more distinct non-empty names"),
    (dict(labels=["a", "a"]), "labels must be two or more distinct non-empty names"),
])
def test_bad_labels_are_one_line(kw, message):
    with pytest.raises(UserError) as e:
        ModelConfig(**{**small_cfg().to_dict(), **kw})
    assert message in e.value.line()


@pytest.mark.parametrize("pool", ["mean", "last", "max"])
def test_a_bidirectional_classifier_reads_both_ways_and_ignores_right_padding(pool):
    torch.manual_seed(0)
    cfg = small_cfg(labels=["a", "b"], bidirectional=True, pooling=pool)
    model = build_model(cfg).eval()
    assert isinstance(model, LSTMClassifier) and model.head.in_features == 2 * 32
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    idx = torch.randint(1, 50, (1, 5))
    padded = torch.cat([idx, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    alone = model(idx)
    torch.testing.assert_close(model(padded, mask), alone)
    # Beside a longer text in one batch: the right-to-left LSTM still starts at this text's own last token.
    batch = torch.cat([padded, torch.randint(1, 50, (1, 9))])
    torch.testing.assert_close(model(batch, torch.cat([mask, torch.ones(1, 9, dtype=torch.long)]))[:1], alone)
    if pool == "last":  # the pooled right-to-left half is that LSTM's state after reading the text reversed
        backward = torch.nn.LSTM(32, 32, batch_first=True)
        backward.load_state_dict({k.removesuffix("_reverse"): v for k, v in model.lstm.state_dict().items()
                                  if k.endswith("_reverse")})
        with torch.no_grad():
            _, (h, _) = backward(model.tok(idx.flip(1)))
            pooled = torch.cat([model.lstm(model.tok(idx))[0][:, -1, :32], h[-1]], -1)
        torch.testing.assert_close(alone, model.head(pooled))


def test_bidirectional_is_for_an_lstm_classifier_only():
    with pytest.raises(UserError, match="bidirectional is for a recurrent"):
        ModelConfig(**{**get_preset("tiny").to_dict(), "bidirectional": True})
    with pytest.raises(UserError, match="a language model cannot read the text right to left"):
        build_model(small_cfg(bidirectional=True))
