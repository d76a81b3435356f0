"""The chunked head loss equals the plain path (logits, then float32 cross-entropy) in loss and in gradients."""

from __future__ import annotations

import pytest
import torch

import lmforge.models.decoder as decoder
import lmforge.models.lm_loss as lm_loss
from lmforge.models import DecoderLM, ModelConfig
from lmforge.models.lm_loss import IGNORE_INDEX, chunked_lm_loss, next_token_nll

HEADS = {
    "tied": dict(tie_embeddings=True),
    "untied": dict(tie_embeddings=False),
    "untied-softcap": dict(tie_embeddings=False, logit_softcap=3.0),  # a low cap, so tanh bends the logits
    "tied-softcap": dict(tie_embeddings=True, logit_softcap=3.0),
}


@pytest.fixture(autouse=True)
def chunked_at_any_vocabulary(monkeypatch):
    """The tests' vocabulary (97) is below the one the decoder chunks from; these tests pin the chunked path."""
    monkeypatch.setattr(decoder, "CHUNKED_FROM_VOCAB", 0)


def model_and_batch(seed: int = 0, **kw) -> tuple[DecoderLM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(vocab_size=97, max_seq_len=32, n_layer=2, n_head=4, d_model=32, dropout=0.0), **kw})
    model = DecoderLM(cfg)
    with torch.no_grad():  # larger head weights than the init's, so the cap and the softmax are not near-linear
        model.lm_head.weight.mul_(20.0)
    x = torch.randint(0, 97, (3, 20))
    y = torch.randint(0, 97, (3, 20))
    y[0, :5] = IGNORE_INDEX  # padding is not predicted
    return model, x, y


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])  # many chunks (one uneven at the end), and the whole batch in one
def test_chunked_loss_and_gradients_equal_the_plain_path(head, chunk_rows, monkeypatch):
    monkeypatch.setattr(lm_loss, "_chunk_rows", lambda vocab_size: chunk_rows)
    model, x, y = model_and_batch(**HEADS[head])
    plain, count = next_token_nll(model(x), y)
    (plain / count).backward()
    want = grads(model)
    chunked, chunked_count = model(x, targets=y)
    (chunked / chunked_count).backward()
    got = grads(model)
    assert chunked_count == count == y.numel() - 5
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    assert plain.item() > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    head = next(n for n, p in model.named_parameters() if p is model.lm_head.weight)  # the embedding's when tied
    assert want[head].abs().sum() > 0


def test_upstream_gradient_scales_the_saved_gradients():
    """The gradients are computed in the forward pass; the backward pass must still honour the loss's scale
    (gradient accumulation divides it, the grad scaler multiplies it)."""
    model, x, y = model_and_batch(**HEADS["untied"])
    loss, _ = model(x, targets=y)
    loss.backward()
    once = grads(model)
    loss, _ = model(x, targets=y)
    (-2.5 * loss).backward()
    for name, g in grads(model).items():
        torch.testing.assert_close(g, -2.5 * once[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_evaluation_without_grad_gives_the_same_loss():
    model, x, y = model_and_batch(**HEADS["untied-softcap"])
    with torch.no_grad():
        plain, _ = next_token_nll(model(x), y)
        chunked, count = model(x, targets=y)
    assert not chunked.requires_grad
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    assert count == y.numel() - 5


def test_frozen_head_gets_no_gradient():
    model, x, y = model_and_batch(**HEADS["untied"])
    model.lm_head.weight.requires_grad_(False)
    loss, count = model(x, targets=y)
    (loss / count).backward()
    assert model.lm_head.weight.grad is None
    assert model.embed.tok.weight.grad.abs().sum() > 0


def test_function_on_raw_tensors_matches_cross_entropy():
    torch.manual_seed(1)
    h = torch.randn(2, 9, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    t = torch.randint(0, 50, (2, 9))
    want, _ = next_token_nll((h @ w.t()), t)
    want.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    got, count = chunked_lm_loss(h, w, t)
    got.backward()
    assert count == 18
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(h.grad, gh)
    torch.testing.assert_close(w.grad, gw)


def test_a_small_vocabulary_takes_the_plain_path(monkeypatch):
    monkeypatch.setattr(decoder, "CHUNKED_FROM_VOCAB", 98)
    calls = []
    monkeypatch.setattr(decoder, "chunked_lm_loss", lambda *a: calls.append(a))
    model, x, y = model_and_batch(**HEADS["untied-softcap"])
    loss, count = model(x, targets=y)
    assert not calls
    assert loss.item() == pytest.approx(next_token_nll(model(x), y)[0].item(), rel=1e-6)
    monkeypatch.setattr(decoder, "CHUNKED_FROM_VOCAB", 97)
    model(x, targets=y)
    assert len(calls) == 1
