from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.checkpoints import load_model
from lmforge.train.objectives.span_corruption import corrupt, noise_mask, raw_length, span_counts

from . import assert_learns, last_eval, make_objective, run_train

SENTINEL, EOS = 1000, 3
T5 = ["--preset", "t5-tiny", "--objective", "span_corruption", "--model.vocab-size", "612"]


def reconstruct(inputs: np.ndarray, targets: np.ndarray, first_sentinel: int) -> list[int]:
    """Put every span of the targets back in place of its sentinel in the inputs (both end in <eos>)."""
    spans: dict[int, list[int]] = {}
    for t in targets[:-1].tolist():
        if t >= first_sentinel:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    out = []
    for t in inputs[:-1].tolist():
        out += spans.pop(t) if t >= first_sentinel else [t]
    assert not spans  # every span was used
    return out


@pytest.mark.parametrize(("density", "mean_length"), [(0.15, 3.0), (0.5, 1.0), (0.3, 8.0)])
def test_inputs_and_targets_reconstruct_the_original(density, mean_length):
    rng = np.random.default_rng(0)
    for length in [2, 3, 7, 50, 257]:
        for _ in range(20):
            tokens = rng.integers(10, 500, size=length)
            mask = noise_mask(length, density, mean_length, rng)
            inputs, targets = corrupt(tokens, mask, SENTINEL, EOS)
            assert inputs[-1] == EOS and targets[-1] == EOS
            assert reconstruct(inputs, targets, SENTINEL) == tokens.tolist()
            noise, spans = span_counts(length, density, mean_length)
            assert mask.sum() == noise and not mask[0] and mask[-1]  # starts kept, ends in noise
            sentinels = inputs[inputs >= SENTINEL].tolist()
            assert sentinels == list(range(SENTINEL, SENTINEL + spans))  # one per span, in order
            assert targets[0] == SENTINEL
            assert len(inputs) == length - noise + spans + 1 and len(targets) == noise + spans + 1


def test_noise_density_and_span_length_match_the_options():
    rng = np.random.default_rng(1)
    masks = [noise_mask(512, 0.15, 3.0, rng) for _ in range(200)]
    density = np.mean([m.mean() for m in masks])
    assert density == pytest.approx(0.15, abs=0.005)
    runs = [np.diff(np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]])))) for m in masks]
    span_lengths = np.concatenate([r[::2] for r in runs])  # noise run lengths (runs alternate noise, kept)
    assert span_lengths.mean() == pytest.approx(3.0, abs=0.1)
    assert len({tuple(np.flatnonzero(m)) for m in masks}) == len(masks)  # random, not one fixed pattern


@pytest.mark.parametrize("seq_len", [3, 16, 32, 100, 512])
def test_window_length_fills_the_encoder_input(seq_len):
    n = raw_length(seq_len, 0.15, 3.0)
    noise, spans = span_counts(n, 0.15, 3.0)
    assert seq_len - 1 <= n - noise + spans + 1 <= seq_len


def test_span_corruption_batches_use_sentinels_after_the_vocabulary(tiny_data):
    obj = make_objective(tiny_data, "span_corruption", "t5-tiny", model__vocab_size=612)
    batch = next(obj.train_batches())
    src, tgt_in, labels = batch["src"], batch["tgt_in"], batch["labels"]
    assert src.shape[0] == 8 and src.shape[1] <= 32 and (src[:, -1] == obj.eos_id).all()
    assert (labels[:, 0] == 512).all() and src.max() < 612  # sentinel 0 is id 512, the first past the tokenizer
    assert (tgt_in[:, 0] == obj.start_id).all() and torch.equal(tgt_in[:, 1:], labels[:, :-1])
    stream = np.asarray(obj.train_ds.window(0, obj.train_ds.num_tokens)).astype(np.int64)
    for s, t in zip(src.numpy(), labels.numpy()):
        original = np.array(reconstruct(s, t, 512))
        assert len(original) == obj.length  # a window of the training stream, corrupted
        starts = np.flatnonzero(stream[:len(stream) - len(original) + 1] == original[0])
        assert any((stream[i:i + len(original)] == original).all() for i in starts)


def test_model_vocabulary_too_small_for_the_sentinels_is_one_line(tmp_path, tiny_data, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "run", "--preset", "t5-tiny", "--objective", "span_corruption",
                      "--model.vocab-size", "600")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert ("span_corruption puts 100 sentinel ids after the tokenizer's 512 tokens, but model.vocab_size is 600: "
            "the model cannot hold them (fix: pass --model.vocab-size 612") in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--preset", "bert-tiny", "--objective", "span_corruption"],
     "objective 'span_corruption' trains encoder-decoder models, but the model is a bert encoder (fix: pass "
     "--preset t5-tiny, or an objective for encoder models (classification, contrastive, extractive_qa, mlm, "
     "mlm_nsp))"),
    ([*T5, "--seq-len", "257"], "seq_len 257 is longer than the model's max_seq_len 256"),
])
def test_bad_input_is_one_line(tmp_path, tiny_data, capsys, flags, message):
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def greedy(model, src: torch.Tensor, start: int, steps: int, cache: bool) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy decoding of an encoder-decoder: with the KV cache one token a step, or recomputing every prefix."""
    memory = model.encode(src)
    tokens = torch.full((len(src), 1), start)
    logits = []
    if cache:
        model.setup_cache(len(src), steps)
    try:
        for t in range(steps):
            if cache:
                step = model.decode(tokens[:, -1:], memory, input_pos=torch.tensor([t]))[:, -1]
            else:
                step = model.decode(tokens, memory)[:, -1]
            logits.append(step)
            tokens = torch.cat([tokens, step.argmax(-1, keepdim=True)], 1)
    finally:
        model.clear_cache()
    return tokens[:, 1:].tolist(), torch.stack(logits, 1)


def test_trained_t5_learns_and_greedy_decodes_the_same_with_and_without_the_cache(tmp_path, tiny_data):
    rc, records = run_train(tiny_data, tmp_path / "run", *T5, "--steps", "20", "--optim.lr", "3e-3",
                            "--optim.schedule", "constant")
    assert rc == 0
    assert_learns(records)
    assert 0.0 < last_eval(records)["val_accuracy"] <= 1.0

    model, cfg = load_model(tmp_path / "run" / "checkpoints" / "step_000020")
    assert cfg.vocab_size == 612
    obj = make_objective(tiny_data, "span_corruption", "t5-tiny", model__vocab_size=612)
    src = next(iter(obj.eval_batches()))["src"][:3]
    with torch.no_grad():
        cached, cached_logits = greedy(model, src, obj.start_id, 12, cache=True)
        plain, plain_logits = greedy(model, src, obj.start_id, 12, cache=False)
    assert cached == plain
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-4, rtol=1e-4)
    assert all(row[0] == 512 for row in cached)  # it has learned that every target starts with sentinel 0


def test_training_stream_resumes_exactly_and_evaluation_is_fixed(tiny_data):
    first = make_objective(tiny_data, "span_corruption", "t5-tiny", model__vocab_size=612)
    stream = first.train_batches()
    next(stream)
    state = first.state_dict()
    expected = next(stream)
    again = make_objective(tiny_data, "span_corruption", "t5-tiny", model__vocab_size=612)
    again.load_state_dict(state)
    got = next(again.train_batches())
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    one, two = list(first.eval_batches()), list(again.eval_batches())
    assert len(one) == 2 and all(torch.equal(x[k], y[k]) for x, y in zip(one, two) for k in x)
