"""Keeping a pruned model's zeros through a fine-tune: the pruned weights stay exactly zero under the optimizer the
trainer builds (AdamW with weight decay, clipping) while the kept ones train; one line for what cannot keep them."""

from __future__ import annotations

import pytest
import torch

from lmforge.compress.prune import PruneSpec, prunable_layers, prune_model
from lmforge.config import resolve
from lmforge.errors import UserError
from lmforge.finetune import FinetuneConfig, apply_method
from lmforge.finetune.masks import keep_zeros
from lmforge.models import ModelConfig, build_model
from lmforge.train import TrainConfig


def pruned_model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=64, max_seq_len=16, n_layer=2, n_head=2, d_model=32, init_std=0.1))
    prune_model(m, PruneSpec.parse("0.6"))
    return m


def test_pruned_weights_stay_exactly_zero_while_the_kept_ones_train():
    m = pruned_model()
    before = {name: layer.weight.detach().clone() for name, layer in prunable_layers(m).items()}
    line = apply_method(m, FinetuneConfig(keep_zeros=True))
    assert line is not None and "zero weights of" in line
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randint(0, 64, (4, 16))
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(m(x)[:, :-1].reshape(-1, 64), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    for name, layer in prunable_layers(m).items():
        w = layer.weight.detach()
        assert torch.equal(w == 0, before[name] == 0), name  # exactly the pruned weights are zero
        kept = before[name] != 0
        assert (w[kept] != before[name][kept]).float().mean() > 0.9, name  # the kept ones moved


def test_without_the_hook_the_zeros_move():  # the test above would catch a hook that does nothing
    m = pruned_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    x = torch.randint(0, 64, (4, 16))
    m(x).logsumexp(-1).mean().backward()
    opt.step()
    layer = next(iter(prunable_layers(m).values()))
    assert (layer.weight == 0).float().mean() < 0.1


def test_a_dense_model_has_nothing_to_keep():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=32))
    kept = keep_zeros(m)
    assert (kept.layers, kept.zeros) == (0, 0)


def test_what_cannot_keep_the_zeros_is_one_line(tiny_data):
    with pytest.raises(UserError, match="a LoRA update is dense"):
        FinetuneConfig(method="lora", keep_zeros=True)
    with pytest.raises(UserError, match="Muon's orthogonalised update moves every weight"):
        resolve(TrainConfig, data=str(tiny_data), finetune__keep_zeros=True, optim__name="muon")
    with pytest.raises(UserError, match="before FSDP replaces them"):
        resolve(TrainConfig, data=str(tiny_data), finetune__keep_zeros=True, parallel__strategy="fsdp")
