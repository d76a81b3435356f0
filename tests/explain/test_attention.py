from __future__ import annotations

import pytest
import torch

from lmforge.errors import UserError
from lmforge.explain.attention import (
    attention_weights,
    capture_attention,
    plot_attention,
    run_for_attention,
    select,
    stack_layers,
    token_label,
)
from lmforge.infer.generate import GenerationConfig, generate_ids
from lmforge.models import ModelConfig, build_model
from lmforge.models.blocks import Attention

# A large init scale makes attention peaked, so a wrong eager path (a missing bias, rope or mask) shows up as a
# clear mismatch with SDPA rather than hiding in near-uniform weights.
BASE = dict(vocab_size=64, max_seq_len=32, n_layer=2, d_model=32, init_std=0.4)
FAMILIES = {
    "gpt": dict(family="gpt", n_head=4),
    "llama": dict(family="llama", n_head=4, n_kv_head=2, pos="rope", norm="rmsnorm", mlp="gated", bias=False),
    "bert": dict(family="bert", n_head=2, norm_position="post", type_vocab_size=2, embed_norm=True),
    "t5": dict(family="t5", n_head=4, pos="relative", norm="rmsnorm", mlp="gated", attn_scale=1.0, bias=False,
               relative_buckets=8, relative_max_distance=16, n_decoder_layer=3),
}


def model_of(family: str):
    torch.manual_seed(0)
    cfg = ModelConfig(**BASE, **FAMILIES[family])
    return build_model(cfg).eval(), cfg


def forward(model, family: str) -> None:
    """One forward pass exercising the family's masks: padding for bert and t5, causal for decoders."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 64, (2, 9), generator=g)
    if family in ("gpt", "llama"):
        model(ids)
    elif family == "bert":
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1, 6:] = False  # a padded row: boolean key mask
        model(ids, attention_mask=mask, token_types=(torch.arange(9) >= 4).long().expand(2, -1))
    else:
        src_mask = torch.ones(2, 9, dtype=torch.bool)
        src_mask[0, 7:] = False  # cross-attention sees a boolean mask, self-attention a float bias
        model(ids, torch.randint(5, 64, (2, 5), generator=g), src_mask)


def maps_and_outputs(model, run):
    """Run `run()` with attention captured and every Attention module's real output recorded, in call order."""
    outputs = []
    handles = [m.register_forward_hook(lambda mod, args, out: outputs.append((mod, out)))
               for m in model.modules() if isinstance(m, Attention)]
    try:
        with torch.no_grad(), capture_attention(model, keep_values=True) as maps:
            run()
    finally:
        for h in handles:
            h.remove()
    assert len(maps) == len(outputs) > 0
    return list(zip(maps, outputs))


def reproduce(module: Attention, probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The module's output from the captured weights: wo(concat_heads(probs @ v))."""
    B, H, T, _ = probs.shape
    return module.wo((probs @ values).transpose(1, 2).reshape(B, T, H * module.head_dim))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_captured_weights_applied_to_values_give_the_modules_output(family):
    model, cfg = model_of(family)
    pairs = maps_and_outputs(model, lambda: forward(model, family))
    stacks = {m.stack for m, _ in pairs}
    assert stacks == set(stack_layers(cfg))
    for m, (module, out) in pairs:
        torch.testing.assert_close(reproduce(module, m.probs, m.values), out, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.probs.sum(-1), torch.ones(m.probs.shape[:-1]))
        T, S = m.probs.shape[-2:]
        if module.causal:
            assert not m.probs[..., torch.ones(T, S, dtype=torch.bool).triu(1)].any()
    assert max(float(m.probs.amax()) for m, _ in pairs) > 0.5  # peaked: the check above has teeth


def test_maps_are_named_by_stack_and_layer():
    model, cfg = model_of("t5")
    maps = run_for_attention(model, torch.tensor([[5, 6, 7, 8]]), decoder_start=0)
    names = [(m.stack, m.layer) for m in maps]
    assert names == [("encoder", 0), ("encoder", 1)] + [(s, i) for i in range(3) for s in ("decoder",
                                                                                          "decoder-cross")]
    assert maps[0].name == "encoder.blocks.0.attn" and maps[-1].name == "decoder.blocks.2.cross_attn"
    assert [m.probs.shape for m in maps[-2:]] == [(1, 4, 1, 1), (1, 4, 1, 4)]
    only = run_for_attention(model, torch.tensor([[5, 6, 7, 8]]), where=lambda stack, layer: layer == 2)
    assert [(m.stack, m.layer) for m in only] == [("decoder", 2), ("decoder-cross", 2)]


def module_outputs(model, run) -> list[torch.Tensor]:
    """Every Attention module's output during `run()`, in call order."""
    outputs = []
    handles = [m.register_forward_hook(lambda mod, args, out: outputs.append(out))
               for m in model.modules() if isinstance(m, Attention)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return outputs


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_eager_path_gives_the_sdpa_paths_output(family):
    """Capturing changes nothing a module computes: every call of the SDPA run, replayed with capture on, gives
    the same output (RoPE and GQA for llama, a padding mask for bert, relative bias and cross-attention for t5)."""
    model, _ = model_of(family)
    calls = []  # (module, args, kwargs, output) of each Attention call on the SDPA path
    handles = [m.register_forward_hook(lambda *call: calls.append(call), with_kwargs=True)
               for m in model.modules() if isinstance(m, Attention)]
    try:
        with torch.no_grad():
            forward(model, family)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad(), capture_attention(model) as maps:
        for module, args, kwargs, want in calls:
            torch.testing.assert_close(module(*args, **kwargs), want, atol=1e-5, rtol=1e-5)
    assert len(maps) == len(calls) > 0
    if family == "t5":
        assert {m.stack for m in maps} == {"encoder", "decoder", "decoder-cross"}
        assert any(kw["mask"] is not None and kw["mask"].is_floating_point() for _, _, kw, _ in calls)
    assert all(m.on_weights is None for m in model.modules() if isinstance(m, Attention))


def test_the_eager_path_gives_the_sdpa_paths_output_in_cached_decoding():
    model, _ = model_of("llama")

    def run():
        return generate_ids(model, [[5, 6, 7], [9]], GenerationConfig(max_new_tokens=4, temperature=0.0))

    fast = module_outputs(model, run)
    with capture_attention(model):
        eager = module_outputs(model, run)
    assert len(eager) == len(fast) == 2 * 4
    for got, want in zip(eager, fast):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_eager_path_trains_like_sdpa():
    """Gradients flow through the captured path as through SDPA (capture inside a training step is harmless)."""
    model, _ = model_of("llama")
    ids = torch.randint(5, 64, (2, 9), generator=torch.Generator().manual_seed(4))

    def grads():
        model.zero_grad()
        model(ids).float().pow(2).mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast = grads()
    with capture_attention(model) as maps:
        eager = grads()
    assert maps and all(not m.probs.requires_grad for m in maps)
    for got, want in zip(eager, fast):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_call_without_rope_would_not_match():
    """The reproduction test can fail: weights from a call without RoPE do not give the module's output."""
    model, _ = model_of("llama")
    seen = {}

    def hook(module, args, kwargs, out):
        seen["x"], seen["kw"], seen["out"] = args[0], kwargs, out

    handle = model.blocks[1].attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(torch.randint(5, 64, (1, 12), generator=torch.Generator().manual_seed(3)))
    handle.remove()
    attn = model.blocks[1].attn
    good = reproduce(attn, *attention_weights(attn, seen["x"], rope=seen["kw"]["rope"]))
    bad = reproduce(attn, *attention_weights(attn, seen["x"], rope=None))
    torch.testing.assert_close(good, seen["out"], atol=1e-5, rtol=1e-4)
    assert (bad - seen["out"]).abs().max() > 1e-3


def test_kv_cached_decoding_steps_are_captured_exactly():
    model, _ = model_of("llama")
    pairs = maps_and_outputs(model, lambda: generate_ids(model, [[5, 6, 7], [9]], GenerationConfig(
        max_new_tokens=4, temperature=0.0)))
    assert len(pairs) == 2 * 4  # prefill + 3 decode steps, two layers
    for m, (module, out) in pairs:
        torch.testing.assert_close(reproduce(module, m.probs, m.values), out, atol=1e-5, rtol=1e-4)


def test_capture_leaves_the_modules_as_they_were():
    model, _ = model_of("gpt")
    with capture_attention(model) as maps:
        model(torch.tensor([[5, 6]]))
    model(torch.tensor([[5, 6]]))
    assert len(maps) == 2
    assert all(not m._forward_hooks for m in model.modules())
    assert all(m.on_weights is None for m in model.modules() if isinstance(m, Attention))


def test_capture_can_be_limited_to_some_modules():
    model, _ = model_of("gpt")
    with capture_attention(model, where=lambda stack, layer: layer == 1) as maps:
        model(torch.tensor([[5, 6, 7]]))
    assert [m.name for m in maps] == ["blocks.1.attn"]
    assert model.blocks[0].attn.on_weights is None  # the other layer stayed on SDPA


def test_select_counts_from_the_end_and_rejects_out_of_range():
    assert select(4, [], "layer") == [0, 1, 2, 3]
    assert select(4, [-1, 0, 3], "layer") == [3, 0]
    with pytest.raises(UserError, match="layer 4 does not exist: the model has 4 layers"):
        select(4, [4], "layer")


def test_token_labels_show_whitespace_and_stay_short():
    assert token_label(" cat") == " cat"
    assert token_label("  ") == "\u2423\u2423"
    assert token_label("a\nb") == "a\u21b5b"
    assert token_label("x" * 40) == "x" * 11 + "\u2026"
    assert token_label("日", has_glyph=lambda c: c.isascii()) == "U+65E5"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_writes_one_grid_of_the_selected_layers_and_heads(tmp_path):
    pytest.importorskip("matplotlib")
    model, _ = model_of("gpt")
    maps = run_for_attention(model, torch.arange(5, 17)[None])
    labels = [f"token number {i}" for i in range(12)]  # long labels are shortened
    full = plot_attention(maps, labels, labels, tmp_path / "full.png")
    one = plot_attention(maps[-1:], labels, labels, tmp_path / "one.png", heads=[-1])
    (w_full, h_full), (w_one, h_one) = png_size(full), png_size(one)
    assert w_full > 2 * w_one and h_full > 1.2 * h_one  # 4 heads x 2 layers against 1 x 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.png", "one.png"]  # no temporary files left
    with pytest.raises(UserError, match="head 7 does not exist"):
        plot_attention(maps, labels, labels, tmp_path / "bad.png", heads=[7])
    assert not (tmp_path / "bad.png").exists()
