import pytest
import torch
from torch import nn

from lmforge.runtime import eval_mode, local_runtime


def test_local_runtime_stays_one_process_under_torchrun(monkeypatch):
    # As `torchrun -m lmforge eval ...` would start it: scoring must not wait for a rendezvous that never comes.
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    rt = local_runtime("cpu")
    assert (rt.rank, rt.world_size, rt.strategy, rt.precision, rt.compile) == (0, 1, "none", "fp32", False)
    assert not torch.distributed.is_initialized()


def test_eval_mode_turns_off_dropout_and_gradients_then_restores_training():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with eval_mode(model):
        assert not model.training and not torch.is_grad_enabled()
    assert model.training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training
