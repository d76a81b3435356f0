"""The CPU inference weight layout: swapped linear layers give the model's logits and greedy tokens, share its
parameters (state_dict, tying, gradients unchanged), leave quantised layers alone, and are put back on close."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import lmforge.infer.engine as engine_module
from lmforge.compress.quantize import Int8Linear, QuantizationSpec, quantize_model
from lmforge.infer.engine import Engine, SamplingParams
from lmforge.infer.weight_layout import MAX_ROWS, TransposedLinear, transpose_linears
from lmforge.models import DecoderLM, ModelConfig


def model_of(**kw) -> DecoderLM:
    torch.manual_seed(0)
    base = dict(vocab_size=300, max_seq_len=64, n_layer=2, n_head=4, d_model=32)
    return DecoderLM(ModelConfig(**{**base, **kw})).eval()


def linears(model: nn.Module, kind: type) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is kind]


@pytest.mark.parametrize("rows", [1, MAX_ROWS, 3 * MAX_ROWS])  # the transposed copy, and the weight itself
def test_swapped_layers_give_the_models_logits(rows):
    model = model_of()
    idx = torch.randint(0, 300, (1, rows))
    with torch.inference_mode():
        want = model(idx)
    plain = linears(model, nn.Linear)
    swap = transpose_linears(model, min_weights=0)
    assert linears(model, TransposedLinear) == plain and linears(model, nn.Linear) == []
    with torch.inference_mode():
        got = model(idx)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    swap.restore()
    assert linears(model, nn.Linear) == plain


def test_the_swap_keeps_parameters_state_dict_and_tying():
    model = model_of()
    params = list(model.parameters())
    state = model.state_dict()
    swap = transpose_linears(model, min_weights=0)
    assert list(model.parameters()) == params  # the same Parameter objects, in the same order
    assert model.lm_head.weight is model.embed.tok.weight
    swapped = model.state_dict()
    assert list(swapped) == list(state)
    assert all(swapped[k].data_ptr() == state[k].data_ptr() for k in state)
    swap.restore()


def test_with_grad_enabled_a_swapped_layer_trains_its_own_weight():
    model, reference = model_of().train(), model_of().train()
    transpose_linears(model, min_weights=0)
    idx = torch.randint(0, 300, (1, 4))
    model(idx).square().mean().backward()
    reference(idx).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_copies_are_reused_until_the_weight_changes():
    model = model_of()
    linear = model.blocks[0].attn.wqkv
    swap = transpose_linears(model, min_weights=0)
    layer = model.blocks[0].attn.wqkv
    swap.restore()
    assert model.blocks[0].attn.wqkv is linear
    swap = transpose_linears(model, min_weights=0)
    assert model.blocks[0].attn.wqkv is layer  # the weight is unchanged: no new copy
    swap.restore()
    with torch.no_grad():
        linear.weight.mul_(2.0)  # an optimizer step, in place
    swap = transpose_linears(model, min_weights=0)
    assert model.blocks[0].attn.wqkv is not layer
    x = torch.randn(1, 1, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model.blocks[0].attn.wqkv(x), linear(x), rtol=0, atol=1e-5)
    swap.restore()


def test_small_layers_are_left_alone_by_default():
    model = model_of()  # every matrix smaller than MIN_WEIGHTS
    swap = transpose_linears(model)
    assert linears(model, TransposedLinear) == []
    swap.restore()


def test_quantised_layers_are_left_alone():
    model = model_of()
    quantize_model(model, QuantizationSpec(bits=8))
    quantised = linears(model, Int8Linear)
    swap = transpose_linears(model, min_weights=0)
    assert linears(model, Int8Linear) == quantised
    assert linears(model, TransposedLinear) == ["lm_head"]  # tied to the embedding, kept float by quantisation
    swap.restore()


@pytest.fixture
def swap_every_layer(monkeypatch):
    """The engine swaps layers of any size (the test models' are all small)."""
    monkeypatch.setattr(engine_module, "transpose_linears", functools.partial(transpose_linears, min_weights=0))


@pytest.mark.parametrize("family", [{}, dict(pos="rope", norm="rmsnorm", mlp="gated", activation="silu",
                                             n_kv_head=2, bias=False, tie_embeddings=False)])
def test_the_engine_gives_the_same_greedy_tokens_with_and_without_the_layout(swap_every_layer, family):
    model = model_of(**family)
    prompts = [[5, 17, 42, 8], [9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [7, 7]]
    params = SamplingParams(max_tokens=10, temperature=0.0)
    plain = Engine(model, None, max_batch=4, stop_token_ids=[], transposed_weights=False)
    want = [c.token_ids for c in plain.generate(prompts, params)]
    plain.close()
    engine = Engine(model, None, max_batch=4, stop_token_ids=[])
    assert linears(model, TransposedLinear)  # swapped while the engine runs
    assert [c.token_ids for c in engine.generate(prompts, params)] == want
    engine.close()
    assert linears(model, TransposedLinear) == []  # given back its own layers
