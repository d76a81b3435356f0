import pytest
import torch

from lmforge.checkpoints import is_sharded_checkpoint, load_model, resolve_checkpoint
from lmforge.errors import UserError
from lmforge.models import ModelConfig, build_model
from lmforge.models.io import save_model


def tiny() -> ModelConfig:
    return ModelConfig(vocab_size=97, max_seq_len=16, n_layer=1, n_head=2, d_model=32)


def test_load_model_casts_floating_weights_to_the_dtype_asked_for(tmp_path):
    torch.manual_seed(0)
    cfg = tiny()
    model = build_model(cfg).eval()
    save_model(tmp_path / "ckpt", model, cfg)
    same, _ = load_model(tmp_path / "ckpt")
    half, _ = load_model(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert {p.dtype for p in same.parameters()} == {torch.float32}
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert not half.training
    for (name, a), b in zip(model.state_dict().items(), half.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16), b), name


def test_a_single_file_checkpoint_is_not_sharded_and_resolves_to_itself(tmp_path):
    cfg = tiny()
    save_model(tmp_path / "ckpt", build_model(cfg), cfg)
    assert not is_sharded_checkpoint(tmp_path / "ckpt")
    assert resolve_checkpoint(tmp_path / "ckpt") == tmp_path / "ckpt"
    with pytest.raises(UserError, match="no model checkpoint here"):
        resolve_checkpoint(tmp_path)
