from __future__ import annotations

import pytest
import torch

from lmforge.errors import UserError
from lmforge.models import PRESETS, DecoderLM, ModelConfig, get_preset

VARIANTS = {
    "gpt": dict(family="gpt"),
    "llama-gqa": dict(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope", bias=False,
                      tie_embeddings=False, n_kv_head=2),
    "sinusoidal-post-norm": dict(pos="sinusoidal", norm_position="post"),
    # The fast training recipe's options together: QK-norm before RoPE, ReLU², untied head, logit soft-cap.
    "recipe-fast": dict(norm="rmsnorm", pos="rope", bias=False, activation="relu2", qk_norm=True,
                        tie_embeddings=False, logit_softcap=5.0),
}


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, max_seq_len=32, n_layer=2, n_head=4, d_model=32)
    return ModelConfig(**{**base, **kw})


def decoder_param_formula(cfg: ModelConfig) -> int:
    """Parameter count of a decoder written out by hand, independent of the module code."""
    d, f, L, kv, b = cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.n_kv_head * cfg.head_dim, int(cfg.bias)
    norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    attn = d * (d + 2 * kv) + b * (d + 2 * kv) + d * d + b * d
    gated = cfg.mlp == "gated"
    mlp = (3 if gated else 2) * d * f + b * (f * (2 if gated else 1) + d)
    n = L * (attn + mlp + 2 * norm) + norm + cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return n + (cfg.max_seq_len * d if cfg.pos == "learned" else 0)


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if get_preset(n).family in ("gpt", "llama")))
def test_decoder_param_count_matches_formula(name):
    cfg = get_preset(name)
    assert cfg.num_params() == decoder_param_formula(cfg)
    if cfg.num_params() < 30e6:
        assert sum(p.numel() for p in DecoderLM(cfg).parameters()) == cfg.num_params()


def test_gpt2_124m_preset_has_gpt2_size():
    assert 123e6 < get_preset("gpt2-124m").num_params() < 125.5e6


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_shapes_and_causality(variant):
    torch.manual_seed(0)
    model = DecoderLM(tiny(**VARIANTS[variant])).eval()
    idx = torch.randint(0, 97, (2, 10))
    logits = model(idx)
    assert logits.shape == (2, 10, 97)
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 97
    # Changing future tokens must not change earlier logits.
    assert torch.allclose(model(changed)[:, :6], logits[:, :6], atol=1e-6)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_decoding_matches_full_recompute(variant):
    torch.manual_seed(0)
    model = DecoderLM(tiny(**VARIANTS[variant])).eval()
    idx = torch.randint(0, 97, (3, 12))
    full = model(idx)
    model.setup_cache(batch_size=3)
    prefill = model(idx[:, :5], input_pos=torch.arange(5))
    steps = [model(idx[:, t : t + 1], input_pos=torch.tensor([t])) for t in range(5, 12)]
    cached = torch.cat([prefill, *steps], dim=1)
    assert torch.allclose(cached, full, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_left_padded_rows_match_unpadded(variant):
    torch.manual_seed(0)
    model = DecoderLM(tiny(**VARIANTS[variant])).eval()
    short = torch.randint(0, 97, (1, 4))
    pad = 3
    idx = torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1)
    key_mask = torch.zeros(1, 32, dtype=torch.bool)
    key_mask[:, pad:] = True
    positions = (torch.arange(idx.shape[1]) - pad).clamp(min=0)[None]
    model.setup_cache(batch_size=1)
    padded = model(idx, input_pos=torch.arange(idx.shape[1]), positions=positions, key_mask=key_mask)
    assert torch.isfinite(padded).all()
    model.clear_cache()
    assert torch.allclose(padded[:, pad:], model(short), atol=1e-5)


def test_invalid_config_is_one_clear_error():
    with pytest.raises(UserError, match="not divisible by n_head"):
        tiny(d_model=30)


def test_flops_estimate_is_about_6n_per_token():
    cfg = get_preset("gpt2-124m")
    assert 6 * cfg.num_params() * 0.95 < cfg.flops_per_token(1024) < 6 * cfg.num_params() * 1.5


def test_save_and_load_round_trip_and_bad_checkpoints(tmp_path):
    from lmforge.checkpoints import load_model
    from lmforge.models.io import save_model

    torch.manual_seed(0)
    cfg = tiny()
    model = DecoderLM(cfg).eval()
    save_model(tmp_path / "ckpt", model, cfg)
    loaded, cfg2 = load_model(tmp_path / "ckpt")
    idx = torch.randint(0, 97, (2, 8))
    assert cfg2 == cfg and torch.equal(loaded(idx), model(idx))

    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="unreadable or truncated"):
        load_model(tmp_path / "ckpt")

    save_model(tmp_path / "other", DecoderLM(tiny(**VARIANTS["llama-gqa"])), tiny(**VARIANTS["llama-gqa"]))
    (tmp_path / "other" / "config.json").write_text((tmp_path / "ckpt" / "config.json").read_text())
    with pytest.raises(UserError, match="do not match the model config"):
        load_model(tmp_path / "other")


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_packed_documents_see_only_themselves(pos):
    """`segments` + per-document `positions`: each packed document's logits are those it has alone."""
    cfg = tiny(vocab_size=100, **(VARIANTS["llama-gqa"] if pos == "rope" else VARIANTS["gpt"]))
    torch.manual_seed(0)
    model = DecoderLM(cfg).eval()
    a, b = torch.randint(0, 100, (1, 7)), torch.randint(0, 100, (1, 5))
    packed = torch.cat([a, b], dim=1)
    segments = torch.tensor([[1] * 7 + [2] * 5])
    positions = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        out = model(packed, positions=positions, segments=segments)
        torch.testing.assert_close(out[:, :7], model(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[:, 7:], model(b), atol=1e-5, rtol=0)


def test_logit_softcap_bounds_the_logits_and_is_tanh_of_the_uncapped_ones():
    torch.manual_seed(0)
    capped = DecoderLM(tiny(init_std=0.5, logit_softcap=3.0)).eval()
    plain = DecoderLM(tiny(init_std=0.5))
    plain.load_state_dict(capped.state_dict())
    idx = torch.randint(0, 97, (2, 8))
    raw, out = plain.eval()(idx), capped(idx)
    assert raw.abs().max() > 3.0  # the cap has something to do
    assert out.abs().max() <= 3.0
    assert torch.allclose(out, 3.0 * torch.tanh(raw / 3.0), atol=1e-5)


def test_qk_norm_adds_one_learned_scale_per_head_channel_and_changes_attention():
    cfg = tiny(qk_norm=True)
    model = DecoderLM(cfg)
    names = [n for n, _ in model.named_parameters() if "q_norm" in n or "k_norm" in n]
    assert len(names) == 2 * cfg.n_layer
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in DecoderLM(tiny()).parameters()) + 2 * cfg.n_layer * cfg.head_dim
    attn = model.blocks[0].attn
    q = torch.randn(2, cfg.n_head, 5, cfg.head_dim) * 7
    assert torch.allclose(attn.q_norm(q).pow(2).mean(-1), torch.ones(2, cfg.n_head, 5), atol=1e-3)


def test_relu2_is_relu_squared():
    from lmforge.models.blocks import ACTIVATIONS

    x = torch.linspace(-3, 3, 13)
    assert torch.equal(ACTIVATIONS["relu2"](x), torch.relu(x) ** 2)


def test_recipe_options_are_refused_on_families_they_do_not_apply_to():
    with pytest.raises(UserError, match="decoder options"):
        ModelConfig(family="bert", qk_norm=True)
