"""LoRA from outside the model: targets by pattern (q, k, v inside the fused projection), only adapters train,
merged logits equal the adapted model's, and bad targets or ranks are one line each."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.errors import UserError
from lmforge.finetune.lora import LoRALinear, adapter_state, apply_lora, has_lora, merge_lora, select
from lmforge.models import build_model, get_preset


def tiny(preset: str = "tiny", **kw):
    cfg = dataclasses.replace(get_preset(preset), d_model=64, n_layer=2, n_head=4, vocab_size=300, **kw)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def perturb(model) -> None:
    """Non-zero B matrices: a freshly added adapter is exactly zero (training starts from the base)."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            for p in m.lora_B.values():
                torch.nn.init.normal_(p, std=0.05)


def test_a_pattern_targets_one_part_of_the_fused_projection():
    model = tiny()
    names = [t.name for t in select(model, ["q"])]
    assert names == ["blocks.0.attn.q", "blocks.1.attn.q"]
    assert [t.name for t in select(model, ["blocks.1.attn.[kv]"])] == ["blocks.1.attn.k", "blocks.1.attn.v"]
    apply_lora(model, ["v"], rank=4, alpha=8)
    x = torch.randint(0, 300, (2, 12))
    base = model(x)
    perturb(model)
    wqkv = model.blocks[0].attn.wqkv
    q_dim = model.cfg.n_head * model.cfg.head_dim  # q | k | v, as wide each (no grouped-query heads here)
    # Only the v rows of the fused projection change: the q and k outputs are the base layer's.
    h = torch.randn(3, 64)
    delta = wqkv(h) - torch.nn.functional.linear(h, wqkv.weight, wqkv.bias)
    assert delta[:, :2 * q_dim].abs().max() == 0 and delta[:, 2 * q_dim:].abs().max() > 0
    assert (model(x) - base).abs().max() > 0


def test_grouped_query_parts_have_their_own_sizes():
    model = tiny("llama-tiny", n_kv_head=2)
    q, kv = 4 * model.cfg.head_dim, 2 * model.cfg.head_dim
    parts = {t.name.split(".")[-1]: t.rows for t in select(model, ["blocks.0.attn.*"]) if t.name[-1] in "qkv"}
    assert parts == {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}


def test_only_adapters_train_and_are_the_adapter_state():
    model = tiny()
    apply_lora(model, ["q", "v", "attn.wo"], rank=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    state = adapter_state(model)
    assert set(state) == {f"blocks.{i}.attn.{t}.lora_{ab}.weight" for i in (0, 1) for t in ("q", "v", "wo")
                          for ab in "AB"}
    assert state["blocks.0.attn.q.lora_A.weight"].shape == (4, 64)
    assert state["blocks.0.attn.q.lora_B.weight"].shape == (model.cfg.n_head * model.cfg.head_dim, 4)
    # The base weights keep their names: a base checkpoint loads into the adapted model as it is.
    assert "blocks.0.attn.wqkv.weight" in model.state_dict()


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny", "bert-tiny", "t5-tiny"])
def test_merged_logits_equal_the_adapted_models(preset):
    model = tiny(preset)
    apply_lora(model, ["*"], rank=2, alpha=16)  # every linear layer and part (BERT's NSP head has 2 outputs)
    perturb(model)
    x = torch.randint(5, 300, (2, 10))
    args = (x, x) if preset.startswith("t5") else (x,)
    with torch.no_grad():
        adapted = model(*args)
        assert merge_lora(model) > 0
        merged = model(*args)
    assert not has_lora(model)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_a_gradient_step_moves_only_the_adapters():
    model = tiny().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, ["q", "v"], rank=2, alpha=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(torch.randint(0, 300, (2, 8))).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if ".lora_" not in n:
            assert torch.equal(p, before[n]), n


def test_a_pattern_matching_nothing_is_one_line():
    with pytest.raises(UserError, match="LoRA target pattern 'c_attn' matches no module") as e:
        apply_lora(tiny(), ["c_attn"], rank=4, alpha=8)
    assert "q" in e.value.fix and "\n" not in e.value.line()


def test_a_rank_larger_than_the_layer_is_one_line():
    with pytest.raises(UserError, match=r"LoRA rank 65 is larger than blocks.0.attn.q allows .*at most 64"):
        apply_lora(tiny(), ["q"], rank=65, alpha=8)
