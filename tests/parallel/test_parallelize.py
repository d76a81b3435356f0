"""Single-process behaviour of lmforge.parallel: environment, activation checkpointing, strategy checks, checkpoints.

The FSDP test here runs FSDP2 in a process group of one (gloo, in this process): it pins which modules are sharded
and that the full-state and sharded-checkpoint helpers work on DTensor parameters, in a second, without torchrun.
The 2-process behaviour is in test_parallel_training.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lmforge import parallel as lparallel
from lmforge.checkpoints import is_sharded_checkpoint
from lmforge.errors import UserError
from lmforge.models import ModelConfig, build_model
from lmforge.parallel.env import resolve_device, timeout_seconds

SINGLE = lparallel.DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
FAMILIES = {
    "gpt": {},
    "llama": {"norm": "rmsnorm", "mlp": "gated", "pos": "rope", "tie_embeddings": False, "bias": False},
    "bert": {"norm_position": "post", "type_vocab_size": 2, "embed_norm": True},
    "t5": {"norm": "rmsnorm", "mlp": "gated", "pos": "relative", "attn_scale": 1.0, "bias": False,
           "scale_decoder_output": True, "n_decoder_layer": 3},
}


def tiny(family: str = "gpt", **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{"family": family, "vocab_size": 64, "max_seq_len": 16, "n_layer": 2,
                                      "n_head": 2, "d_model": 32, **FAMILIES[family], **kw}))


def loss_of(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The family's training loss on (B, 17) tokens: next-token for decoders, token recovery for the others."""
    family = lparallel.unwrap(model).cfg.family
    if family == "bert":
        logits = lparallel.unwrap(model).mlm_logits(model(batch[:, :-1]))
        return F.cross_entropy(logits.flatten(0, 1), batch[:, :-1].flatten())
    if family == "t5":
        logits = model(batch[:, 8:], batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    return F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())


def run_steps(model: nn.Module, steps: int = 3, opt: torch.optim.Optimizer | None = None, accum: int = 1,
              seed: int = 0) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    losses, grads = [], []
    for _ in range(steps):
        batch = torch.randint(0, 64, (4, 17), generator=g)
        total = 0.0
        for i, micro in enumerate(batch.chunk(accum)):
            with lparallel.no_grad_sync(model, enabled=i < accum - 1):
                loss = loss_of(model, micro) / accum
                loss.backward()
            total += loss.item()
        grads.append({n: _full(p.grad).clone() for n, p in model.named_parameters() if p.grad is not None})
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses, grads


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# --- environment ---------------------------------------------------------------------------------------------

def test_setup_without_torchrun_is_a_single_process_with_no_op_collectives(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = lparallel.setup("cpu")
    assert (env.rank, env.world_size, env.is_main, env.is_distributed) == (0, 1, True, False)
    assert lparallel.all_reduce_mean(torch.tensor(2.5), env) == 2.5
    assert lparallel.all_reduce_sum(3.0, env) == 3.0
    assert lparallel.broadcast_object({"a": 1}, env) == {"a": 1}
    assert lparallel.all_gather_object("x", env) == ["x"]
    lparallel.barrier(env)
    lparallel.teardown(env)


def test_bad_device_and_timeout_are_user_errors(monkeypatch) -> None:
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")
    assert resolve_device("auto", distributed=True).type in ("cpu", "cuda")  # never MPS: no distributed backend
    monkeypatch.setenv("LMFORGE_DIST_TIMEOUT", "soon")
    with pytest.raises(UserError, match="LMFORGE_DIST_TIMEOUT"):
        timeout_seconds()
    monkeypatch.setenv("LMFORGE_DIST_TIMEOUT", "7.5")
    assert timeout_seconds() == 7.5


# --- activation checkpointing --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_activation_checkpointing_gives_identical_losses_and_grads(family: str) -> None:
    # Dropout on: the recomputation must replay the same random masks.
    plain = tiny(family, dropout=0.1)
    checkpointed = lparallel.parallelize(copy.deepcopy(plain), lparallel.ParallelConfig(activation_checkpointing=True),
                                     SINGLE)
    blocks = lparallel.transformer_blocks(checkpointed)
    assert len(blocks) == {"t5": 5}.get(family, 2)  # t5: encoder and decoder blocks
    assert {type(b).__name__ for b in blocks} == {"CheckpointedBlock"}
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # names untouched

    torch.manual_seed(1)
    want_losses, want_grads = run_steps(plain)
    torch.manual_seed(1)
    got_losses, got_grads = run_steps(checkpointed)
    assert got_losses == want_losses
    for want, got in zip(want_grads, got_grads):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_activation_checkpointing_saves_activations_only_at_block_boundaries() -> None:
    # The point of the option: the autograd graph keeps far fewer tensors alive between forward and backward.
    def saved_tensors(model: nn.Module) -> int:
        count = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal count
            count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_of(model, torch.randint(0, 64, (2, 17)))
        return count

    plain = tiny(n_layer=4)
    checkpointed = lparallel.parallelize(copy.deepcopy(plain), lparallel.ParallelConfig(activation_checkpointing=True),
                                     SINGLE)
    assert saved_tensors(checkpointed) < saved_tensors(plain) / 2


def test_checkpointed_blocks_decode_with_the_kv_cache_as_before() -> None:
    plain = tiny().eval()
    checkpointed = lparallel.parallelize(copy.deepcopy(plain), lparallel.ParallelConfig(activation_checkpointing=True),
                                     SINGLE).eval()
    tokens = torch.randint(0, 64, (1, 5))
    outs = []
    for m in (plain, checkpointed):
        m.setup_cache(1)
        with torch.no_grad():
            m(tokens, input_pos=torch.arange(5))
            outs.append(m(tokens[:, -1:], input_pos=torch.tensor([5])))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_activation_checkpointing_of_a_model_without_blocks_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs Transformer blocks"):
        lparallel.parallelize(nn.Linear(4, 4), lparallel.ParallelConfig(activation_checkpointing=True), SINGLE)


# --- strategies ----------------------------------------------------------------------------------------------

def test_strategies_that_need_a_process_group_are_refused_alone() -> None:
    for strategy in ("ddp", "fsdp"):
        with pytest.raises(UserError, match="needs a process group"):
            lparallel.parallelize(tiny(), lparallel.ParallelConfig(strategy=strategy), SINGLE)
    two = lparallel.DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(UserError, match="unrelated models"):
        lparallel.parallelize(tiny(), lparallel.ParallelConfig(strategy="none"), two)


def test_auto_strategy_alone_leaves_the_model_as_it_is() -> None:
    model = tiny()
    assert lparallel.parallelize(model, lparallel.ParallelConfig(), SINGLE) is model
    assert lparallel.unwrap(model) is model
    assert lparallel.full_model(model, SINGLE) is model  # nothing to gather: no copy
    with lparallel.no_grad_sync(model):
        pass


def test_clip_grad_norm_returns_the_norm_before_clipping() -> None:
    model = tiny()
    loss_of(model, torch.randint(0, 64, (2, 17))).backward()
    want = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    assert lparallel.clip_grad_norm_(model, 0.0) == pytest.approx(want, rel=1e-6)  # measure only
    assert lparallel.clip_grad_norm_(model, want / 2) == pytest.approx(want, rel=1e-6)
    assert lparallel.clip_grad_norm_(model, 0.0) == pytest.approx(want / 2, rel=1e-4)


@pytest.fixture
def group_of_one() -> Iterator[lparallel.DistEnv]:
    """A real gloo process group with this process as its only member."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield SINGLE
    finally:
        dist.destroy_process_group()


def test_fsdp_shards_every_block_and_trains_like_the_plain_model(group_of_one, tmp_path) -> None:
    from torch.distributed.fsdp import FSDPModule

    plain = tiny("t5")
    model = lparallel.parallelize(copy.deepcopy(plain), lparallel.ParallelConfig(strategy="fsdp"), group_of_one)
    assert lparallel.is_fsdp(model)
    blocks = lparallel.transformer_blocks(model)
    assert len(blocks) == 5 and all(isinstance(b, FSDPModule) for b in blocks)  # encoder's 2 and decoder's 3
    assert isinstance(model, FSDPModule)  # the root: embeddings, relative bias tables, tied head

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    got, _ = run_steps(model, 2, opt, accum=2)  # the non-final micro-batch under no_grad_sync
    want, _ = run_steps(plain, 2, accum=2)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-6, (got, want)

    copy_ = lparallel.full_model(model, group_of_one)
    assert type(copy_) is type(plain) and not lparallel.is_fsdp(copy_)
    for name, t in plain.state_dict().items():
        torch.testing.assert_close(copy_.state_dict()[name], t, rtol=0, atol=1e-6, msg=name)

    # A sharded checkpoint of the FSDP model continues in a plain model like the plain model itself.
    lparallel.save_sharded(tmp_path / "ckpt", model, opt, {"step": 2}, group_of_one)
    resumed = tiny("t5")
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    assert lparallel.load_sharded(tmp_path / "ckpt", resumed, resumed_opt, group_of_one) == {"step": 2}
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    lparallel.load_optimizer_state(plain, plain_opt, lparallel.optimizer_state(model, opt))
    got, _ = run_steps(resumed, 2, resumed_opt, seed=5)
    want, _ = run_steps(plain, 2, plain_opt, seed=5)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (got, want)


def test_fsdp_bf16_mixed_precision_computes_in_bf16_and_keeps_fp32_weights(group_of_one) -> None:
    plain = tiny()
    cfg = lparallel.ParallelConfig(strategy="fsdp", mixed_precision="bf16", fsdp_cpu_offload=True)
    model = lparallel.parallelize(copy.deepcopy(plain), cfg, group_of_one)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights, for the optimizer
    got, grads = run_steps(model, 2)
    assert {g.dtype for g in grads[0].values()} == {torch.float32}  # reduced and stored in fp32
    want, _ = run_steps(plain, 2)
    diff = max(abs(a - b) for a, b in zip(got, want))
    assert 1e-6 < diff < 3e-2, (got, want)  # bf16 rounding: close, not equal
    with torch.no_grad():
        assert model(torch.randint(0, 64, (2, 16))).dtype == torch.bfloat16


def test_record_writes_the_exception_where_torchrun_reads_it(tmp_path, monkeypatch) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))

    @lparallel.record
    def main() -> None:
        raise RuntimeError("rank 1 lost its data")

    with pytest.raises(RuntimeError, match="lost its data"):
        main()
    failure = ProcessFailure(local_rank=1, pid=123, exitcode=1, error_file=str(error_file))
    summary = ChildFailedError("train.py", {1: failure}).format_msg()
    assert "RuntimeError: rank 1 lost its data" in summary and "Traceback" in summary
    assert [p.name for p in tmp_path.iterdir()] == ["error.json"]  # written atomically: no temporary left


# --- checkpoints ---------------------------------------------------------------------------------------------

def test_sharded_checkpoint_round_trips_in_one_process_and_replaces_atomically(tmp_path) -> None:
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run_steps(model, 1, opt)
    path = tmp_path / "ckpt"
    lparallel.save_sharded(path, model, opt, {"step": 1}, SINGLE)
    lparallel.save_sharded(path, model, opt, {"step": 2}, SINGLE)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind
    assert is_sharded_checkpoint(path) and lparallel.read_extra(path) == {"step": 2}

    other = tiny()
    torch.nn.init.zeros_(other.lm_head.weight)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    assert lparallel.load_sharded(path, other, other_opt, SINGLE) == {"step": 2}
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert other.lm_head.weight is other.embed.tok.weight  # tying survives loading
    assert run_steps(other, 2, other_opt)[0] == run_steps(model, 2, opt)[0]


def test_full_state_round_trips_by_parameter_name(tmp_path) -> None:
    model = tiny("llama")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run_steps(model, 1, opt)
    state = lparallel.optimizer_state(model, opt)
    assert set(state["state"]) == {name for name, _ in model.named_parameters()}  # names, not positions
    torch.save({"model": lparallel.model_state(model), "optim": state}, tmp_path / "full.pt")

    saved = torch.load(tmp_path / "full.pt", weights_only=True)
    other = tiny("llama", init_std=0.5)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    lparallel.load_model_state(other, saved["model"])
    lparallel.load_optimizer_state(other, other_opt, saved["optim"])
    assert run_steps(other, 2, other_opt, seed=3)[0] == run_steps(model, 2, opt, seed=3)[0]


def test_a_checkpoint_from_before_the_first_step_resumes_exactly(tmp_path) -> None:
    # Asking torch for a fresh AdamW's state initialises it with a phantom first step; a checkpoint written then
    # must neither change the run that wrote it nor resume into a different one.
    want, _ = run_steps(tiny(), 2)

    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    lparallel.save_sharded(tmp_path / "ckpt", model, opt, {}, SINGLE)
    full = lparallel.optimizer_state(model, opt)
    assert full == {} and not opt.state
    assert run_steps(model, 2, opt)[0] == want

    resumed = tiny(init_std=0.5)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    run_steps(resumed, 1, resumed_opt)  # state that the checkpoint must replace
    lparallel.load_sharded(tmp_path / "ckpt", resumed, resumed_opt, SINGLE)
    assert run_steps(resumed, 2, resumed_opt)[0] == want

    again = tiny()
    again_opt = torch.optim.AdamW(again.parameters(), lr=1e-2)
    lparallel.load_optimizer_state(again, again_opt, full)
    assert run_steps(again, 2, again_opt)[0] == want


def test_loading_a_mismatched_or_incomplete_checkpoint_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "ckpt"
    lparallel.save_sharded(path, tiny(), None, None, SINGLE)
    with pytest.raises(UserError, match="does not match"):
        lparallel.load_sharded(path, tiny(n_layer=3), None, SINGLE)
    with pytest.raises(UserError, match="not a complete sharded checkpoint"):
        lparallel.load_sharded(tmp_path, tiny(), None, SINGLE)
    (path / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json"):
        lparallel.export_single_file(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_sharded_checkpoint_records_every_files_checksum_and_a_flipped_byte_is_one_line(tmp_path) -> None:
    from lmforge.checkpoints import CHECKSUMS, CorruptCheckpoint, load_model, read_checksums

    model = tiny()
    path = lparallel.save_sharded(tmp_path / "ckpt", model, None, {"step": 1}, SINGLE)
    recorded = read_checksums(path)["sha256"]
    assert set(recorded) == {p.name for p in path.iterdir() if p.name != CHECKSUMS}  # shards, .metadata, extra
    load_model(path)
    shard = next(p for p in path.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="does not match its recorded sha256"):
        load_model(path)
    load_model(path, verify=False)  # --no-verify: read as it is
    from lmforge.train.checkpoint import Checkpointer

    # --resume passes over it (to the newest checkpoint that verifies), unless told not to verify
    assert "does not match its recorded sha256" in Checkpointer(tmp_path).problem(path)
    assert "sha256" not in Checkpointer(tmp_path).problem(path, verify=False)  # (its extra is no train state)
