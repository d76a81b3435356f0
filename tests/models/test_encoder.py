from __future__ import annotations

import pytest
import torch

from lmforge.models import EncoderDecoderLM, EncoderModel, ModelConfig, get_preset


def bert(**kw) -> ModelConfig:
    base = get_preset("bert-tiny").to_dict() | dict(vocab_size=101, max_seq_len=32, n_layer=2, n_head=4, d_model=32)
    return ModelConfig(**(base | kw))


def t5(**kw) -> ModelConfig:
    base = get_preset("t5-tiny").to_dict() | dict(vocab_size=101, max_seq_len=32, n_layer=2, n_head=4, d_model=32)
    return ModelConfig(**(base | kw))


def test_bert_base_preset_has_bert_base_size():
    assert 109e6 < get_preset("bert-base").num_params() < 111e6


def test_encoder_is_bidirectional_and_heads_have_right_shapes():
    torch.manual_seed(0)
    model = EncoderModel(bert()).eval()
    idx = torch.randint(0, 101, (2, 10))
    h = model(idx)
    assert h.shape == (2, 10, 32)
    assert model.mlm_logits(h).shape == (2, 10, 101) and model.nsp_logits(h).shape == (2, 2)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 101
    assert not torch.allclose(model(changed)[:, 0], h[:, 0])  # the first token sees the last


@pytest.mark.parametrize("make", [bert, t5])
def test_padding_does_not_change_real_tokens(make):
    torch.manual_seed(0)
    cfg = make()
    model = (EncoderModel(cfg) if cfg.family == "bert" else EncoderDecoderLM(cfg)).eval()
    encode = model if cfg.family == "bert" else model.encode
    idx = torch.randint(1, 101, (1, 6))
    padded = torch.cat([idx, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1)
    out = encode(padded, attention_mask=mask) if cfg.family == "bert" else encode(padded, mask)
    assert torch.allclose(out[:, :6], encode(idx), atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(pos="sinusoidal", norm="layernorm", bias=True, attn_scale=None,
                                             scale_decoder_output=False, mlp="standard", activation="relu")])
def test_encoder_decoder_cached_decoding_matches_teacher_forcing(kw):
    torch.manual_seed(0)
    model = EncoderDecoderLM(t5(**kw)).eval()
    src, tgt = torch.randint(0, 101, (2, 9)), torch.randint(0, 101, (2, 7))
    src_mask = torch.ones(2, 9)
    src_mask[1, 6:] = 0
    full = model(src, tgt, src_mask)
    assert full.shape == (2, 7, 101)
    memory = model.encode(src, src_mask)
    model.setup_cache(batch_size=2)
    steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, input_pos=torch.tensor([t])) for t in range(7)]
    model.clear_cache()
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_decoder_is_causal_in_encoder_decoder():
    torch.manual_seed(0)
    model = EncoderDecoderLM(t5()).eval()
    src, tgt = torch.randint(0, 101, (1, 5)), torch.randint(0, 101, (1, 6))
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 101
    assert torch.allclose(model(src, tgt)[:, :4], model(src, changed)[:, :4], atol=1e-6)


def test_t5_initialisation_draws_each_tensor_as_transformers_t5_does():
    """init t5 (the t5 presets' default): the standard deviation of every tensor is that of a freshly built
    `T5ForConditionalGeneration` of the same shape (the weights converted by the one HF mechanism)."""
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.families import _t5_to_hf
    from lmforge.interop.hf import family_for_lmforge, from_hf_state, normalize_hf_state

    cfg = t5(vocab_size=512, d_model=64, d_ff=256, relative_buckets=32)
    assert cfg.init == "t5"
    torch.manual_seed(0)
    ours = EncoderDecoderLM(cfg).state_dict()
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**_t5_to_hf(cfg)))
    fam = family_for_lmforge(cfg)
    theirs = from_hf_state(fam, cfg, normalize_hf_state(fam, hf.state_dict()), "hf")
    q_rows = cfg.n_head * cfg.head_dim
    for name, t in theirs.items():
        parts = [(t[:q_rows], ours[name][:q_rows]), (t[q_rows:], ours[name][q_rows:])] if "wqkv" in name else [
            (t, ours[name])]
        for a, b in parts:
            assert b.std().item() == pytest.approx(a.std().item(), rel=0.15), name
    assert ours["embed.tok.weight"].std().item() == pytest.approx(1.0, rel=0.05)  # not GPT-2's 0.02
    queries = ours["encoder.blocks.0.attn.wqkv.weight"][:q_rows]
    assert queries.std().item() == pytest.approx((cfg.d_model * cfg.head_dim) ** -0.5, rel=0.05)


def test_t5_initialisation_is_for_encoder_decoders():
    from lmforge.errors import UserError

    with pytest.raises(UserError, match="init 't5'"):
        ModelConfig(**(get_preset("tiny").to_dict() | dict(init="t5")))
    assert EncoderDecoderLM(t5(init="normal")).embed.tok.weight.std().item() < 0.1  # GPT-2's N(0, init_std)
