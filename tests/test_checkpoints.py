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


def test_a_flipped_byte_in_the_weights_is_one_line_unless_verify_is_off(tmp_path):
    from lmforge.checkpoints import CHECKSUMS, CorruptCheckpoint, load_model, write_checksums
    from lmforge.models import build_model
    from lmforge.models.config import ModelConfig
    from lmforge.models.io import WEIGHTS, save_model

    cfg = ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, max_seq_len=32)
    path = save_model(tmp_path / "m", build_model(cfg), cfg)
    load_model(path)  # no checksums (as before they existed): loads, nothing to check
    write_checksums(path, [WEIGHTS])
    load_model(path)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-3] ^= 0x01
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint) as e:
        load_model(path)
    assert "\n" not in e.value.line() and WEIGHTS in e.value.line() and "sha256" in e.value.line()
    load_model(path, verify=False)
    (path / CHECKSUMS).unlink()
    load_model(path)
