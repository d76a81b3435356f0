"""Checkpoint layout, atomicity (a kill at any moment leaves the previous checkpoint intact) and clear errors."""

from __future__ import annotations

import pytest
import torch

from lmforge.checkpoints import load_model
from lmforge.errors import UserError
from lmforge.models import DecoderLM, ModelConfig
from lmforge.train import checkpoint as ck
from lmforge.train.checkpoint import Checkpointer, CheckpointMismatch, check_compatible, load_train_state


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 40, "max_seq_len": 16, "n_layer": 1, "n_head": 2, "d_model": 16, **kw})


@pytest.fixture
def model_and_cfg():
    torch.manual_seed(0)
    cfg = tiny()
    return DecoderLM(cfg), cfg


def test_layout_latest_pointer_and_keep_last(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    tok = tmp_path / "data"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    ckpt = Checkpointer(tmp_path / "checkpoints", keep_last=2, tokenizer_dir=tok)
    for step in (100, 200, 300):
        ckpt.save(step, model, cfg, {"progress": {"step": step}})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000200", "step_000300"]
    assert (root / "latest").read_text().strip() == "step_000300"
    assert {p.name for p in (root / "step_000300").iterdir()} == {
        "model.safetensors", "config.json", "tokenizer.json", "train_state.pt", "checksums.json"}
    assert ckpt.latest() == root / "step_000300"
    # A step directory is an ordinary model checkpoint.
    loaded, loaded_cfg = load_model(root / "step_000300")
    assert loaded_cfg == cfg
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert load_train_state(root / "step_000300")["progress"] == {"step": 300}


def test_best_is_kept_apart_from_pruning(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save_best(model, cfg, {"step": 1, "val_loss": 2.5})
    for step in (1, 2, 3):
        ckpt.save(step, model, cfg, {})
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert [s for s, _ in ckpt.steps()] == [3]


def test_failure_mid_save_leaves_previous_checkpoint_intact(tmp_path, model_and_cfg, monkeypatch):
    model, cfg = model_and_cfg
    ckpt = Checkpointer(tmp_path, keep_last=0)
    first = ckpt.save(1, model, cfg, {"progress": {"step": 1}})
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", dies)  # dies after the weights are written, before the state
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(2, model, cfg, {"progress": {"step": 2}})
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("step_")] == ["step_000001"]
    assert not list(tmp_path.glob(".*"))  # no half-written directory left behind
    assert (tmp_path / "latest").read_text().strip() == "step_000001"
    assert ckpt.latest() == first


def test_stale_temporary_directories_are_removed_and_ignored(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, model, cfg, {})
    (tmp_path / ".step_000002.abc.tmp").mkdir()  # what a kill during a save leaves
    (tmp_path / "step_000003").mkdir()  # incomplete: not a checkpoint
    assert ckpt.latest() == tmp_path / "step_000001"
    ckpt.remove_stale()
    assert not (tmp_path / ".step_000002.abc.tmp").exists()


def test_refuses_to_checkpoint_non_finite_weights(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        Checkpointer(tmp_path).save(1, model, cfg, {})
    assert not list(tmp_path.glob("step_*"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing", "foreign"])
def test_damaged_train_state_is_one_clear_line(tmp_path, model_and_cfg, damage):
    model, cfg = model_and_cfg
    path = Checkpointer(tmp_path).save(1, model, cfg, {"progress": {"step": 1}})
    state = path / "train_state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "garbage":
        state.write_bytes(b"not a checkpoint at all")
    elif damage == "missing":
        state.unlink()
    else:
        torch.save({"something": "else"}, state)
    with pytest.raises(UserError) as e:
        load_train_state(path)
    line = e.value.line()
    assert "\n" not in line and "train_state.pt" in line
    assert any(w in line for w in ("truncated", "not found", "not an lmforge training state"))


def test_another_family_or_config_is_refused(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    path = Checkpointer(tmp_path).save(1, model, cfg, {"train_config": {"batch_size": 4, "seq_len": 16}})
    state = load_train_state(path)
    llama = tiny(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope", bias=False)
    # CheckpointMismatch, a UserError: callers (lmforge eval --compare) catch the type, not the message text.
    with pytest.raises(CheckpointMismatch, match="holds a 'gpt' model but the config asks for 'llama'"):
        check_compatible(state, llama, {}, path)
    with pytest.raises(CheckpointMismatch, match=r"model.n_layer 1 -> 2"):
        check_compatible(state, tiny(n_layer=2), {}, path)
    with pytest.raises(CheckpointMismatch, match=r"batch_size 4 -> 8"):
        check_compatible(state, cfg, {"batch_size": 8, "seq_len": 16}, path)
    check_compatible(state, cfg, {"batch_size": 4, "seq_len": 16, "steps": 99}, path)  # more steps: fine


def test_kill_between_the_renames_of_best_is_repaired(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    ckpt = Checkpointer(tmp_path)
    ckpt.save_best(model, cfg, {"step": 1})
    # What `atomic_directory` leaves when killed after moving the old best/ aside, before renaming the new one in.
    (tmp_path / "best").rename(tmp_path / ".best.old")
    (tmp_path / ".best.x1y2.tmp").mkdir()
    ckpt.remove_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (tmp_path / "best" / "metrics.json").is_file()
    # Killed after the rename, before the old one was deleted: the old one goes.
    (tmp_path / ".best.old").mkdir()
    (tmp_path / ".latest.abc.tmp").write_text("half")  # an unfinished `latest` pointer (a file)
    ckpt.remove_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_pruning_leaves_no_half_deleted_checkpoint(tmp_path, model_and_cfg, monkeypatch):
    model, cfg = model_and_cfg
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save(1, model, cfg, {})
    monkeypatch.setattr(ck, "_remove", lambda path: None)  # as if killed before the deletion
    ckpt.save(2, model, cfg, {})
    assert [s for s, _ in ckpt.steps()] == [2]  # step 1 is out of sight at once ...
    ckpt.remove_stale()  # ... and deleted by the next start
    monkeypatch.undo()
    ckpt.remove_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000002"]


@pytest.mark.parametrize("damage", ["truncate", "other family"])
def test_weights_that_do_not_fit_are_one_clear_line(tmp_path, model_and_cfg, damage):
    model, cfg = model_and_cfg
    path = Checkpointer(tmp_path).save(1, model, cfg, {})
    weights = path / "model.safetensors"
    target = model
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        from lmforge.models import build_model

        target = build_model(tiny(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope",
                                  bias=False, tie_embeddings=False))
    with pytest.raises(UserError) as e:
        ck.load_weights(path, target)
    line = e.value.line()
    assert "\n" not in line and "model.safetensors" in line
    assert ("truncated" if damage == "truncate" else "do not match the model config") in line


def test_sharded_checkpoints_are_read_by_every_verb_like_single_file_ones(tiny_data, tmp_path, capsys):
    from lmforge.checkpoints import is_sharded_checkpoint, resolve_checkpoint
    from lmforge.cli.main import main
    from lmforge.config import resolve
    from lmforge.interop.hf import export_hf
    from lmforge.train import TrainConfig, train

    def run(name: str, **kw):
        return train(resolve(TrainConfig, data=str(tiny_data), out=str(tmp_path / name), steps=2, eval_every=2,
                             eval_batches=1, model__n_layer=1, model__d_model=32, model__n_head=2, seq_len=16,
                             batch_size=2, tensorboard=False, device="cpu", **kw))

    plain, sharded = run("plain"), run("sharded", parallel__sharded_checkpoints=True)
    for ckpt in (sharded.checkpoint, sharded.best_checkpoint):
        assert is_sharded_checkpoint(ckpt) and (ckpt / "tokenizer.json").is_file()
    assert resolve_checkpoint(tmp_path / "sharded") == sharded.best_checkpoint
    want, _ = load_model(plain.checkpoint)
    got, _ = load_model(sharded.checkpoint)  # the shards, gathered into one model
    for (name, a), b in zip(want.state_dict().items(), got.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    samples = []
    for run_dir in ("plain", "sharded"):
        assert main(["generate", "--checkpoint", str(tmp_path / run_dir), "The", "--max-new-tokens", "8",
                     "--temperature", "0", "--no-stream"]) == 0
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] and samples[0].strip()

    hf = export_hf(tmp_path / "sharded", tmp_path / "hf")
    transformers = pytest.importorskip("transformers")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = load_model(sharded.best_checkpoint)[0](ids)
        actual = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert (hf / "tokenizer.json").is_file()
