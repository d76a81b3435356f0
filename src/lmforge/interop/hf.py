"""Hugging Face interop: an lmforge checkpoint <-> a Hugging Face model directory.

One mechanism for every family (torchtitan's state-dict-adapter idea): it reads the weights, walks the family's
table from `families.py` to rename, fuse or split and transpose tensors, maps the config, and writes the other
side's files atomically. It knows no family; a family is a table.

A model's task head (`ModelConfig.head`) picks the Hugging Face class on export (a `classify` GPT-2 becomes
`GPT2ForSequenceClassification`), and `architectures[0]` of config.json picks the head on import; the table is
then the family's backbone rules plus the head's (`Family.rules`).

An exported directory holds `config.json`, `model.safetensors`, `generation_config.json` (heads that generate)
and the tokenizer files, so the head's `transformers` Auto class (`AutoModelForCausalLM`,
`AutoModelForPreTraining`, `AutoModelForSeq2SeqLM`, `AutoModelForSequenceClassification`,
`AutoModelForQuestionAnswering`) and `AutoTokenizer` load it with no custom code, and tools that read Hugging Face
directories (vLLM, TGI, llama.cpp's `convert_hf_to_gguf.py`) can take it. Neither direction needs `transformers`
itself: both sides are safetensors and JSON.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pickle
import shutil
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_directory, disk_full_as_user_error, write_json
from lmforge.checkpoints import (
    is_adapter_checkpoint,
    is_sharded_checkpoint,
    load_checkpoint_tokenizer,
    load_model,
    resolve_checkpoint,
    verify_checksums,
)
from lmforge.data.tokenizer import decoder_start_id
from lmforge.errors import UserError
from lmforge.interop.families import FAMILIES, Family, Head, Rule
from lmforge.locks import DirectoryLock
from lmforge.models.config import ModelConfig
from lmforge.models.heads import pooling
from lmforge.models.io import CONFIG, TOKENIZER_FILES, WEIGHTS, check_weights, state_dict_for_save, tied_names

HF_CONFIG, HF_WEIGHTS, HF_GENERATION = "config.json", "model.safetensors", "generation_config.json"
# Special-token roles written to the tokenizer configs (lmforge spells them `<bos>`, ...); the first three are also
# the model's bos/eos/pad ids in config.json and generation_config.json.
SPECIAL_ROLES = ("bos", "eos", "pad", "unk", "mask", "sep", "cls")
MODEL_ROLES = ("bos", "eos", "pad")


# --- families ------------------------------------------------------------------------------------------------

def family_for_lmforge(cfg: ModelConfig) -> Family:
    for family in FAMILIES:
        if family.lmforge_family == cfg.family:
            return family
    raise UserError(f"lmforge family '{cfg.family}' has no Hugging Face export yet",
                    fix=f"export one of: {', '.join(f.lmforge_family for f in FAMILIES)}")


def family_for_hf(hf_config: dict[str, Any], where: Path) -> Family:
    model_type = hf_config.get("model_type")
    if model_type is None:
        raise UserError("config.json has no model_type: not a Hugging Face model directory", where=where,
                        fix="lmforge checkpoints need no import; pass a directory saved by transformers")
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    raise UserError(f"Hugging Face model_type '{model_type}' is not supported", where=where,
                    fix=f"lmforge imports: {', '.join(f.model_type for f in FAMILIES)}")


def head_for_lmforge(family: Family, cfg: ModelConfig) -> Head:
    """The Hugging Face class of a model's task head (export)."""
    if cfg.head not in family.heads:
        raise UserError(f"a {cfg.family} model with a {cfg.head} head has no Hugging Face class to export to",
                        fix=f"{family.model_type} exports the heads: {', '.join(family.heads)}")
    return family.heads[cfg.head]


def head_for_hf(family: Family, hf_config: dict[str, Any], where: Path) -> str:
    """The task head (`ModelConfig.head`) of a Hugging Face directory, from `architectures[0]` (import)."""
    architectures = hf_config.get("architectures") or []
    if not architectures:  # a config written by hand or by a tool that leaves the class out: a language model
        return "lm"
    head = family.head_for_architecture(architectures[0])
    if head is None:
        raise UserError(f"Hugging Face architecture '{architectures[0]}' is not supported", where=where,
                        fix=f"lmforge imports {family.model_type} as: {', '.join(family.architectures())}")
    return head


def name_rules(family: Family, cfg: ModelConfig) -> Iterator[tuple[Rule, str, tuple[str, ...], tuple[str, ...]]]:
    """The rules that hold for `cfg`, each once per value of its placeholders: (rule, lmforge name, Hugging Face
    names, Hugging Face copies)."""
    counts = family.layers(cfg)
    for rule in family.rules(cfg.head):
        if rule.when is not None and not rule.when(cfg):
            continue
        keys = sorted({key for _, key, _, _ in string.Formatter().parse(rule.ours) if key})
        for values in itertools.product(*(range(counts[k]) for k in keys)):
            sub = dict(zip(keys, values))
            yield (rule, rule.ours.format(**sub), tuple(t.format(**sub) for t in rule.theirs),
                   tuple(t.format(**sub) for t in rule.also))


def meta_model(cfg: ModelConfig) -> nn.Module:
    from lmforge.models import build_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build_model(cfg)


def _hf_name(family: Family, cfg: ModelConfig, ours: str) -> str | None:
    return next((theirs[0] for _, name, theirs, _ in name_rules(family, cfg) if name == ours), None)


# --- tensors -------------------------------------------------------------------------------------------------

def to_hf_state(family: Family, cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """lmforge tensors -> Hugging Face tensors (names, fused q|k|v split, Conv1D transposed)."""
    remaining = dict(state)
    hf_ties = family.config_to_hf(cfg).get("tie_word_embeddings", cfg.tie_embeddings)
    for copy, source in tied_names(meta_model(cfg)).items():
        if hf_ties:
            remaining.pop(copy, None)  # the Hugging Face model ties it again from tie_word_embeddings
        else:
            remaining[copy] = state[source]  # tied here, not there (T5 without output scaling): write a copy
    dtype = state["embed.tok.weight"].dtype
    out: dict[str, Tensor] = {}
    for rule, ours, theirs, also in name_rules(family, cfg):
        t = remaining.pop(ours, None)
        if t is None and family.zero_missing_bias and ours.endswith(".bias"):
            weight = state.get(ours.removesuffix("bias") + "weight")
            t = None if weight is None else weight.new_zeros(weight.shape[0])  # a zero bias adds nothing
        if t is None and rule.zeros is not None:
            t = torch.zeros(rule.zeros(cfg), dtype=dtype)
        if t is None:
            continue  # not in this config (no biases, no gate, tied head)
        parts = t.split(rule.split(cfg), dim=0) if rule.split else (t,)
        for name, part in zip(theirs, parts, strict=True):
            # clone: slices of one fused tensor share storage, which safetensors refuses to write
            out[name] = (part.T if rule.transpose else part).contiguous().clone()
        for name in also:
            out[name] = out[theirs[0]].clone()
    if remaining:  # check_weights passed, so the family's table is incomplete: a bug, not the user's doing
        raise RuntimeError(f"the {family.model_type} table maps no Hugging Face name for {sorted(remaining)}")
    return out


def normalize_hf_state(family: Family, hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Today's Hugging Face names: buffers dropped, old spellings renamed, the base-model prefix added back."""
    state = {}
    for name, t in hf_state.items():
        if name.endswith(family.hf_ignore):
            continue
        for old, new in family.hf_renames:
            if name.endswith(old):
                name = name.removesuffix(old) + new
        state[name] = t
    if family.hf_prefix and not any(k.startswith(family.hf_prefix) for k in state):
        state = {family.hf_prefix + k: v for k, v in state.items()}  # saved from the base model class
    return state


def untie_if_distinct(family: Family, cfg: ModelConfig, hf_state: dict[str, Tensor]) -> ModelConfig:
    """A config that ties the output projection, over weights holding a different one: untied, as transformers
    loads it (transformers 5 saves T5 v1.1 that way)."""
    if not cfg.tie_embeddings:
        return cfg
    for copy, source in tied_names(meta_model(cfg)).items():
        a, b = hf_state.get(_hf_name(family, cfg, copy) or ""), hf_state.get(_hf_name(family, cfg, source) or "")
        if a is not None and b is not None and not torch.equal(a, b):
            return dataclasses.replace(cfg, tie_embeddings=False)
    return cfg


def from_hf_state(family: Family, cfg: ModelConfig, hf_state: dict[str, Tensor], where: Path) -> dict[str, Tensor]:
    """Hugging Face tensors (normalized) -> lmforge tensors (the inverse of `to_hf_state`)."""
    remaining = dict(hf_state)
    if cfg.tie_embeddings:
        for copy in tied_names(meta_model(cfg)):
            remaining.pop(_hf_name(family, cfg, copy) or "", None)  # a stored copy of the tied embedding
    out: dict[str, Tensor] = {}
    for rule, ours, theirs, also in name_rules(family, cfg):
        present = [name for name in theirs if name in remaining]
        if not present:
            theirs = tuple(name for name in also if name in remaining)[:1]  # a copy stands in for the original
            present = list(theirs)
        for name in also:
            if name not in theirs:
                remaining.pop(name, None)
        if not present:
            continue
        if len(present) != len(theirs):
            missing = ", ".join(n for n in theirs if n not in remaining)
            raise UserError(f"weights are incomplete: {missing} missing", where=where)
        parts = [remaining.pop(name) for name in theirs]
        parts = [p.T if rule.transpose else p for p in parts]
        out[ours] = (torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]).contiguous()
    if remaining:
        raise UserError(f"weights lmforge's {family.model_type} import does not know: "
                        f"{', '.join(sorted(remaining)[:4])}{' ...' if len(remaining) > 4 else ''}", where=where,
                        fix=f"only {family.heads[cfg.head].architecture} checkpoints are supported")
    return out


def load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)  # weights_only: never runs pickled code
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"model weights are unreadable or truncated ({e})", where=path) from None


def read_hf_weights(hf_dir: Path) -> dict[str, Tensor]:
    """All tensors of a Hugging Face directory: one file, or shards listed in an index."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (hf_dir / single).is_file():
            return load_tensors(hf_dir / single)
        if (hf_dir / index).is_file():
            weight_map = _read_json(hf_dir / index).get("weight_map", {})
            state: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(load_tensors(hf_dir / shard))
            return state
    raise UserError("no model weights found", where=hf_dir,
                    fix="expected model.safetensors (or a sharded index) or pytorch_model.bin")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.name} not found", where=path.parent,
                        fix="point at a model directory that holds config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON ({e})", where=path) from None
    if not isinstance(data, dict):
        raise UserError("expected a JSON object", where=path)
    return data


# --- tokenizer -----------------------------------------------------------------------------------------------

def special_tokens(tokenizer_dir: Path) -> dict[str, tuple[str, int]]:
    """role -> (token, id) for the special tokens (SPECIAL_ROLES) the tokenizer has.

    A role named in `special_tokens_map.json` / `tokenizer_config.json` wins; otherwise lmforge's own names
    (`<bos>`, `<eos>`, `<pad>`, `<unk>`, `<mask>`, `<sep>`, `<cls>`) are looked up in the vocabulary.
    """
    if not (tokenizer_dir / "tokenizer.json").is_file():
        return {}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    declared: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            declared.update(_read_json(tokenizer_dir / name))
    found = {}
    for role in SPECIAL_ROLES:
        token = declared.get(f"{role}_token") or f"<{role}>"
        if isinstance(token, dict):  # {"content": "<bos>", ...} as transformers writes AddedToken
            token = token.get("content")
        token_id = tok.token_to_id(token) if isinstance(token, str) else None
        if token_id is not None:
            found[role] = (token, token_id)
    return found


def _write_hf_tokenizer(src: Path, dst: Path, specials: dict[str, tuple[str, int]], cfg: ModelConfig) -> None:
    """tokenizer.json as is, plus the configs `AutoTokenizer` needs to build a fast tokenizer from it."""
    if not (src / "tokenizer.json").is_file():
        return
    shutil.copy2(src / "tokenizer.json", dst / "tokenizer.json")
    config = _read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
    roles = {f"{role}_token": token for role, (token, _) in specials.items()}
    config.update(roles, tokenizer_class="PreTrainedTokenizerFast", model_max_length=cfg.max_seq_len,
                  clean_up_tokenization_spaces=False)  # decode exactly what tokenizers decodes
    if cfg.type_vocab_size:  # the fast tokenizer returns the template's segment ids only when asked to
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    write_json(dst / "tokenizer_config.json", config)
    write_json(dst / "special_tokens_map.json", roles)


def _copy_lmforge_tokenizer(hf_dir: Path, dst: Path) -> None:
    """Copy the tokenizer files lmforge reads, when the directory has a tokenizer.json.

    Slow-only tokenizers (vocab.json + merges.txt, tokenizer.model) are not converted here: loading one with
    `transformers.AutoTokenizer` and `save_pretrained` writes the tokenizer.json.
    """
    if (hf_dir / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (hf_dir / name).is_file():
                shutil.copy2(hf_dir / name, dst / name)


# --- directories ---------------------------------------------------------------------------------------------

def _bytes(state: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _check_out_dir(out: Path, src: Path) -> None:
    """atomic_directory replaces `out` wholesale: only ever replace an earlier model directory."""
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise UserError("the output directory would replace the input", where=out, fix="choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise UserError("output path exists and is not a model directory; refusing to replace it", where=out,
                        fix="choose a new --out, or remove it first")


def token_ids(config: dict[str, Any], specials: dict[str, tuple[str, int]]) -> dict[str, int | None]:
    """bos/eos/pad ids (and, for an encoder-decoder, the decoder's start id) for config.json and generation."""
    ids = {f"{role}_token_id": specials[role][1] if role in specials else None for role in MODEL_ROLES}
    if config.get("is_encoder_decoder"):
        # The token lmforge trained the decoder to start from. With no tokenizer to look in (a bare weights dir,
        # or none of <pad>/<bos>/<eos>), 0: T5's pad id and the first special token of every lmforge tokenizer.
        try:
            ids["decoder_start_token_id"] = decoder_start_id({role: i for role, (_, i) in specials.items()})
        except KeyError:
            ids["decoder_start_token_id"] = 0
    return ids


def hf_config(family: Family, cfg: ModelConfig, specials: dict[str, tuple[str, int]], dtype: torch.dtype
              ) -> dict[str, Any]:
    head = head_for_lmforge(family, cfg)
    config = {**family.config_to_hf(cfg), **head.config_to_hf(cfg)}
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": [head.architecture],
        "model_type": family.model_type,
        **config,
        # Written even when None: the Hugging Face config classes default to their own ids (GPT-2: 50256),
        # which may not even exist in this vocabulary.
        **token_ids(config, specials),
        "dtype": dtype_name,
        "torch_dtype": dtype_name,  # the name older transformers and other readers look for
        "use_cache": True,
    }


def export_hf(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the lmforge checkpoint `checkpoint_dir` as a Hugging Face model directory `out_dir`.

    `checkpoint_dir` may also be a training run directory (its best checkpoint, else its latest).
    """
    ckpt, out = resolve_checkpoint(checkpoint_dir), Path(out_dir)
    cfg = ModelConfig.load(ckpt / CONFIG)
    family = family_for_lmforge(cfg)
    head = head_for_lmforge(family, cfg)
    problems = family.unsupported_export(cfg)
    if cfg.head == "classify" and pooling(cfg) != pooling(dataclasses.replace(cfg, pooling="auto")):
        problems.append(f"pooling={cfg.pooling} ({head.architecture} pools its fixed way: leave pooling auto)")
    if problems:
        raise UserError(f"{head.architecture} cannot express this model: {'; '.join(problems)}", where=ckpt,
                        fix=f"only models that keep the {family.model_type} layout export to Hugging Face")
    _check_out_dir(out, ckpt)
    if (ckpt / "tokenizer.json").is_file():  # a tokenizer that does not fit the model would be exported with it
        load_checkpoint_tokenizer(ckpt, cfg)
    if is_sharded_checkpoint(ckpt) or is_adapter_checkpoint(ckpt):  # shards gathered, or an adapter merged
        state = state_dict_for_save(load_model(ckpt)[0])
    elif (ckpt / WEIGHTS).is_file():
        verify_checksums(ckpt, [WEIGHTS])
        state = load_tensors(ckpt / WEIGHTS)
    else:
        raise UserError("model weights not found", where=ckpt / WEIGHTS, fix="re-save the checkpoint")
    check_weights(meta_model(cfg), state, ckpt / WEIGHTS)
    hf_state = to_hf_state(family, cfg, state)
    specials = special_tokens(ckpt)
    config = hf_config(family, cfg, specials, state["embed.tok.weight"].dtype)
    with DirectoryLock(out, "export"), disk_full_as_user_error(out, "a Hugging Face model", _bytes(hf_state)), \
            atomic_directory(out) as tmp:
        save_file(hf_state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})  # transformers wants "pt"
        write_json(tmp / HF_CONFIG, config)
        if head.generates:
            write_json(tmp / HF_GENERATION, {k: v for k, v in token_ids(config, specials).items() if v is not None})
        _write_hf_tokenizer(ckpt, tmp, specials, cfg)
    return out


def loader_hint(hf_dir: str | Path) -> str:
    """How to load an exported directory, for messages: `transformers.AutoModelFor...from_pretrained`."""
    where = Path(hf_dir) / HF_CONFIG
    config = _read_json(where)
    family = family_for_hf(config, where)
    return f"transformers.{family.heads[head_for_hf(family, config, where)].auto_class}.from_pretrained"


def fill_optional(family: Family, cfg: ModelConfig, state: dict[str, Tensor]) -> list[str]:
    """Add the optional heads (`Head.optional`) the checkpoint lacks, initialised as lmforge initialises them.

    Returns the heads added, e.g. ["pooler", "nsp_head"] for a BertForMaskedLM checkpoint.
    """
    tied = tied_names(meta_model(cfg))
    expected = [k for k in meta_model(cfg).state_dict() if k not in tied]
    optional = family.heads[cfg.head].optional
    absent = [k for k in expected if k not in state and k.startswith(optional)]
    if not absent:
        return []
    from lmforge.models import build_model

    fresh = build_model(cfg).state_dict()
    state.update({k: fresh[k] for k in absent})
    return [prefix.rstrip(".") for prefix in optional if any(k.startswith(prefix) for k in absent)]


def is_hf_directory(path: str | Path) -> bool:
    """A Hugging Face model directory (its config.json names a `model_type`), not an lmforge checkpoint."""
    config = Path(path) / HF_CONFIG
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_hf_config(hf_dir: str | Path) -> ModelConfig:
    """The lmforge config of a Hugging Face model directory, with the task head its class carries (one line for
    what lmforge cannot express)."""
    src = Path(hf_dir)
    config = _read_json(src / HF_CONFIG)
    family = family_for_hf(config, src / HF_CONFIG)
    name = head_for_hf(family, config, src / HF_CONFIG)
    head = family.heads[name]
    problems = family.unsupported_import(config) + head.unsupported_import(config)
    if problems:
        raise UserError(f"lmforge cannot express this {family.model_type} model: {'; '.join(problems)}",
                        where=src / HF_CONFIG, fix="only the standard architecture imports")
    try:
        cfg = family.config_from_hf(config)
    except KeyError as e:
        raise UserError(f"config.json lacks {e}", where=src / HF_CONFIG) from None
    return dataclasses.replace(cfg, head=name, **head.config_from_hf(config))


def read_hf_model(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, Tensor], list[str]]:
    """A Hugging Face model directory in lmforge's terms: (config, with the head and labels of its class; tensors
    by lmforge name; optional heads the directory lacked and that were initialised fresh). The weights are
    checked against the config."""
    src = Path(hf_dir)
    if not src.is_dir():
        raise UserError("Hugging Face model directory not found", where=src,
                        fix="pass a directory holding config.json and model.safetensors")
    cfg = read_hf_config(src)
    family = family_for_hf(_read_json(src / HF_CONFIG), src / HF_CONFIG)
    hf_state = normalize_hf_state(family, read_hf_weights(src))
    cfg = untie_if_distinct(family, cfg, hf_state)
    state = from_hf_state(family, cfg, hf_state, src)
    added = fill_optional(family, cfg, state)
    check_weights(meta_model(cfg), state, src)
    return cfg, state, added


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the Hugging Face model directory `hf_dir` as an lmforge checkpoint `out_dir`."""
    src, out = Path(hf_dir), Path(out_dir)
    if not src.is_dir():
        raise UserError("Hugging Face model directory not found", where=src,
                        fix="pass a directory holding config.json and model.safetensors")
    read_hf_config(src)  # what lmforge cannot express is refused before the output is looked at
    _check_out_dir(out, src)
    cfg, state, added = read_hf_model(src)
    if added:
        from lmforge.progress import console

        console.print(f"note: {src} has no {', '.join(added)} weights: initialised randomly (fine-tune before "
                      "using them)", markup=False, highlight=False, soft_wrap=True)
    with DirectoryLock(out, "import"), disk_full_as_user_error(out, "a model checkpoint", _bytes(state)), \
            atomic_directory(out) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        cfg.save(tmp / CONFIG)
        _copy_lmforge_tokenizer(src, tmp)
    return out
