"""`lmforge train` under torchrun: DDP and FSDP2 on 2 ranks train exactly as one process on the whole batch, runs
resume across world sizes (single-file and sharded checkpoints), activation checkpointing changes nothing but
memory, and a dead rank fails the job fast.

The 2-rank jobs are real `torchrun` launches of the CLI on the CPU (gloo). Every run trains on the same global
batch of 8 sequences per step: the reference is one process with 2 micro-batches of 4; the 2-rank jobs use 2
micro-batches of 2 per rank (the causal LM draws each global micro-batch from one generator all ranks share, rank
r taking its rows), so their per-step losses and gradient norms must equal the reference's. What `lmforge.parallel`
does on its own (collectives, DCP shards, hung ranks) is pinned in tests/parallel.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lmforge import parallel as lparallel
from lmforge.checkpoints import load_model
from lmforge.config import resolve
from lmforge.errors import UserError
from lmforge.train import TrainConfig, train
from lmforge.train.checkpoint import Checkpointer, check_compatible, load_train_state

WORKER = Path(__file__).parent / "workers" / "dist_train.py"
TOL = 1e-5
STEPS = 6
# Dropout off: one process and two ranks draw different dropout masks, and the runs are to be compared exactly.
COMMON = ["--model.n-layer", "1", "--model.d-model", "32", "--model.n-head", "2", "--model.dropout", "0.0",
          "--seq-len", "32", "--grad-accum", "2", "--steps", str(STEPS), "--log-every", "1", "--eval-every", "3",
          "--eval-batches", "2", "--checkpoint-every", "3", "--keep-last", "0", "--no-tensorboard", "--device", "cpu"]
ONE = ["--batch-size", "4"]  # x 1 process x 2 micro-batches
TWO = ["--batch-size", "2"]  # x 2 ranks x 2 micro-batches

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="torch.distributed with gloo is not available in this build"),
]


def records(out: Path, event: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def by_step(out: Path, key: str, event: str = "train") -> dict[int, float]:
    return {r["step"]: r[key] for r in records(out, event)}


@pytest.fixture
def torchrun(torchrun_two):
    """`lmforge train ARGS` on 2 ranks (through workers/dist_train.py, which may kill one); the job's log."""
    def run(tmp: Path, *args: str, expect_ok: bool = True) -> str:
        code, log = torchrun_two(WORKER, *args, cwd=tmp, env={"LMFORGE_QUIET": "1", "LMFORGE_DIST_TIMEOUT": "60",
                                                              "LMFORGE_TEST_DIED": str(tmp / "died")})
        assert (code == 0) == expect_ok, log[-6000:]
        return log

    return run


def resume_here(out: Path, **overrides) -> None:
    """`lmforge train --out OUT --resume` in this process (one rank), under the run's own config.yaml."""
    train(resolve(TrainConfig, config=out / "config.yaml", out=str(out), resume=True, **overrides))


def rewind(run: Path, dest: Path) -> Path:
    """A copy of `run` as if it had been killed right after its step-3 checkpoint."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "checkpoints" / "step_000006")
    return dest


def assert_like_reference(out: Path, reference: Path, steps: range) -> None:
    for key in ("loss", "grad_norm"):
        got, want = by_step(out, key), by_step(reference, key)
        assert [s for s in steps if s in got] == list(steps), (key, got)
        assert max(abs(got[s] - want[s]) for s in steps) < TOL, (key, got, want)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """One process, uninterrupted: checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("reference") / "run"
    from lmforge.cli.main import main

    assert main(["train", "--data", str(tiny_data), "--out", str(out), *COMMON, *ONE]) == 0
    return out


def test_ddp_on_two_ranks_trains_as_one_process_and_resumes_on_one(torchrun, tiny_data, tmp_path, reference):
    out = tmp_path / "ddp"
    log = torchrun(tmp_path, "train", "--data", str(tiny_data), "--out", str(out), *COMMON, *TWO)
    assert_like_reference(out, reference, range(1, STEPS + 1))
    # Evaluation: each rank takes every other val window, and together they cover the reference's.
    assert by_step(out, "val_loss", "eval") == pytest.approx(by_step(reference, "val_loss", "eval"), abs=TOL)
    assert by_step(out, "val_tokens", "eval") == by_step(reference, "val_tokens", "eval")
    assert records(out)[-1]["tokens"] == records(reference)[-1]["tokens"] == STEPS * 8 * 32  # every rank's
    # Rank 0 alone wrote the files and printed the summary; the checkpoint is an ordinary model directory.
    assert len(records(out)) == STEPS and log.count("trained 6 steps (completed)") == 1
    ckpt = out / "checkpoints" / "step_000006"
    assert load_train_state(ckpt)["world_size"] == 2
    model, _ = load_model(ckpt)
    want, _ = load_model(reference / "checkpoints" / "step_000006")
    assert all(torch.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(model.state_dict().values(),
                                                                        want.state_dict().values()))

    # Killed after step 3 and resumed on one process with the same global batch: steps 4-6 as uninterrupted.
    resumed = rewind(out, tmp_path / "resumed")
    resume_here(resumed, batch_size=4)  # (parallel.strategy auto: DDP under torchrun, none here)
    assert_like_reference(resumed, reference, range(4, STEPS + 1))
    assert [r["world_size"] for r in records(resumed, "resume")] == [1]


def test_fast_recipe_with_muon_under_ddp_trains_as_one_process(torchrun, tiny_data, tmp_path):
    """Muon orthogonalises the all-reduced gradient of each matrix, so DDP's updates are one process's. Its
    Newton-Schulz iterations run in bf16 (torch.optim.Muon), where gradients equal to fp32 rounding can round
    apart: one process with 4 micro-batches of 2 instead of 2 of 4 drifts by ~3e-4 in loss over these 6 steps
    too, hence 1e-3."""
    fast = ["--recipe", "fast", "--data", str(tiny_data), *COMMON]
    one, two = tmp_path / "one", tmp_path / "two"
    from lmforge.cli.main import main

    assert main(["train", "--out", str(one), *fast, *ONE]) == 0
    torchrun(tmp_path, "train", "--out", str(two), *fast, *TWO)
    for key in ("loss", "grad_norm"):
        got, want = by_step(two, key), by_step(one, key)
        assert sorted(got) == list(range(1, STEPS + 1))
        assert max(abs(got[s] - want[s]) for s in got) < 1e-3, (key, got, want)


def test_fsdp_on_two_ranks_trains_as_one_process(torchrun, tiny_data, tmp_path, reference):
    out = tmp_path / "fsdp"
    torchrun(tmp_path, "train", "--data", str(tiny_data), "--out", str(out), *COMMON, *TWO,
             "--parallel.strategy", "fsdp")
    assert_like_reference(out, reference, range(1, STEPS + 1))
    assert by_step(out, "val_loss", "eval") == pytest.approx(by_step(reference, "val_loss", "eval"), abs=TOL)
    # The checkpoints are gathered from the shards into the single-file format every other verb reads.
    for name in ("step_000003", "step_000006", "best"):
        model, _ = load_model(out / "checkpoints" / name)
        want, _ = load_model(reference / "checkpoints" / name)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(model.state_dict().values(),
                                                                            want.state_dict().values()))


def test_one_process_checkpoint_resumes_on_two_fsdp_ranks_with_checkpointing_and_offload(torchrun, tiny_data,
                                                                                          tmp_path, reference):
    resumed = rewind(reference, tmp_path / "run")
    torchrun(tmp_path, "train", "--out", str(resumed), "--resume", *TWO, "--parallel.strategy", "fsdp",
             "--parallel.activation-checkpointing", "--parallel.fsdp-cpu-offload")
    assert_like_reference(resumed, reference, range(4, STEPS + 1))
    assert by_step(resumed, "loss") == pytest.approx(by_step(reference, "loss"), abs=TOL)  # 1-3 kept, 4-6 new
    assert load_train_state(resumed / "checkpoints" / "step_000006")["world_size"] == 2


def test_a_dead_rank_fails_the_job_fast_and_its_last_sharded_checkpoint_resumes(torchrun, tiny_data, tmp_path,
                                                                                reference):
    out = tmp_path / "run"
    # Rank 1 dies (SIGKILL, like an out-of-memory kill) as step 5 starts: after the step-3 checkpoint, which each
    # rank wrote its shards of.
    log = torchrun(tmp_path, "--die", "1", "5", "train", "--data", str(tiny_data), "--out", str(out), *COMMON,
                   *TWO, "--parallel.strategy", "fsdp", "--parallel.sharded-checkpoints", expect_ok=False)
    failed_after = time.time() - float((tmp_path / "died").read_text())
    assert failed_after < 30, f"the job took {failed_after:.0f}s to fail after rank 1 died"
    # torchrun's summary names the rank and how it died.
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*exitcode\s*:\s*-9", log), log[-6000:]
    assert "Signal 9 (SIGKILL)" in log, log[-6000:]
    # Rank 0 finished step 4 with rank 1 (its last collective), but torchrun may stop it before it logs the step:
    # what the file holds is whole records up to step 3 or 4, never a torn line.
    assert max(by_step(out, "loss")) in (3, 4)
    ckpt = out / "checkpoints" / "step_000003"
    assert [p for _, p in Checkpointer(out / "checkpoints").steps()] == [ckpt]
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # Exported to the single-file format, the shards hold the reference's step-3 weights.
    model, _ = load_model(lparallel.export_single_file(ckpt, tmp_path / "exported"))
    want, _ = load_model(reference / "checkpoints" / "step_000003")
    assert all(torch.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(model.state_dict().values(),
                                                                        want.state_dict().values()))

    resume_here(out, batch_size=4, parallel__strategy="none")  # the job's last checkpoint, on one process
    assert_like_reference(out, reference, range(4, STEPS + 1))


def test_masked_lm_trains_under_ddp_with_heads_outside_forward_and_an_unused_nsp_head(torchrun, tiny_data, tmp_path):
    # MLM calls the model's mlm_logits after its forward (on the module inside the DDP wrapper) and never uses
    # the pooler or the NSP head, which DDP would wait for a gradient of: the objective freezes them.
    out = tmp_path / "mlm"
    torchrun(tmp_path, "train", "--data", str(tiny_data), "--out", str(out), "--preset", "bert-tiny", "--objective",
             "mlm", *COMMON, *TWO, "--steps", "2", "--eval-every", "0")
    assert [r["step"] for r in records(out)] == [1, 2] and all(math.isfinite(r["loss"]) for r in records(out))
    assert load_train_state(out / "checkpoints" / "step_000002")["world_size"] == 2


def test_activation_checkpointing_changes_no_loss_even_with_dropout(tiny_data, tmp_path, monkeypatch):
    par = importlib.import_module("lmforge.parallel.parallelize")  # the module, not the function
    recomputed, real = [], par.checkpoint  # blocks run under torch.utils.checkpoint (recomputed in backward)
    monkeypatch.setattr(par, "checkpoint", lambda fn, *a, **k: recomputed.append(fn) or real(fn, *a, **k))
    runs = {}
    for ac in (False, True):
        out = tmp_path / f"ac_{ac}"
        train(resolve(TrainConfig, data=str(tiny_data), out=str(out), model__n_layer=2, model__d_model=32,
                      model__n_head=2, model__dropout=0.1, seq_len=32, batch_size=4, steps=3, log_every=1,
                      eval_every=0, eval_batches=1, tensorboard=False, device="cpu",
                      parallel__activation_checkpointing=ac))
        runs[ac] = by_step(out, "loss")
        assert len(recomputed) == (3 * 2 if ac else 0)  # steps x blocks
    assert runs[True] == pytest.approx(runs[False], abs=1e-6, rel=0)


def test_resuming_on_another_world_size_must_keep_the_global_batch(reference):
    ckpt = reference / "checkpoints" / "step_000003"
    state = load_train_state(ckpt)
    cfg = resolve(TrainConfig, config=reference / "config.yaml", out=str(reference))
    saved = state["train_config"]
    check_compatible(state, cfg.model, {**saved, "batch_size": 2}, ckpt, world_size=2)  # 2 x 2 x 2 = 1 x 4 x 2
    with pytest.raises(UserError) as e:
        check_compatible(state, cfg.model, saved, ckpt, world_size=2)
    assert ("global batch 4 x 1 process -> 4 x 2 processes" in e.value.line()
            and "pass --batch-size 2 to keep the global batch of 4 sequences" in e.value.line())
