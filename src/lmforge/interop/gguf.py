"""GGUF export: an lmforge decoder as one `.gguf` file that llama.cpp (and Ollama, which runs llama.cpp) reads.

    from lmforge.interop.gguf import export_gguf

    export_gguf("runs/train", "model-q8_0.gguf", "q8_0")

Written with the `gguf` package (llama.cpp's own Python writer and quantiser), on top of the Hugging Face export
mechanism: the checkpoint's tensors go through the family's table in `families.py` to Hugging Face names
(`to_hf_state`: q|k|v split for Llama, zero biases for a bias-free GPT-2), and `gguf`'s `TensorNameMap` gives each
its llama.cpp name, so there is no second name table here. What llama.cpp lays out differently from Hugging Face
is the only per-family code (`GGUF_FAMILIES`): GPT-2's Conv1D weights go back to the (out, in) layout, and Llama's
q/k rows are permuted from rotate-half RoPE to the adjacent pairs llama.cpp rotates.

The tokenizer is written as llama.cpp's `gpt2` tokenizer model (byte-level BPE): the tokens in their byte-to-unicode
spelling, the merges, a type per token (special tokens are CONTROL, ids past the tokenizer up to the embedding size
UNUSED) and the bos/eos/pad/unk ids; the pre-tokenizer is named `gpt-2`, the regex lmforge's byte-level BPE splits
words with. llama.cpp's own converter cannot do this for an lmforge tokenizer: it recognises a pre-tokenizer only by
the hash of a known vocabulary's encoding of a test string, and refuses any other.

Weights: f32, f16, q8_0 (blocks of 32 weights, one f16 scale each) or q4_0 (blocks of 32 4-bit weights, one f16
scale each; what `llama-quantize` writes for Q4_0, here every matrix in it, the embedding too). 1-D tensors (norms,
biases) stay f32 and a matrix whose rows are not a multiple of 32 stays f16 in a q8_0 or q4_0 file, as llama.cpp's
converter does.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lmforge.checkpoints import is_sharded_checkpoint, load_model, resolve_checkpoint, verify_checksums
from lmforge.compress.quantize import read_spec
from lmforge.errors import UserError
from lmforge.interop.families import Family
from lmforge.interop.hf import family_for_lmforge, load_tensors, meta_model, special_tokens, to_hf_state
from lmforge.models.config import ModelConfig
from lmforge.models.io import CONFIG, WEIGHTS, check_weights, state_dict_for_save
from lmforge.models.registry import Kind, describe, kind_of

if TYPE_CHECKING:
    import gguf

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
MAGIC = b"GGUF"
BLOCK = 32  # weights per q8_0 / q4_0 block: a row must hold a whole number of them


@dataclass(frozen=True)
class GGUFFamily:
    """What llama.cpp's architecture for one Hugging Face model type needs beyond the Hugging Face tensors."""

    arch: str  # gguf.MODEL_ARCH member name (GPT2, LLAMA)
    hyperparameters: Callable[[gguf.GGUFWriter, ModelConfig], None]
    # (Hugging Face tensor name, tensor) -> the tensor in llama.cpp's layout
    layout: Callable[[str, Tensor, ModelConfig], Tensor]
    unsupported: Callable[[ModelConfig], list[str]]


def _shape_hyperparameters(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    """The sizes every llama.cpp architecture reads."""
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)


def _gpt2_hyperparameters(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    _shape_hyperparameters(w, cfg)
    w.add_layer_norm_eps(cfg.norm_eps)


def _gpt2_layout(name: str, t: Tensor, cfg: ModelConfig) -> Tensor:
    # Hugging Face's GPT-2 stores its Conv1D weights as (in, out); llama.cpp, as nn.Linear, (out, in).
    if name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
        return t.T
    return t


def _gpt2_unsupported(cfg: ModelConfig) -> list[str]:
    # llama.cpp's gpt2 graph computes ggml_gelu, the tanh approximation.
    return [] if cfg.activation == "gelu_tanh" else [f"activation={cfg.activation} (llama.cpp's gpt2 runs gelu_tanh)"]


def _llama_hyperparameters(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    w.add_vocab_size(cfg.vocab_size)
    _shape_hyperparameters(w, cfg)
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    if cfg.head_dim * cfg.n_head != cfg.d_model:  # llama.cpp assumes d_model / n_head unless told
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)


def _rope_pairs_adjacent(t: Tensor, heads: int) -> Tensor:
    """Reorder each head's rows from rotate-half RoPE (dimension i pairs with i + d/2, as lmforge and Hugging Face
    rotate) to adjacent pairs (2i with 2i + 1, as llama.cpp's llama graph rotates): the same attention scores."""
    rows = t.shape[0]
    return t.reshape(heads, 2, rows // heads // 2, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _llama_layout(name: str, t: Tensor, cfg: ModelConfig) -> Tensor:
    if ".self_attn.q_proj." in name:
        return _rope_pairs_adjacent(t, cfg.n_head)
    if ".self_attn.k_proj." in name:
        return _rope_pairs_adjacent(t, cfg.n_kv_head)
    return t


def _llama_unsupported(cfg: ModelConfig) -> list[str]:
    # llama.cpp's llama graph computes SiLU in its gated MLP.
    return [] if cfg.activation == "silu" else [f"activation={cfg.activation} (llama.cpp's llama runs silu)"]


# Hugging Face model_type -> what llama.cpp needs. A family not here (bert, t5) is refused in one line.
GGUF_FAMILIES: dict[str, GGUFFamily] = {
    "gpt2": GGUFFamily("GPT2", _gpt2_hyperparameters, _gpt2_layout, _gpt2_unsupported),
    "llama": GGUFFamily("LLAMA", _llama_hyperparameters, _llama_layout, _llama_unsupported),
}


# --- checks --------------------------------------------------------------------------------------------------

def _gguf_family(cfg: ModelConfig, where: Path) -> tuple[Family, GGUFFamily]:
    """The export tables for `cfg`, or one line saying why llama.cpp cannot run it."""
    fix = "GGUF export writes causal language models of family gpt or llama (lmforge export --format hf for others)"
    if kind_of(cfg) != Kind.DECODER or cfg.head != "lm":
        raise UserError(f"GGUF export needs a decoder language model that llama.cpp can run; this checkpoint is "
                        f"{describe(cfg)}", where=where, fix=fix)
    family = family_for_lmforge(cfg)
    target = GGUF_FAMILIES.get(family.model_type)
    if target is None:
        raise UserError(f"llama.cpp has no architecture for {describe(cfg)}", where=where, fix=fix)
    problems = family.unsupported_export(cfg) + target.unsupported(cfg)
    if problems:
        raise UserError(f"llama.cpp's {target.arch.lower()} cannot express this model: {'; '.join(problems)}",
                        where=where, fix="only models that keep the standard layout export to GGUF")
    return family, target


@dataclass
class GGUFVocabulary:
    """A byte-level BPE tokenizer as llama.cpp's `gpt2` tokenizer model reads it."""

    tokens: list[str]  # index = token id, padded to the model's vocabulary size
    types: list[int]  # gguf.TokenType per token
    merges: list[str]  # "a b", in merge order
    special_ids: dict[str, int]  # role (bos, eos, pad, unk) -> id


def read_vocabulary(ckpt: Path, vocab_size: int) -> GGUFVocabulary:
    """The checkpoint's tokenizer.json in llama.cpp's terms; one line for a tokenizer llama.cpp cannot run."""
    import gguf

    path = ckpt / "tokenizer.json"
    if not path.is_file():
        raise UserError("no tokenizer.json beside the weights: llama.cpp needs the vocabulary in the GGUF file",
                        where=ckpt, fix="put the run's tokenizer (OUT/tokenizer/tokenizer.json) beside the weights")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    byte_level = (model.get("type") == "BPE" and model.get("merges") and pre.get("type") == "ByteLevel"
                  and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
                  and spec.get("normalizer") is None)
    if not byte_level:
        kind = "char" if model.get("type") == "BPE" and not model.get("merges") else str(model.get("type")).lower()
        raise UserError(f"llama.cpp reads byte-level BPE tokenizers (GPT-2's pre-tokenizer, no normalizer); this "
                        f"checkpoint's tokenizer is {kind}", where=path,
                        fix="train the model on data prepared with --tokenizer.kind bpe")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: (t["id"], bool(t.get("special"))) for t in spec.get("added_tokens") or []}
    for token, (i, _) in added.items():
        vocab[token] = i
    if max(vocab.values()) >= vocab_size:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())}, past the model's vocabulary of "
                        f"{vocab_size}", where=path, fix="put the model's own tokenizer beside the weights")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # ids no token uses (an embedding rounded up)
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token, i in vocab.items():
        tokens[i] = token
        special = added.get(token, (i, False))[1]
        types[i] = int(gguf.TokenType.CONTROL if special else
                       gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    roles = {role: i for role, (_, i) in special_tokens(ckpt).items() if role in ("bos", "eos", "pad", "unk")}
    return GGUFVocabulary(tokens, types, merges, roles)


# --- writing -------------------------------------------------------------------------------------------------

def _tensor_data(t: Tensor, gguf_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """A tensor's bytes in the file's type: 1-D tensors f32 always; q8_0 / q4_0 only for rows of whole blocks."""
    import gguf

    array = t.detach().to(torch.float32).numpy()
    if array.ndim == 1 or gguf_type == "f32":
        return array, gguf.GGMLQuantizationType.F32
    blocked = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(gguf_type)
    if blocked is not None and array.shape[-1] % BLOCK == 0:
        return gguf.quants.quantize(array, blocked), blocked
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16


def _file_type(gguf_type: str) -> int:
    import gguf

    return int({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type])


def _read_state(ckpt: Path, cfg: ModelConfig) -> dict[str, Tensor]:
    if is_sharded_checkpoint(ckpt):  # torch.distributed.checkpoint shards: gathered into one model here
        return state_dict_for_save(load_model(ckpt)[0])
    if not (ckpt / WEIGHTS).is_file():
        raise UserError("model weights not found", where=ckpt / WEIGHTS, fix="re-save the checkpoint")
    verify_checksums(ckpt, [WEIGHTS])
    state = load_tensors(ckpt / WEIGHTS)
    check_weights(meta_model(cfg), state, ckpt / WEIGHTS)
    return state


def _check_out_file(out: Path) -> None:
    """Replace only an earlier GGUF file: never a directory, never another file."""
    if out.is_dir():
        raise UserError("the output path is a directory; GGUF export writes one file", where=out,
                        fix="pass --out FILE.gguf")
    if out.exists():
        with open(out, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise UserError("output file exists and is not a GGUF file; refusing to replace it", where=out,
                                fix="choose a new --out, or remove it first")


def export_gguf(checkpoint_dir: str | Path, out_file: str | Path, gguf_type: str = "f16") -> Path:
    """Write the lmforge checkpoint `checkpoint_dir` (or a run directory's best) as the GGUF file `out_file`."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type '{gguf_type}'", fix=f"choose one of {', '.join(GGUF_TYPES)}")
    ckpt, out = resolve_checkpoint(checkpoint_dir), Path(out_file)
    cfg = ModelConfig.load(ckpt / CONFIG)
    family, target = _gguf_family(cfg, ckpt)
    if read_spec(ckpt) is not None:
        raise UserError("this checkpoint is quantised by `lmforge quantize`; GGUF export reads float weights",
                        where=ckpt, fix="export the float checkpoint it came from (--gguf-type q8_0 quantises it "
                                        "the way llama.cpp runs)")
    _check_out_file(out)
    vocab = read_vocabulary(ckpt, cfg.vocab_size)
    hf_state = to_hf_state(family, cfg, _read_state(ckpt, cfg))
    arch = gguf.MODEL_ARCH[target.arch]
    names = gguf.get_tensor_name_map(arch, cfg.n_layer)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_name(ckpt.name)
        writer.add_file_type(_file_type(gguf_type))
        target.hyperparameters(writer, cfg)
        _write_vocabulary(writer, vocab)
        for hf_name, t in hf_state.items():
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:  # the families table and gguf's map disagree: a bug, not the user's doing
                raise RuntimeError(f"gguf has no {target.arch} name for {hf_name}")
            data, qtype = _tensor_data(target.layout(hf_name, t, cfg), gguf_type)
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as e:
        from lmforge.atomic import disk_full_error, is_disk_full

        if is_disk_full(e, out.parent):
            raise disk_full_error(out, "a GGUF file") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_vocabulary(writer: gguf.GGUFWriter, vocab: GGUFVocabulary) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 word-splitting regex of lmforge's ByteLevel pre-tokenizer
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders: dict[str, Callable[[int], None]] = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
                                                "pad": writer.add_pad_token_id, "unk": writer.add_unk_token_id}
    for role, token_id in vocab.special_ids.items():
        adders[role](token_id)
    # lmforge frames a text as `<eos> text` (registry.text_frame), never with <bos>: llama.cpp must not add one.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def gguf_summary(path: str | Path) -> dict[str, Any]:
    """What a GGUF file holds, read back with `gguf.GGUFReader`: architecture, tensor count, vocabulary size."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    return {"architecture": bytes(arch.parts[arch.data[0]]).decode(), "tensors": len(reader.tensors),
            "vocabulary": len(reader.fields["tokenizer.ggml.tokens"].data),
            "bytes": Path(path).stat().st_size}


__all__ = ["GGUF_FAMILIES", "GGUF_TYPES", "GGUFVocabulary", "export_gguf", "gguf_summary", "read_vocabulary"]
