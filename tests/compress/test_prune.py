"""Pruning: which weights magnitude and 2:4 pruning zero, what they leave alone, and one line for a bad level."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from lmforge.compress.prune import PruneSpec, prunable_layers, prune_model, sparsity
from lmforge.errors import UserError
from lmforge.models import ModelConfig, build_model


def model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**dict(vocab_size=64, max_seq_len=16, n_layer=2, n_head=2, d_model=32,
                                             init_std=0.1), **kw})).eval()


def weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight.detach() for name, layer in prunable_layers(m).items()}


def test_global_magnitude_zeroes_the_smallest_weights_of_all_layers_together():
    m = model()
    before = weights(copy.deepcopy(m))
    masks = prune_model(m, PruneSpec.parse("0.5"))
    assert sparsity(m) == pytest.approx(0.5, abs=1e-3)
    kept = torch.cat([before[n][masks[n]].abs() for n in masks])
    pruned = torch.cat([before[n][~masks[n]].abs() for n in masks])
    assert kept.min() >= pruned.max()  # one threshold over every layer
    for name, w in weights(m).items():
        assert torch.equal(w[masks[name]], before[name][masks[name]]) and (w[~masks[name]] == 0).all()
    per_layer = {n: 1 - float(mask.float().mean()) for n, mask in masks.items()}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.02  # layers differ under one threshold


def test_per_layer_magnitude_prunes_the_same_fraction_of_each_layer():
    m = model()
    prune_model(m, PruneSpec.parse("0.3", "layer"))
    for w in weights(m).values():
        assert float((w == 0).float().mean()) == pytest.approx(0.3, abs=1 / w.shape[1])


def test_two_of_four_keeps_the_two_largest_of_every_four_inputs():
    m = model()
    before = weights(copy.deepcopy(m))
    prune_model(m, PruneSpec.parse("2:4"))
    assert sparsity(m) == 0.5
    for name, w in weights(m).items():
        groups, orig = w.reshape(w.shape[0], -1, 4), before[name].reshape(w.shape[0], -1, 4).abs()
        assert ((groups != 0).sum(-1) == 2).all()
        kept_min = orig.masked_fill(groups == 0, float("inf")).amin(-1)
        pruned_max = orig.masked_fill(groups != 0, -1.0).amax(-1)
        assert (kept_min >= pruned_max).all()


def test_zero_sparsity_changes_nothing_and_the_tied_embedding_is_never_pruned():
    m = model()
    embedding = m.embed.tok.weight.detach().clone()
    before = weights(copy.deepcopy(m))
    prune_model(m, PruneSpec.parse("0"))
    assert all(torch.equal(weights(m)[n], w) for n, w in before.items())
    prune_model(m, PruneSpec.parse("0.7"))
    assert "lm_head" not in prunable_layers(m) and torch.equal(m.embed.tok.weight, embedding)
    assert not any(name.endswith("_orig") for name, _ in m.named_parameters())  # made permanent


def test_the_masks_are_the_zeros_pruning_left():
    m = model()
    masks = prune_model(m, PruneSpec.parse("0.5"))
    for name, w in weights(m).items():
        assert torch.equal(masks[name], w != 0)
    assert sparsity(m) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("level, phrase", [("1", "outside [0, 1)"), ("1.5", "outside [0, 1)"),
                                           ("-0.1", "outside [0, 1)"), ("half", "not a number or 2:4"),
                                           ("3:4", "not a number or 2:4")])
def test_a_bad_level_is_one_line(level, phrase):
    with pytest.raises(UserError, match=re.escape(phrase)) as e:
        PruneSpec.parse(level)
    assert "\n" not in e.value.line()


def test_a_bad_scope_and_an_uneven_width_are_one_line():
    with pytest.raises(UserError, match="pruning scope 'rows' is unknown"):
        PruneSpec.parse("0.5", "rows")
    with pytest.raises(UserError, match="2:4 pruning needs input widths divisible by 4"):
        prune_model(model(d_model=30, n_head=2, d_ff=64), PruneSpec.parse("2:4"))
