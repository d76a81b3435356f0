"""`--resume` continues a killed run exactly, and refuses checkpoints it cannot continue, in one line each.

The killed runs are real: `lmforge train` in a subprocess (workers/run_train.py), ended with SIGKILL, so nothing
in the process gets to clean up. The straight runs they are compared with run in this process.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.checkpoints import load_model
from lmforge.cli.main import main
from lmforge.config import resolve
from lmforge.errors import UserError
from lmforge.train import TrainConfig, TrainResult, train
from lmforge.train.checkpoint import load_train_state
from lmforge.train.optim import lr_factor

WORKER = Path(__file__).parent / "workers" / "run_train.py"
N = 4  # the killed run is checkpointed at step N and killed past it; both runs train to 2N
# Dropout on, so that a wrong RNG restore changes the losses.
ARGS = ["--model.n-layer", "1", "--model.d-model", "32", "--model.n-head", "2", "--model.dropout", "0.1",
        "--seq-len", "32", "--batch-size", "4", "--eval-every", "3", "--eval-batches", "2", "--device", "cpu"]


def worker(mode: str, value: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_QUIET": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(value), "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "train"]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_records(out)}


def straight_run(tmp: Path, *args: str) -> Path:
    assert main(["train", *args, "--out", str(tmp)]) == 0
    return tmp


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory) -> Path:
    """2N steps without interruption, every step's loss logged."""
    return straight_run(tmp_path_factory.mktemp("straight") / "run", "--data", str(tiny_data), *ARGS,
                        "--steps", str(2 * N), "--checkpoint-every", str(N), "--log-every", "1", "--tensorboard")


def test_resume_after_sigkill_reproduces_the_straight_run(tiny_data, tmp_path, straight):
    out = tmp_path / "run"
    proc = worker("--pause-at-step", N + 2, "--data", str(tiny_data), *ARGS, "--steps", str(2 * N),
                  "--checkpoint-every", str(N), "--log-every", "1", "--tensorboard", "--out", str(out))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "paused", proc.stderr.read() if proc.poll() is not None else "worker timed out"
        # Killed past the step-N checkpoint, with steps N+1, N+2 logged that the checkpoint does not cover.
        assert (out / "checkpoints" / f"step_{N:06d}").is_dir()
        assert max(losses(out)) == N + 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [f"step_{N:06d}"]

    assert main(["train", "--out", str(out), "--resume"]) == 0  # its own config.yaml; no --data needed
    want, got = losses(straight), losses(out)
    assert sorted(got) == list(range(1, 2 * N + 1))  # the killed run's steps past N were dropped, not doubled
    assert [got[s] for s in range(N + 1, 2 * N + 1)] == pytest.approx(
        [want[s] for s in range(N + 1, 2 * N + 1)], abs=1e-6, rel=0)
    assert [r["grad_norm"] for r in train_records(out)] == pytest.approx(
        [r["grad_norm"] for r in train_records(straight)], abs=1e-6, rel=0)
    resumed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"resume"' in x]
    assert [r["step"] for r in resumed] == [N]
    # TensorBoard hides what the killed run logged past the checkpoint: one value per step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 2 * N + 1))
    # Same weights at the end, and the same best checkpoint.
    a, _ = load_model(straight / "checkpoints" / f"step_{2 * N:06d}")
    b, _ = load_model(out / "checkpoints" / f"step_{2 * N:06d}")
    assert all(torch.allclose(x, y, atol=1e-6, rtol=0) for x, y in zip(a.state_dict().values(),
                                                                        b.state_dict().values()))
    best = [json.loads((d / "checkpoints" / "best" / "metrics.json").read_text()) for d in (straight, out)]
    assert best[0]["step"] == best[1]["step"] and best[0]["val_loss"] == pytest.approx(best[1]["val_loss"])


def test_kill_during_a_checkpoint_save_keeps_the_previous_one_and_resumes_exactly(tiny_data, tmp_path):
    # Logged every 2 steps, checkpointed every 3: the step-3 checkpoint carries step 3's loss, not yet logged.
    args = ["--data", str(tiny_data), *ARGS, "--steps", "6", "--checkpoint-every", "3", "--log-every", "2",
            "--no-tensorboard"]
    want = straight_run(tmp_path / "straight", *args)
    out = tmp_path / "run"
    proc = worker("--die-in-save", 2, *args, "--out", str(out))  # dies writing the step-6 checkpoint
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, err
    ckpts = out / "checkpoints"
    assert [p.name for p in ckpts.glob(".step_000006.*.tmp")]  # the half-written save, never renamed in
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_000003"]
    assert (ckpts / "latest").read_text().strip() == "step_000003"
    assert load_train_state(ckpts / "step_000003")["progress"]["step"] == 3  # intact
    load_model(ckpts / "step_000003")

    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert not list(ckpts.glob(".*"))  # the stale temporary directory is cleaned up
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_000003", "step_000006"]
    got, expected = losses(out), losses(want)
    assert sorted(got) == sorted(expected) == [2, 4, 6]
    assert [got[s] for s in (2, 4, 6)] == pytest.approx([expected[s] for s in (2, 4, 6)], abs=1e-6, rel=0)


@pytest.fixture
def finished(straight, tmp_path) -> Path:
    """A copy of the straight run (checkpoints at N and 2N), free to damage."""
    return Path(shutil.copytree(straight, tmp_path / "run"))


def resume(out: Path, **overrides) -> TrainResult:
    # `out` given, as `lmforge train --out OUT --resume` does: the copy's config.yaml names the original.
    return train(resolve(TrainConfig, config=out / "config.yaml", out=str(out), resume=True, tensorboard=False,
                         **overrides))


def test_resume_with_more_steps_and_new_optimizer_options_follows_them(finished):
    r = resume(finished, steps=2 * N + 2, optim__lr=2e-3, optim__weight_decay=0.05)
    assert r.step == 2 * N + 2 and sorted(losses(finished)) == list(range(1, 2 * N + 3))
    cfg = resolve(TrainConfig, config=finished / "config.yaml", out=str(finished))
    assert cfg.steps == 2 * N + 2 and cfg.optim.lr == 2e-3
    # The new schedule (lr, length) from the step reached; the moments from the checkpoint.
    lrs = {x["step"]: x["lr"] for x in train_records(finished)}
    assert lrs[2 * N + 1] == pytest.approx(2e-3 * lr_factor(2 * N, 2 * N + 2, cfg.optim))
    groups = load_train_state(r.checkpoint)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


@pytest.mark.parametrize(("damage", "message"), [
    ("other family", "holds a 'gpt' model but the config asks for 'llama'"),
    ("other config", "config does not match the checkpoint (model.n_layer 1 -> 2)"),
    ("other batch", "config does not match the checkpoint (batch_size 4 -> 8)"),
    ("other optimizer", "config does not match the checkpoint (optim.name 'adamw' -> 'muon')"),
])
def test_unresumable_checkpoint_is_one_clear_line_and_changes_nothing(finished, damage, message):
    ckpt = finished / "checkpoints" / f"step_{2 * N:06d}"
    overrides = {}
    if damage == "other family":
        overrides = {"preset": "llama-tiny", "model": {k: v for k, v in resolve(
            TrainConfig, config=finished / "config.yaml", out=str(finished)).model.to_dict().items()
            if k in ("n_layer", "d_model", "n_head", "n_kv_head", "dropout", "vocab_size")}}
    elif damage == "other config":
        overrides = {"model__n_layer": 2}
    elif damage == "other optimizer":
        overrides = {"optim__name": "muon"}
    else:
        overrides = {"batch_size": 8}
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as e:
        resume(finished, steps=2 * N + 2, **overrides)
    line = e.value.line()
    assert message in line and "\n" not in line and str(ckpt) in line
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one flipped byte near the end: the tensor data, not the header
        data[-3] ^= 0x40
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(("name", "how"), [("model.safetensors", "truncate"), ("model.safetensors", "flip"),
                                           ("train_state.pt", "truncate"), ("train_state.pt", "flip")])
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(finished, straight, capsys, name, how):
    newest, older = (finished / "checkpoints" / f"step_{s:06d}" for s in (2 * N, N))
    _damage(newest / name, how)
    r = resume(finished, steps=2 * N)
    assert r.step == 2 * N
    warning = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(warning) == 1 and newest.name in warning[0] and older.name in warning[0], warning
    # Continued from step N, as the straight run went on from there; the damaged save is replaced by a good one.
    got, want = losses(finished), losses(straight)
    assert [got[s] for s in range(N + 1, 2 * N + 1)] == pytest.approx([want[s] for s in range(N + 1, 2 * N + 1)],
                                                                      abs=1e-6, rel=0)
    load_model(newest)


def test_no_checkpoint_that_verifies_is_one_line_and_no_verify_skips_the_check(finished):
    ckpts = finished / "checkpoints"
    for s in (N, 2 * N):
        _damage(ckpts / f"step_{s:06d}" / "model.safetensors", "flip")
    with pytest.raises(UserError) as e:
        resume(finished, steps=2 * N + 1)
    line = e.value.line()
    assert "\n" not in line and "no checkpoint of this run can be resumed" in line and f"step_{2 * N:06d}" in line
    assert "--no-verify" in line
    # A flipped byte in a float still loads: skipping the checksums resumes from the newest as it is.
    r = train(resolve(TrainConfig, config=finished / "config.yaml", out=str(finished), resume=True,
                      tensorboard=False, steps=2 * N + 1), verify=False)
    assert r.step == 2 * N + 1


def test_a_checkpoint_without_checksums_resumes_as_before(finished, capsys):
    for s in (N, 2 * N):
        (finished / "checkpoints" / f"step_{s:06d}" / "checksums.json").unlink()
    assert resume(finished, steps=2 * N + 1).step == 2 * N + 1
    assert "damaged" not in capsys.readouterr().err


def test_a_run_keeps_the_tokenizer_it_started_with(finished, tiny_data, tmp_path):
    from lmforge.checkpoints import read_checksums
    from lmforge.data.tokenizer import tokenizer_hash

    copy = finished / "tokenizer"
    assert tokenizer_hash(copy) == tokenizer_hash(tiny_data)
    for d in (finished / "checkpoints").glob("step_*"):
        assert (d / "tokenizer.json").read_bytes() == (copy / "tokenizer.json").read_bytes()
        assert read_checksums(d)["tokenizer_sha256"] == tokenizer_hash(copy)
        assert load_train_state(d)["tokenizer_sha256"] == tokenizer_hash(copy)
    # The data prepared again with another tokenizer: resuming on it is refused, in one line, nothing written.
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    spec = json.loads((data / "tokenizer.json").read_text())
    spec.setdefault("added_tokens", []).append({"id": 10**6, "content": "<other>", "single_word": False,
                                                 "lstrip": False, "rstrip": False, "normalized": False,
                                                 "special": True})
    (data / "tokenizer.json").write_text(json.dumps(spec))
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="not the one this run was trained with"):
        resume(finished, steps=2 * N + 1, data=str(data))
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def test_starting_over_an_existing_run_is_refused(finished):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    cfg = resolve(TrainConfig, config=finished / "config.yaml", out=str(finished))  # resume off
    with pytest.raises(UserError, match="already holds a training run .* pass --resume"):
        train(cfg)
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before  # nothing touched

