"""The training loop on a real prepared directory: outputs, schedule, accumulation, clipping, evaluation, early
stopping, non-finite losses, precision and compilation."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoints import load_model
from lmforge.config import load_yaml, resolve
from lmforge.data.loaders import SequentialLoader, TokenDataset
from lmforge.errors import UserError
from lmforge.runtime import Runtime
from lmforge.train import OptimConfig, TrainConfig, TrainResult, train
from lmforge.train import runtime as runtime_mod
from lmforge.train.checkpoint import load_train_state
from lmforge.train.objectives import OBJECTIVES, Output, register
from lmforge.train.objectives.causal_lm import CausalLM
from lmforge.train.optim import build_optimizer, lr_factor
from lmforge.train.runtime import parallelize, setup_runtime
from lmforge.train.trainer import NonFiniteLoss, _train_step

# A model of a few thousand parameters: every run below takes well under a second of compute.
TINY = {"model__n_layer": 1, "model__d_model": 32, "model__n_head": 2, "seq_len": 32, "batch_size": 4,
        "eval_batches": 2, "tensorboard": False, "device": "cpu"}


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    return resolve(TrainConfig, data=str(data), out=str(out), **{**TINY, **overrides})


def run(data: Path, out: Path, **overrides) -> TrainResult:
    return train(config(data, out, **overrides))


def records(out: Path, event: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture
def temp_objective():
    """Register test objectives for one test only."""
    added = []

    def add(name, cls):
        register(name)(cls)
        added.append(name)

    yield add
    for name in added:
        OBJECTIVES.pop(name, None)


def test_run_writes_checkpoints_metrics_tensorboard_plot_and_config(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = config(tiny_data, out, steps=6, eval_every=3, checkpoint_every=2, keep_last=2, log_every=2,
                 early_stop_patience=2, tensorboard=True, optim__lr=1e-2, optim__warmup_steps=1)
    r = train(cfg)
    assert r.step == 6 and r.stopped == "completed" and r.skipped_steps == 0
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "latest", "step_000004", "step_000006"]
    assert r.checkpoint == ckpts / "step_000006" and (ckpts / "latest").read_text().strip() == "step_000006"
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_state.pt"} <= {
        p.name for p in r.checkpoint.iterdir()}
    state = load_train_state(r.checkpoint)
    assert state["progress"]["step"] == 6 and state["progress"]["tokens"] == 6 * 4 * 32
    assert {"optimizer", "scheduler", "rng", "data", "train_config"} <= set(state)
    _, model_cfg = load_model(r.checkpoint)  # a step checkpoint is an ordinary model checkpoint
    assert model_cfg == cfg.model and model_cfg.vocab_size == TokenDataset.open(tiny_data).vocab_size

    train_recs, evals = records(out, "train"), records(out, "eval")
    assert [t["step"] for t in train_recs] == [2, 4, 6] and [e["step"] for e in evals] == [3, 6]
    for t in train_recs:
        assert t["tokens_per_s"] > 0 and t["mfu"] is None and t["eta_s"] >= 0 and t["grad_norm"] > 0
        # The lr logged at step s is the one its update used: warmup, then cosine down to 10%.
        assert t["lr"] == pytest.approx(1e-2 * lr_factor(t["step"] - 1, 6, cfg.optim))
    bytes_per_token = TokenDataset.open(tiny_data, "val").bytes_per_token
    for e in evals:
        assert e["val_ppl"] == pytest.approx(math.exp(e["val_loss"]))
        assert e["val_bpb"] == pytest.approx(e["val_loss"] / math.log(2) / bytes_per_token)
        assert e["val_tokens"] == 2 * 4 * 32  # eval_batches x batch x seq_len
    # It learns: val loss falls below the uniform guess and from one evaluation to the next; best/ is the lowest.
    assert evals[1]["val_loss"] < evals[0]["val_loss"] < math.log(cfg.model.vocab_size)
    assert r.best_step == 6 and r.best_val_loss == pytest.approx(evals[1]["val_loss"])
    assert json.loads((ckpts / "best" / "metrics.json").read_text())["step"] == 6
    assert r.val["val_loss"] == evals[1]["val_loss"] and r.train_loss == train_recs[-1]["loss"]

    assert r.plot == out / "loss_curve.png" and r.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.history["train"] == [(t["step"], t["loss"]) for t in train_recs]
    assert r.history["val"] == [(e["step"], e["val_loss"]) for e in evals]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(r.tensorboard))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    assert [e.value for e in acc.Scalars("eval/val_loss")] == pytest.approx([e["val_loss"] for e in evals])

    # The effective config reproduces the run (resume off, everything resolved).
    saved = load_yaml(out / "config.yaml")
    assert saved["resume"] is False and saved["steps"] == 6 and saved["model"]["n_layer"] == 1
    assert saved["model"]["vocab_size"] == cfg.model.vocab_size and saved["optim"]["warmup_steps"] == 1


class StreamLM(CausalLM):
    """Causal LM whose training stream is consecutive windows in order: a batch of 2b sequences is exactly the
    next two batches of b, so accumulation can be compared with a larger batch on the very same data."""

    def train_batches(self):
        loader = SequentialLoader(self.train_ds, self.cfg.batch_size, self.cfg.seq_len, drop_last=True)
        return itertools.chain.from_iterable(itertools.repeat(loader))


def test_grad_accum_2_of_b_is_the_update_of_one_batch_of_2b(tiny_data, tmp_path, temp_objective):
    temp_objective("test_stream_lm", StreamLM)
    common = {"objective": "test_stream_lm", "steps": 4, "log_every": 1, "eval_every": 0, "optim__warmup_steps": 0}
    big = run(tiny_data, tmp_path / "big", batch_size=8, grad_accum=1, **common)
    acc = run(tiny_data, tmp_path / "acc", batch_size=4, grad_accum=2, **common)
    small = run(tiny_data, tmp_path / "small", batch_size=4, grad_accum=1, **common)
    b, a, s = (records(tmp_path / d, "train") for d in ("big", "acc", "small"))
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-6, abs=0)
    # The gradient norm is scale-sensitive (AdamW's update is not): it pins the 1/grad_accum scaling.
    assert [r["grad_norm"] for r in a] == pytest.approx([r["grad_norm"] for r in b], rel=1e-5, abs=0)
    assert a[-1]["tokens"] == b[-1]["tokens"] == 4 * 8 * 32
    wa, wb, ws = (load_file(str(r.checkpoint / "model.safetensors")) for r in (acc, big, small))
    assert all(torch.allclose(wa[k], wb[k], rtol=0, atol=2e-6) for k in wb)
    # ... and the comparison can fail: half the batch is a different update.
    assert max((ws[k] - wb[k]).abs().max().item() for k in wb) > 1e-4


class Quadratic(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))


class QuadraticObjective:
    """loss = sum(w * x): the gradient is x, so its norm is known exactly."""

    def forward(self, model, batch):
        loss = (model.w * batch).sum()
        return Output(loss=loss, sums={"loss": loss.detach(), "count": 1})


@pytest.mark.parametrize(("clip", "expected"), [(0.5, 0.5), (0.0, 10.0), (100.0, 10.0)])
def test_gradient_clipping_scales_the_global_norm_before_the_update(clip, expected):
    model, rt = Quadratic(), setup_runtime("cpu")
    optimizer = build_optimizer(model, OptimConfig(), rt.device)
    seen = []
    step = optimizer.step

    def spy(*args, **kwargs):
        seen.append(model.w.grad.norm().item())
        return step(*args, **kwargs)

    optimizer.step = spy
    batches = iter([torch.tensor([6.0, 8.0])] * 2)
    loss, norm, _ = _train_step(model, model, QuadraticObjective(), batches, optimizer, rt.grad_scaler(), rt,
                                grad_accum=1, grad_clip=clip)
    assert norm == pytest.approx(10.0)  # reported: the norm before clipping
    assert seen == [pytest.approx(expected)]  # applied: clipped to `clip` (0 = off)
    assert model.w.grad is None  # cleared for the next step


def test_loss_scaling_skips_overflowing_steps_as_routine():
    # The fp16 path's GradScaler logic, in fp32 on the CPU: a finite loss whose scaled gradients overflow (x 2**16)
    # is routine, not a divergence.
    model = Quadratic()
    rt = Runtime(device=torch.device("cpu"), autocast_dtype=None, use_grad_scaler=True, compile=False)
    scaler = rt.grad_scaler()
    optimizer = build_optimizer(model, OptimConfig(), rt.device)
    scale = scaler.get_scale()
    loss, norm, _ = _train_step(model, model, QuadraticObjective(), iter([torch.tensor([1e34, 1e34])]), optimizer,
                                scaler, rt, grad_accum=1, grad_clip=1.0)
    assert loss is not None and math.isinf(norm)  # reported as a normal step ...
    assert torch.equal(model.w.detach(), torch.tensor([3.0, 4.0]))  # ... whose update the scaler skipped
    assert scaler.get_scale() == scale / 2
    loss, norm, _ = _train_step(model, model, QuadraticObjective(), iter([torch.tensor([1.0, 1.0])]), optimizer,
                                scaler, rt, grad_accum=1, grad_clip=1.0)
    assert norm == pytest.approx(math.sqrt(2)) and not torch.equal(model.w.detach(), torch.tensor([3.0, 4.0]))


class NaNAt(CausalLM):
    """Causal LM whose training loss is NaN at the optimizer steps listed in NAN_STEPS (1-based)."""

    NAN_STEPS: tuple[int, ...] = (3,)

    def __init__(self, cfg, rt) -> None:
        super().__init__(cfg, rt)
        self.calls = 0

    def forward(self, model, batch):
        out = super().forward(model, batch)
        if model.training:
            self.calls += 1
            step = (self.calls - 1) // self.cfg.grad_accum + 1
            if step in self.NAN_STEPS:
                out = Output(loss=out.loss * float("nan"), sums={**out.sums, "loss": out.sums["loss"] * math.nan})
        return out


def test_nonfinite_loss_stops_with_one_line_and_no_checkpoint_from_it(tiny_data, tmp_path, temp_objective):
    temp_objective("test_nan_at", NaNAt)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as e:
        run(tiny_data, out, objective="test_nan_at", steps=6, checkpoint_every=2, log_every=1, eval_every=0)
    line = e.value.line()
    assert isinstance(e.value, UserError) and "\n" not in line
    assert "NaN or infinite at step 3" in line and "--on-nonfinite skip" in line
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000002"]
    assert [r["step"] for r in records(out, "nonfinite")] == [3]
    assert [r["step"] for r in records(out, "train")] == [1, 2]


def test_nonfinite_skip_leaves_weights_untouched_and_counts(tiny_data, tmp_path, temp_objective):
    NaNSkip = type("NaNSkip", (NaNAt,), {"NAN_STEPS": (3, 5)})
    temp_objective("test_nan_skip", NaNSkip)
    out = tmp_path / "run"
    r = run(tiny_data, out, objective="test_nan_skip", steps=6, checkpoint_every=1, keep_last=0, log_every=1,
            eval_every=0, on_nonfinite="skip", grad_accum=2)
    assert r.step == 6 and r.stopped == "completed" and r.skipped_steps == 2
    assert [x["step"] for x in records(out, "nonfinite")] == [3, 5]
    train_recs = records(out, "train")
    assert [x["step"] for x in train_recs] == [1, 2, 4, 6] and train_recs[-1]["skipped"] == 2
    assert all(math.isfinite(x["loss"]) for x in train_recs)
    w = {s: load_file(str(out / "checkpoints" / f"step_{s:06d}" / "model.safetensors")) for s in range(1, 7)}
    same = lambda a, b: all(torch.equal(w[a][k], w[b][k]) for k in w[a])
    assert same(2, 3) and same(4, 5)  # skipped: no update at all (not even weight decay)
    assert not same(3, 4) and not same(5, 6)
    assert load_train_state(out / "checkpoints" / "step_000006")["progress"]["skipped"] == 2


def test_early_stopping_triggers_after_patience_evaluations(tiny_data, tmp_path):
    # lr 0: the weights never change, so no evaluation after the first is better.
    out = tmp_path / "run"
    r = run(tiny_data, out, steps=50, eval_every=2, early_stop_patience=2, checkpoint_every=100, log_every=4,
            optim__lr=0.0)
    assert r.stopped == "early_stop" and r.step == 6 and r.best_step == 2
    assert [e["step"] for e in records(out, "eval")] == [2, 4, 6]
    assert records(out, "early_stop") == [{"event": "early_stop", "step": 6, "best_step": 2}]
    assert [t["step"] for t in records(out, "train")] == [4, 6]  # steps 5-6 logged at the stop
    assert r.checkpoint == out / "checkpoints" / "step_000006"  # saved at the stop, resumable
    assert json.loads((out / "checkpoints" / "best" / "metrics.json").read_text())["step"] == 2


def test_fp16_on_cpu_is_one_clear_error_before_anything_is_written(tiny_data, tmp_path):
    with pytest.raises(UserError, match="fp16 training is not supported on the CPU"):
        run(tiny_data, tmp_path / "run", precision="fp16")
    assert not (tmp_path / "run").exists()


def test_runtime_defaults_fp32_eager_on_cpu_bf16_compiled_on_cuda(monkeypatch):
    rt = setup_runtime("cpu")
    assert (rt.precision, rt.compile, rt.use_grad_scaler) == ("fp32", False, False)
    assert setup_runtime("cpu", "bf16").autocast_dtype is torch.bfloat16
    assert setup_runtime("cpu", compile=True).compile

    # The CUDA policy, without a GPU: pretend one is there.
    import lmforge.device

    monkeypatch.setattr(lmforge.device, "pick_device", lambda preference: torch.device("cuda"))
    monkeypatch.setattr(runtime_mod.torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = setup_runtime("auto")
    assert (cuda.precision, cuda.compile, cuda.use_grad_scaler) == ("bf16", True, False)
    assert setup_runtime("auto", compile=False).compile is False
    fp16 = setup_runtime("auto", "fp16")
    assert fp16.precision == "fp16" and fp16.use_grad_scaler
    monkeypatch.setattr(runtime_mod.torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert setup_runtime("auto").precision == "fp16"  # pre-Ampere: fp16 with loss scaling


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside torch.compile
def test_compile_wraps_the_step_model_and_shares_its_parameters():
    model = Quadratic()
    rt = Runtime(device=torch.device("cpu"), autocast_dtype=None, use_grad_scaler=False, compile=True)
    compiled = parallelize(model, rt)
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled._orig_mod is model and next(compiled.parameters()) is model.w
    assert parallelize(model, Runtime(torch.device("cpu"), None, False, compile=False)) is model


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside torch.compile
@pytest.mark.skipif(os.environ.get("LMFORGE_TEST_COMPILE") != "1",
                    reason="torch.compile on the CPU takes ~40 s; set LMFORGE_TEST_COMPILE=1 to run it")
def test_compiled_run_matches_eager(tiny_data, tmp_path):
    eager = run(tiny_data, tmp_path / "eager", steps=3, log_every=1, eval_every=0, compile=False)
    compiled = run(tiny_data, tmp_path / "compiled", steps=3, log_every=1, eval_every=0, compile=True)
    assert [r["loss"] for r in records(compiled.out, "train")] == pytest.approx(
        [r["loss"] for r in records(eager.out, "train")], rel=1e-4)


def test_an_lstm_trains_longer_than_its_max_seq_len_a_transformer_may_not(tiny_data, tmp_path):
    # An LSTM has no position table: max_seq_len is only its default length, so seq_len may exceed it.
    result = run(tiny_data, tmp_path / "lstm", preset="lstm-tiny", model__max_seq_len=16, seq_len=32, steps=2)
    assert result.step == 2 and math.isfinite(result.train_loss)
    with pytest.raises(UserError, match="seq_len 32 is longer than the model's max_seq_len 16"):
        config(tiny_data, tmp_path / "gpt", model__max_seq_len=16, seq_len=32)


def test_a_model_vocab_smaller_than_the_tokenizer_is_refused(tiny_data, tmp_path):
    vocab = TokenDataset.open(tiny_data, "train").vocab_size
    with pytest.raises(UserError, match=f"the tokenizer has {vocab} tokens but model.vocab_size is {vocab - 1}"):
        config(tiny_data, tmp_path / "run", model__vocab_size=vocab - 1)
