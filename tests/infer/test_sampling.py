from __future__ import annotations

import torch

from lmforge.infer.sampling import SamplingConfig, apply_repetition_penalty, filter_logits, sample


def test_top_k_keeps_k_best():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_nucleus_and_always_the_best():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.75))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.1)).tolist() == [[True, False, False, False]]


def test_min_p_scales_with_the_best_token():
    probs = torch.tensor([[0.6, 0.3, 0.07, 0.03]])
    assert torch.isfinite(filter_logits(probs.log(), min_p=0.1)).tolist() == [[True, True, True, False]]


def test_repetition_penalty_lowers_seen_tokens_both_signs():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0]]


def test_greedy_and_seeded_sampling():
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits, SamplingConfig(temperature=0.0)), logits.argmax(-1))
    cfg = SamplingConfig(temperature=1.0)
    a = sample(logits, cfg, generator=torch.Generator().manual_seed(1))
    b = sample(logits, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_sample_frequencies_follow_the_distribution():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    logits = probs.log().expand(20000, 4)
    draws = sample(logits, SamplingConfig(temperature=1.0), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert torch.allclose(freq, probs, atol=0.015)
