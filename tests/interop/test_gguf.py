"""GGUF export, read back with the `gguf` package (llama.cpp's own reader) and loaded by transformers' GGUF loader,
which undoes llama.cpp's layouts (GPT-2's transposes, Llama's q/k RoPE permutation): its logits must be lmforge's.

Every model is tiny, random and built in the test, with the real byte-level BPE tokenizer of `tiny_data`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from lmforge.cli.main import main  # noqa: E402
from lmforge.data.tokenizer import load_tokenizer  # noqa: E402
from lmforge.errors import UserError  # noqa: E402
from lmforge.interop.gguf import export_gguf  # noqa: E402
from lmforge.models import ModelConfig, build_model  # noqa: E402
from lmforge.models.io import save_model  # noqa: E402

VARIANTS = {
    "gpt": dict(family="gpt", activation="gelu_tanh"),
    "gpt-no-bias-untied": dict(family="gpt", activation="gelu_tanh", bias=False, tie_embeddings=False),
    "llama-gqa": dict(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope", bias=False,
                      tie_embeddings=False, n_kv_head=2, d_ff=96, rope_theta=500.0),
}


def checkpoint(tmp_path: Path, tiny_data: Path, variant: str = "gpt", **kw) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    vocab = load_tokenizer(tiny_data).get_vocab_size()
    cfg = ModelConfig(**{**dict(vocab_size=vocab, max_seq_len=32, n_layer=2, n_head=4, d_model=64, init_std=0.1),
                         **VARIANTS.get(variant, {}), **kw})
    model = build_model(cfg).eval()
    with torch.no_grad():  # norms and biases off their initial values, so a dropped one shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return save_model(tmp_path / variant, model, cfg, tiny_data), model


def field_value(reader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0", "q4_0"])
def test_every_tensor_and_the_vocabulary_read_back(tmp_path, tiny_data, gguf_type):
    ckpt, model = checkpoint(tmp_path, tiny_data, "gpt")
    out = export_gguf(ckpt, tmp_path / "m.gguf", gguf_type)
    reader = gguf.GGUFReader(str(out))
    tensors = {t.name: t for t in reader.tensors}
    cfg = model.cfg
    expected = {"token_embd.weight": (cfg.vocab_size, 64), "position_embd.weight": (32, 64),
                "output_norm.weight": (64,), "output_norm.bias": (64,)}
    for i in range(2):
        expected |= {f"blk.{i}.attn_qkv.weight": (192, 64), f"blk.{i}.attn_qkv.bias": (192,),
                     f"blk.{i}.attn_output.weight": (64, 64), f"blk.{i}.ffn_up.weight": (256, 64),
                     f"blk.{i}.ffn_down.weight": (64, 256), f"blk.{i}.attn_norm.weight": (64,),
                     f"blk.{i}.ffn_norm.bias": (64,)}
    for name, shape in expected.items():
        assert tuple(reversed(tensors[name].shape.tolist())) == shape, name  # ggml lists dimensions innermost first
    assert len(tensors) == 4 + 12 * 2  # every tensor: 12 per GPT-2 block; the tied output shares token_embd
    matrix_type = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                   "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[gguf_type]
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == matrix_type
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    # values: the qkv matrix as nn.Linear stores it (out, in), within the type's rounding
    qkv = gguf.quants.dequantize(tensors["blk.0.attn_qkv.weight"].data, tensors["blk.0.attn_qkv.weight"].tensor_type)
    ours = model.blocks[0].attn.wqkv.weight.detach().numpy()
    # q4_0: up to one step (a block's largest magnitude / 8): the side opposite the largest clips at 7 steps
    tol = {"f32": 1e-7, "f16": 1e-3, "q8_0": 2e-2, "q4_0": 0.13}[gguf_type]
    np.testing.assert_allclose(qkv.reshape(ours.shape), ours, atol=tol * np.abs(ours).max())

    assert field_value(reader, "general.architecture") == "gpt2"
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type]
    assert field_value(reader, "general.file_type") == int(file_type)
    assert field_value(reader, "gpt2.block_count") == 2
    assert field_value(reader, "gpt2.context_length") == 32
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert field_value(reader, "tokenizer.ggml.pre") == "gpt-2"
    spec = json.loads((tiny_data / "tokenizer.json").read_text())
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    assert len(tokens) == cfg.vocab_size and all(tokens[i] == t for t, i in vocab.items())
    merges = field_value(reader, "tokenizer.ggml.merges")
    assert merges == [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    types = field_value(reader, "tokenizer.ggml.token_type")
    eos = vocab["<eos>"]
    assert types[eos] == gguf.TokenType.CONTROL and types[vocab["Ġthe"]] == gguf.TokenType.NORMAL
    assert field_value(reader, "tokenizer.ggml.eos_token_id") == eos
    assert field_value(reader, "tokenizer.ggml.bos_token_id") == vocab["<bos>"]
    assert field_value(reader, "tokenizer.ggml.padding_token_id") == vocab["<pad>"]
    assert field_value(reader, "tokenizer.ggml.add_bos_token") is False


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_transformers_gguf_loader_computes_lmforges_logits(tmp_path, tiny_data, variant):
    transformers = pytest.importorskip("transformers")
    ckpt, model = checkpoint(tmp_path, tiny_data, variant)
    out = export_gguf(ckpt, tmp_path / "gguf" / "m.gguf", "f32")
    # transformers reads gpt2.context_length into n_ctx only; its position table is sized by n_positions
    positions = {"n_positions": model.cfg.max_seq_len} if model.cfg.pos == "learned" else {}
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name,
                                                               **positions).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_cli_writes_the_file_and_says_so(tmp_path, tiny_data, capsys):
    ckpt, _ = checkpoint(tmp_path, tiny_data, "llama-gqa")
    out = tmp_path / "llama.gguf"
    assert main(["export", str(ckpt), "--format", "gguf", "--gguf-type", "q8_0", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "llama, q8_0, 21 tensors" in line and out.is_file()
    assert main(["export", str(ckpt), "--format", "gguf", "--out", str(out)]) == 0  # replaces its own file


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_families_llamacpp_cannot_run_are_one_line(tmp_path, tiny_data, capsys):
    vocab = load_tokenizer(tiny_data).get_vocab_size()
    for preset, phrase in (("bert-tiny", "this checkpoint is a bert encoder"),
                           ("t5-tiny", "this checkpoint is a t5 encoder-decoder"),
                           ("lstm-tiny", "this checkpoint is a lstm recurrent model")):
        from lmforge.models.config import get_preset

        cfg = dataclasses.replace(get_preset(preset), vocab_size=vocab, max_seq_len=16)
        ckpt = save_model(tmp_path / preset, build_model(cfg), cfg, tiny_data)
        err = one_line_error(capsys, "export", str(ckpt), "--format", "gguf", "--out", str(tmp_path / "x.gguf"))
        assert phrase in err and "gpt or llama" in err
    assert not (tmp_path / "x.gguf").exists()


def test_what_llamacpp_cannot_express_is_one_line(tmp_path, tiny_data, capsys):
    ckpt, _ = checkpoint(tmp_path, tiny_data, "gelu", family="gpt", activation="gelu")
    err = one_line_error(capsys, "export", str(ckpt), "--format", "gguf", "--out", str(tmp_path / "x.gguf"))
    assert "activation=gelu (llama.cpp's gpt2 runs gelu_tanh)" in err


def test_a_tokenizer_llamacpp_cannot_read_is_one_line(tmp_path, tiny_data, capsys):
    from conftest import prepare_tiny

    (tmp_path / "char").mkdir()
    char_data = prepare_tiny(tmp_path / "char", kind="char", docs=50)
    ckpt, _ = checkpoint(tmp_path, char_data, "gpt")
    err = one_line_error(capsys, "export", str(ckpt), "--format", "gguf", "--out", str(tmp_path / "x.gguf"))
    assert "llama.cpp reads byte-level BPE tokenizers" in err and "tokenizer is char" in err
    (ckpt / "tokenizer.json").unlink()
    err = one_line_error(capsys, "export", str(ckpt), "--format", "gguf", "--out", str(tmp_path / "x.gguf"))
    assert "no tokenizer.json beside the weights" in err


def test_an_output_that_is_not_gguf_is_never_replaced(tmp_path, tiny_data, capsys):
    ckpt, _ = checkpoint(tmp_path, tiny_data, "gpt")
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    err = one_line_error(capsys, "export", str(ckpt), "--format", "gguf", "--out", str(precious))
    assert "not a GGUF file" in err and precious.read_text() == "keep me"
    err = one_line_error(capsys, "export", str(ckpt), "--format", "gguf", "--out", str(tmp_path))
    assert "is a directory" in err
    with pytest.raises(UserError, match="unknown GGUF type 'q4_k'"):
        export_gguf(ckpt, tmp_path / "m.gguf", "q4_k")


def test_a_quantised_checkpoint_is_refused_in_one_line(tmp_path, tiny_data, capsys):
    from lmforge.checkpoints import load_model
    from lmforge.compress.quantize import QuantizationSpec, quantize_model, save_quantized

    ckpt, _ = checkpoint(tmp_path, tiny_data, "gpt")
    model, cfg = load_model(ckpt)
    q8 = save_quantized(tmp_path / "q8", model, cfg, quantize_model(model, QuantizationSpec()), ckpt)
    err = one_line_error(capsys, "export", str(q8), "--format", "gguf", "--out", str(tmp_path / "x.gguf"))
    assert "quantised by `lmforge quantize`" in err and "export the float checkpoint" in err
