"""AdamW (decay / no-decay groups, fused on CUDA) and the learning-rate schedules."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from lmforge.models import DecoderLM, ModelConfig
from lmforge.train.config import OptimConfig
from lmforge.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_groups_split_matrices_and_embeddings_from_vectors():
    model = DecoderLM(ModelConfig(vocab_size=50, max_seq_len=16, n_layer=2, n_head=2, d_model=16))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = {id(p) for p in decay["params"]}
    assert id(model.embed.tok.weight) in ids and id(model.embed.pos.weight) in ids  # embeddings decay (nanoGPT)
    assert id(model.blocks[0].norm1.weight) not in ids and id(model.blocks[0].attn.wqkv.bias) not in ids
    # Every trainable parameter is in exactly one group; the tied output matrix is counted once.
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_frozen_parameters_are_left_out():
    model = DecoderLM(ModelConfig(vocab_size=50, max_seq_len=16, n_layer=1, n_head=2, d_model=16))
    model.embed.requires_grad_(False)
    params = [p for g in param_groups(model, 0.1) for p in g["params"]]
    assert all(p.requires_grad for p in params)


def factors(schedule: str, steps: int = 100, **kw) -> list[float]:
    cfg = OptimConfig(schedule=schedule, warmup_steps=kw.pop("warmup_steps", 10), **kw)
    return [lr_factor(s, steps, cfg) for s in range(steps)]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "step", "exponential", "constant"])
def test_every_schedule_warms_up_linearly_to_the_peak(schedule):
    f = factors(schedule)
    assert f[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert f[10] == pytest.approx(1.0)


def test_cosine_and_linear_decay_monotonically_to_min_ratio():
    for schedule in ("cosine", "linear"):
        f = factors(schedule, min_lr_ratio=0.1)
        tail = f[10:]
        assert all(a >= b for a, b in itertools.pairwise(tail))
        assert lr_factor(100, 100, OptimConfig(schedule=schedule, warmup_steps=10)) == pytest.approx(0.1)
    cos, lin = factors("cosine"), factors("linear")
    assert cos[55] == pytest.approx(0.55) and lin[55] == pytest.approx(0.55)  # both halfway at the midpoint
    assert cos[20] > lin[20] and cos[90] < lin[90]  # cosine stays high longer, then falls faster


def test_step_and_exponential_decay_by_gamma_per_step_size_with_floor():
    f = factors("step", step_size=20, gamma=0.5, min_lr_ratio=0.2)
    assert f[10] == f[29] == 1.0 and f[30] == 0.5 and f[50] == 0.25 and f[70] == 0.2 and f[99] == 0.2
    g = factors("exponential", step_size=20, gamma=0.5, min_lr_ratio=0.0)
    assert g[30] == pytest.approx(0.5) and g[20] == pytest.approx(math.sqrt(0.5))
    assert factors("constant")[10:] == [1.0] * 90


def test_scheduler_sets_lr_and_restores_from_state_dict():
    cfg = OptimConfig(lr=0.01, warmup_steps=5, schedule="cosine")
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg, 50)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.01 * lr_factor(s, 50, cfg) for s in range(20)])

    opt2 = build_optimizer(model, cfg, torch.device("cpu"))
    sched2 = build_scheduler(opt2, cfg, 50)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 20 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_adamw_is_fused_on_cuda_only():
    model = torch.nn.Linear(4, 4)
    # Built for a CUDA run from CPU parameters: torch accepts fused=True for CPU tensors too, so the flag shows.
    assert build_optimizer(model, OptimConfig(), torch.device("cuda")).defaults["fused"] is True
    assert not build_optimizer(model, OptimConfig(), torch.device("cpu")).defaults["fused"]


def test_optimizer_uses_the_config_and_decays_matrices_only():
    cfg = OptimConfig(lr=0.5, weight_decay=0.2, betas=(0.8, 0.9), eps=1e-6)
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert all(g["lr"] == 0.5 and g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in opt.param_groups)
    # Decoupled decay: with zero gradients the matrix shrinks by lr*wd, the bias does not move.
    model.weight.grad, model.bias.grad = torch.zeros_like(model.weight), torch.zeros_like(model.bias)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    opt.step()
    assert torch.allclose(model.weight, w * (1 - 0.5 * 0.2)) and torch.equal(model.bias, b)


def test_schedule_past_the_end_stays_at_the_floor():
    cfg = OptimConfig(schedule="cosine", warmup_steps=0, min_lr_ratio=0.1)
    assert lr_factor(150, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(0, 100, OptimConfig(schedule="linear", warmup_steps=0)) == 1.0


def test_wsd_is_flat_after_warmup_then_falls_linearly_to_the_floor_over_the_decay_fraction():
    f = factors("wsd", steps=100, decay_fraction=0.2, min_lr_ratio=0.0)
    assert f[10:80] == [1.0] * 70  # stable
    tail = f[80:]
    assert all(a > b for a, b in itertools.pairwise(tail))
    assert tail[0] == pytest.approx(1 - 1 / 20) and tail[-1] == pytest.approx(0.0, abs=1e-12)
    assert factors("wsd", steps=100, decay_fraction=0.5, min_lr_ratio=0.1)[-1] == pytest.approx(0.1)


def tiny_decoder(**kw) -> DecoderLM:
    return DecoderLM(ModelConfig(**{**dict(vocab_size=50, max_seq_len=16, n_layer=2, n_head=2, d_model=16), **kw}))


@pytest.mark.parametrize("tie", [True, False])
def test_muon_takes_the_blocks_matrices_and_adamw_everything_else_once(tie):
    from lmforge.train.optim import MuonWithAdamW

    model = tiny_decoder(tie_embeddings=tie)
    opt = build_optimizer(model, OptimConfig(name="muon", muon_lr=0.05, lr=0.003), torch.device("cpu"))
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt.muon, torch.optim.Muon)
    muon, decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon["params"]) == sorted(
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.wqkv", "attn.wo", "mlp.up", "mlp.down"))
    assert muon["lr"] == 0.05 and decay["lr"] == no_decay["lr"] == 0.003
    adamw_names = {names[id(p)] for p in decay["params"] + no_decay["params"]}
    assert "embed.tok.weight" in adamw_names and ("lm_head.weight" in adamw_names) is (not tie)
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))


def test_muon_update_of_a_matrix_is_orthogonalised():
    """From zero momentum the first update is NS5(grad): its singular values all near 1 (about 0.7-1.2 by
    design) where the gradient's spread tenfold, scaled by lr * sqrt(max(1, rows / cols))."""
    model = tiny_decoder()
    opt = build_optimizer(model, OptimConfig(name="muon", muon_lr=0.1), torch.device("cpu"))
    w = model.blocks[0].mlp.up.weight  # (64, 16)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 16))
    v, _ = torch.linalg.qr(torch.randn(16, 16))
    w.grad = u @ torch.diag(torch.logspace(0, -1, 16)) @ v.T  # singular values spread tenfold
    before = w.detach().clone()
    opt.step()
    update = (before - w.detach()) / (0.1 * 2.0)  # sqrt(64 / 16) = 2
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.5 and s.max() < 1.3, s


def test_muon_state_saves_and_loads_by_parameter_name_and_keeps_stepping_identically():
    from lmforge.parallel import load_optimizer_state, optimizer_state

    def run(steps: int, model: DecoderLM, opt: torch.optim.Optimizer) -> None:
        for s in range(steps):
            torch.manual_seed(s)
            model(torch.randint(0, 50, (2, 8))).logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    cfg = OptimConfig(name="muon")
    torch.manual_seed(0)
    a = tiny_decoder()
    b = tiny_decoder()
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(a, cfg, torch.device("cpu"))
    run(3, a, opt_a)
    saved = copy.deepcopy(optimizer_state(a, opt_a))  # as from a checkpoint: no tensor shared with opt_a
    assert "blocks.0.attn.wqkv.weight" in saved["state"]
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, cfg, torch.device("cpu"))
    load_optimizer_state(b, opt_b, saved)
    run(2, a, opt_a)
    run(2, b, opt_b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
