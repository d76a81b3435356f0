"""Weight-only int8 / int4 quantisation: the layers' arithmetic, agreement with the float model, checkpoints that
load through the one loader to identical outputs, and one line for each bad input."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.checkpoints import load_model
from lmforge.compress.quantize import (
    QUANTIZATION,
    Int4Linear,
    Int8Linear,
    QuantizationSpec,
    quantize_model,
    read_spec,
    save_quantized,
)
from lmforge.data.loaders import TokenDataset
from lmforge.errors import UserError
from lmforge.infer.generate import GenerationConfig, generate_ids
from lmforge.models import ModelConfig, build_model
from lmforge.models.config import get_preset
from lmforge.models.io import WEIGHTS, save_model
from lmforge.models.ngram import NGramLM


def val_windows(data, n: int = 4, t: int = 64) -> torch.Tensor:
    ds = TokenDataset.open(data, "val")
    return torch.as_tensor(ds.window(0, n * t).astype("int64")).reshape(n, t)


def quantized(model: nn.Module, bits: int, group_size: int | None = None) -> nn.Module:
    q = copy.deepcopy(model)
    quantize_model(q, QuantizationSpec(bits=bits, group_size=group_size))
    return q


def test_int8_rounds_each_weight_to_within_half_its_rows_step():
    torch.manual_seed(0)
    linear = nn.Linear(64, 24)
    layer = Int8Linear.from_linear(linear)
    assert layer.weight.dtype == torch.int8 and layer.scales.shape == (24,)
    error = (layer.dequantized() - linear.weight).abs()
    assert (error <= layer.scales[:, None] / 2 + 1e-7).all()
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(layer.dequantized_matmul(x) + linear.bias,
                               nn.functional.linear(x, layer.dequantized(), linear.bias))


def test_int4_packs_two_values_a_byte_and_rounds_within_half_a_groups_step():
    torch.manual_seed(0)
    linear = nn.Linear(64, 8, bias=False)
    layer = Int4Linear.from_linear(linear, group_size=32)
    assert layer.packed.shape == (8, 32) and layer.packed.dtype == torch.uint8 and layer.scales.shape == (8, 2)
    error = (layer.dequantized() - linear.weight).abs().reshape(8, 2, 32)
    assert (error <= layer.scales[..., None] / 2 + 1e-6).all()
    # a weight already on the grid comes back exactly: packing and unpacking lose nothing
    grid = layer.dequantized()
    again_linear = nn.Linear(64, 8, bias=False)
    again_linear.weight.data.copy_(grid)
    again = Int4Linear.from_linear(again_linear, 32)
    torch.testing.assert_close(again.dequantized(), grid, atol=1e-6, rtol=0)


def bf16_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Within what bf16 activations and outputs cost: a few parts in a thousand of the output's scale."""
    assert actual.dtype == expected.dtype
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= 1e-2 * scale, ((actual - expected).abs().max(), scale)


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32), (4, 64), (4, 128), (4, 256)])
def test_the_cpu_kernels_match_the_dequantised_weight(bits, group_size):
    torch.manual_seed(0)
    linear = nn.Linear(256, 48)
    layer = Int8Linear.from_linear(linear) if bits == 8 else Int4Linear.from_linear(linear, group_size)
    x = torch.randn(2, 7, 256)
    assert layer._kernel_applies(x)
    reference = nn.functional.linear(x, layer.dequantized(), linear.bias)
    bf16_close(layer(x), reference)  # (2, 7, 256) in, fp32 out: the kernel's bf16 is inside the layer
    bf16_close(layer(x[0, :1]), reference[0, :1])  # batch 1, one token: the decode step
    assert not torch.equal(layer(x), reference)  # the kernel ran (the portable path would match to fp32 rounding)


def test_the_portable_path_runs_where_the_kernels_do_not_apply():
    torch.manual_seed(0)
    odd = Int8Linear.from_linear(nn.Linear(36, 16))  # input width not a multiple of 8
    narrow = Int4Linear.from_linear(nn.Linear(64, 24), 32)  # output width not a multiple of 16
    for layer in (odd, narrow):
        x = torch.randn(3, layer.in_features)
        assert not layer._kernel_applies(x)
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.dequantized(), layer.bias))
    # a gradient to carry back to the input: the kernels have no backward, so the portable path runs
    layer = Int8Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(3, 64, requires_grad=True)
    assert not layer._kernel_applies(x)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.dequantized().sum(0).expand(3, -1))
    with torch.no_grad():
        assert layer._kernel_applies(x)


def test_a_heads_logits_keep_the_activations_dtype(trained_lms):
    model, _ = load_model(trained_lms["llama"])
    q8 = quantized(model, 8)
    assert q8.lm_head.exact_output and not q8.blocks[0].attn.wqkv.exact_output
    with torch.no_grad():
        h = torch.randn(1, 3, q8.lm_head.in_features)
        torch.testing.assert_close(q8.lm_head(h), nn.functional.linear(h, q8.lm_head.dequantized()))


def test_the_int4_kernel_layout_follows_new_weights():
    torch.manual_seed(0)
    first, second = (Int4Linear.from_linear(nn.Linear(64, 32, bias=False), 32) for _ in range(2))
    x = torch.randn(2, 64)
    first(x)  # builds the kernel layout of the first weights
    first.load_state_dict(second.state_dict())
    torch.testing.assert_close(first(x), second(x), atol=0, rtol=0)
    first.to(torch.bfloat16)  # a move: the scales are bf16 now, the layout is made again from them
    bf16_close(first(x.bfloat16()).float(), nn.functional.linear(x, first.dequantized().float()))
    with torch.inference_mode():  # built and run where the engine and the server run (no version counters)
        layer = Int4Linear.from_linear(nn.Linear(64, 32), 32)
        bf16_close(layer(x), nn.functional.linear(x, layer.dequantized(), layer.bias))


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_int8_greedy_tokens_agree_with_fp32(trained_lms, tiny_data, family):
    model, _ = load_model(trained_lms[family])
    q8 = quantized(model, 8)
    x = val_windows(tiny_data)
    prompts = [row[:8].tolist() for row in x]
    cfg = GenerationConfig(temperature=0.0, max_new_tokens=32)
    ref, out = generate_ids(model, prompts, cfg), generate_ids(q8, prompts, cfg)
    agree = sum(a == b for r, o in zip(ref, out) for a, b in zip(r, o)) / sum(len(r) for r in ref)
    assert agree >= 0.95, agree
    with torch.no_grad():  # next-token argmax over real text, every position
        assert (q8(x).argmax(-1) == model(x).argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_int4_stays_close_on_real_text(trained_lms, tiny_data, family):
    model, _ = load_model(trained_lms[family])
    x = val_windows(tiny_data)
    with torch.no_grad():
        agree = (quantized(model, 4, 32)(x).argmax(-1) == model(x).argmax(-1)).float().mean()
    assert agree >= 0.85, agree


def test_a_quantised_checkpoint_reloads_to_identical_outputs(trained_lms, tiny_data, tmp_path):
    model, cfg = load_model(trained_lms["llama"])
    x = val_windows(tiny_data)
    for bits, group in ((8, None), (4, 64)):
        q = copy.deepcopy(model)
        spec = quantize_model(q, QuantizationSpec(bits=bits, group_size=group))
        out = save_quantized(tmp_path / f"q{bits}", q, cfg, spec, trained_lms["llama"])
        reloaded, _ = load_model(out)
        assert isinstance(reloaded.blocks[0].attn.wqkv, Int8Linear if bits == 8 else Int4Linear)
        with torch.no_grad():
            assert torch.equal(reloaded(x), q(x))
        # per block wqkv, wo, gate, up, down; and the untied head
        assert read_spec(out).layers == spec.layers and len(spec.layers) == 2 * 5 + 1
        assert (out / WEIGHTS).stat().st_size < (trained_lms["llama"] / WEIGHTS).stat().st_size / (2 if bits == 8
                                                                                                    else 2.5)
    bf16, _ = load_model(tmp_path / "q8", dtype=torch.bfloat16)  # scales follow the dtype; the integers stay
    assert bf16.blocks[0].mlp.up.weight.dtype == torch.int8 and bf16.blocks[0].mlp.up.scales.dtype == torch.bfloat16
    assert bf16(x).dtype == torch.bfloat16


def test_a_tied_output_projection_stays_the_float_embedding(trained_lms):
    model, _ = load_model(trained_lms["gpt"])  # the tiny preset ties lm_head to the embedding
    q = quantized(model, 8)
    assert isinstance(q.lm_head, nn.Linear) and q.lm_head.weight is q.embed.tok.weight


def test_bad_specs_are_one_line():
    for kw, phrase in ((dict(bits=3), "--bits is 3"), (dict(bits=4, group_size=48), "--group-size is 48"),
                       (dict(bits=8, group_size=32), "--group-size applies to int4")):
        with pytest.raises(UserError, match=phrase):
            QuantizationSpec(**kw)
    cfg = ModelConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=32, d_ff=96)
    with pytest.raises(UserError, match="--group-size 64 does not divide the 32 inputs of blocks.0.attn.wqkv"):
        quantize_model(build_model(cfg), QuantizationSpec(bits=4, group_size=64))


def test_an_lstm_or_an_ngram_is_refused_in_one_line():
    lstm = build_model(dataclasses.replace(get_preset("lstm-tiny"), vocab_size=64))
    with pytest.raises(UserError, match="this checkpoint is a lstm recurrent model") as e:
        quantize_model(lstm, QuantizationSpec())
    assert "\n" not in e.value.line()
    with pytest.raises(UserError, match="the n-gram baseline holds counts"):
        quantize_model(NGramLM(2, 64), QuantizationSpec())


def test_a_corrupt_quantised_checkpoint_is_one_line(trained_lms, tmp_path):
    model, cfg = load_model(trained_lms["gpt"])
    q = copy.deepcopy(model)
    out = save_quantized(tmp_path / "q", q, cfg, quantize_model(q, QuantizationSpec()), None)
    record = json.loads((out / QUANTIZATION).read_text())

    (out / QUANTIZATION).write_text("{not json")
    with pytest.raises(UserError, match="quantisation record is unreadable"):
        load_model(out)
    (out / QUANTIZATION).write_text(json.dumps({**record, "bits": 5}))
    with pytest.raises(UserError, match="quantisation record is invalid: --bits is 5"):
        load_model(out)
    (out / QUANTIZATION).write_text(json.dumps({**record, "layers": ["blocks.9.attn.wqkv"]}))
    with pytest.raises(UserError, match="names a layer 'blocks.9.attn.wqkv'"):
        load_model(out)
    (out / QUANTIZATION).write_text(json.dumps(record))

    state = load_file(str(out / WEIGHTS))  # integer weights replaced by floats of the same shape
    state["blocks.0.mlp.up.weight"] = state["blocks.0.mlp.up.weight"].float()
    save_file(state, str(out / WEIGHTS))
    with pytest.raises(UserError, match="blocks.0.mlp.up.weight is float32, not int8") as e:
        load_model(out, verify=False)
    assert e.value.where == str(out / WEIGHTS)
    with pytest.raises(UserError, match="checksum|sha256"):
        load_model(out)  # with verification, the changed file is caught first

    plain = save_model(tmp_path / "float", model, cfg)  # a float checkpoint under a quantisation record
    (plain / QUANTIZATION).write_text(json.dumps(record))
    with pytest.raises(UserError, match="weights do not match the model config"):
        load_model(plain)
