"""Hugging Face interop for the encoder (BERT) and encoder-decoder (T5) families, pinned against `transformers`.

Every model is tiny, random and built in the test (nothing is downloaded); the lmforge side starts from the
`bert-tiny` / `t5-tiny` presets, shrunk. Norm weights and biases are moved away from their initial 1 / 0 so that a
swapped or dropped tensor shows in the logits.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from lmforge.checkpoints import load_model  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.data.builtin import python_docs  # noqa: E402
from lmforge.data.tokenizer import TokenizerOptions, save_tokenizer, train_tokenizer  # noqa: E402
from lmforge.errors import UserError  # noqa: E402
from lmforge.interop import export_hf, import_hf  # noqa: E402
from lmforge.interop.hf import read_hf_model  # noqa: E402
from lmforge.models import ModelConfig, build_model, get_preset  # noqa: E402
from lmforge.models.io import save_model  # noqa: E402

VOCAB, SEQ = 97, 32
TOL = 1e-4
SMALL = dict(vocab_size=VOCAB, max_seq_len=SEQ, n_layer=2, n_decoder_layer=2, n_head=4, n_kv_head=4, head_dim=8,
             d_model=32, d_ff=48, init_std=0.1)

BERT_VARIANTS = {
    "bert-tiny": {},
    # no segments (exported as one all-zero token type), untied head, tanh GELU
    "bert-untied-no-types": dict(tie_embeddings=False, type_vocab_size=0, activation="gelu_tanh"),
    "bert-no-bias": dict(bias=False),  # exported with zero biases
}
LABELS = ["negative", "neutral", "positive"]
BERT_HEAD_VARIANTS = {
    "bert-classify": dict(head="classify", labels=LABELS),
    "bert-classify-no-bias-no-types": dict(head="classify", labels=LABELS, bias=False, type_vocab_size=0),
    "bert-classify-multi-label": dict(head="classify", labels=LABELS, multi_label=True),
    "bert-span": dict(head="span"),
}
# head -> (transformers Auto class, the class it builds)
BERT_HEAD_CLASSES = {"classify": ("AutoModelForSequenceClassification", "BertForSequenceClassification"),
                     "span": ("AutoModelForQuestionAnswering", "BertForQuestionAnswering")}
# Small relative-position tables so that 30-token inputs reach the log-spaced buckets and the shared last one.
T5_VARIANTS = {
    "t5-tiny": dict(relative_buckets=8, relative_max_distance=16),  # gated-GELU, tied, scaled
    # head_dim * n_head != d_model, as T5's d_kv allows; a deeper decoder than encoder
    "t5-relu-untied": dict(mlp="standard", activation="relu", tie_embeddings=False, scale_decoder_output=False,
                           head_dim=16, n_decoder_layer=3),
    "t5-tied-unscaled": dict(scale_decoder_output=False),  # written untied, with the embedding copied to lm_head
}


def lmforge_config(preset: str, **kw) -> ModelConfig:
    return ModelConfig(**{**get_preset(preset).to_dict(), **SMALL, **kw})


def perturb_vectors(model: torch.nn.Module) -> None:
    """Move every 1-D parameter (norm weights, biases) off its initial value."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))


def lmforge_checkpoint(tmp_path: Path, variant: str, tokenizer: Path | None = None, vocab_size: int = VOCAB):
    torch.manual_seed(0)
    preset = "bert-tiny" if variant.startswith("bert") else "t5-tiny"
    overrides = {**BERT_VARIANTS, **BERT_HEAD_VARIANTS, **T5_VARIANTS}[variant]
    cfg = lmforge_config(preset, **overrides, vocab_size=vocab_size)
    model = build_model(cfg).eval()
    perturb_vectors(model)
    return save_model(tmp_path / "ckpt", model, cfg, tokenizer), model


def ids(n: int = 3, t: int = 12, high: int = VOCAB, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, high, (n, t), generator=torch.Generator().manual_seed(seed))


def padding_mask(n: int, t: int) -> torch.Tensor:
    """1 on real tokens; row 1 ends in padding."""
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, t * 2 // 3:] = 0
    return mask


def bert_inputs(type_vocab: int = 2) -> dict[str, torch.Tensor]:
    return dict(input_ids=ids(), token_type_ids=ids(high=max(type_vocab, 1), seed=2),
                attention_mask=padding_mask(3, 12))


def lmforge_bert(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        h = model(inputs["input_ids"], attention_mask=inputs["attention_mask"], token_types=inputs["token_type_ids"])
        return model.mlm_logits(h), model.nsp_logits(h)


def assert_close_on_real_tokens(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor) -> None:
    """Logits at padding positions mean nothing (and differ by implementation); compare the real tokens."""
    assert ours.shape == theirs.shape
    assert (ours - theirs)[mask.bool()].abs().max() <= TOL


def t5_inputs() -> dict[str, torch.Tensor]:
    return dict(input_ids=ids(t=30), attention_mask=padding_mask(3, 30), decoder_input_ids=ids(t=25, seed=3))


def lmforge_t5(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs["input_ids"], inputs["decoder_input_ids"], inputs["attention_mask"])


def load_clean(auto_class, directory: Path):
    model, info = auto_class.from_pretrained(directory, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


# --- BERT: lmforge -> Hugging Face -----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(BERT_VARIANTS))
def test_exported_bert_loads_as_bert_for_pretraining_with_same_mlm_and_nsp_logits(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    out = export_hf(ckpt, tmp_path / "hf")
    hf = load_clean(transformers.AutoModelForPreTraining, out)
    assert type(hf).__name__ == "BertForPreTraining"
    inputs = bert_inputs(model.cfg.type_vocab_size)
    mlm, nsp = lmforge_bert(model, inputs)
    with torch.no_grad():
        theirs = hf(**inputs)
    assert_close_on_real_tokens(mlm, theirs.prediction_logits, inputs["attention_mask"])
    assert (nsp - theirs.seq_relationship_logits).abs().max() <= TOL
    assert not (out / "generation_config.json").exists()  # BERT does not generate


def test_exported_bert_loads_as_masked_lm_with_same_logits(tmp_path):
    ckpt, model = lmforge_checkpoint(tmp_path, "bert-untied-no-types")
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(export_hf(ckpt, tmp_path / "hf"),
                                                                 output_loading_info=True)
    assert type(hf).__name__ == "BertForMaskedLM" and not info["missing_keys"]  # the pooler and NSP head go unused
    inputs = bert_inputs(0)
    with torch.no_grad():
        theirs = hf.eval()(**inputs).logits
    assert_close_on_real_tokens(lmforge_bert(model, inputs)[0], theirs, inputs["attention_mask"])


@pytest.mark.parametrize("variant", ["bert-tiny", "bert-untied-no-types"])
def test_bert_export_then_import_gives_back_the_model(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    loaded, cfg = load_model(import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "back"))
    inputs = bert_inputs(model.cfg.type_vocab_size)
    if variant == "bert-tiny":
        assert cfg == model.cfg
        original = model.state_dict()
        assert all(torch.equal(t, original[k]) for k, t in loaded.state_dict().items())
    else:  # the all-zero token type comes back as a one-type table: same logits
        assert cfg.type_vocab_size == 1 and not cfg.tie_embeddings
    for ours, back in zip(lmforge_bert(model, inputs), lmforge_bert(loaded.eval(), inputs), strict=True):
        assert torch.equal(ours, back)


# --- BERT: Hugging Face -> lmforge -----------------------------------------------------------------------------

def hf_bert(tie: bool = True, cls=None, **kw):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=SEQ, type_vocab_size=2,
                                     initializer_range=0.1, tie_word_embeddings=tie, **kw)
    model = (cls or transformers.BertForPreTraining)(config).eval()
    perturb_vectors(model)  # untied, this also moves transformers' unused `predictions.bias` off decoder.bias
    return model


@pytest.mark.parametrize(("tie", "extra"), [(True, {}), (False, {}), (True, {"hidden_act": "gelu_new"})])
def test_imported_bert_gives_transformers_mlm_and_nsp_logits(tmp_path, tie, extra):
    hf = hf_bert(tie, **extra)
    hf.save_pretrained(tmp_path / "hf")
    model, cfg = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert cfg.family == "bert" and cfg.tie_embeddings == tie
    inputs = bert_inputs()
    mlm, nsp = lmforge_bert(model.eval(), inputs)
    with torch.no_grad():
        theirs = hf(**inputs)
    assert_close_on_real_tokens(mlm, theirs.prediction_logits, inputs["attention_mask"])
    assert (nsp - theirs.seq_relationship_logits).abs().max() <= TOL


def test_bert_import_takes_masked_lm_checkpoints_and_old_tensor_names(tmp_path, capsys):
    """A BertForMaskedLM (no pooler, no NSP head) saved with TensorFlow-era LayerNorm.gamma/beta names and the
    position_ids buffer, as older checkpoints are: MLM logits match, and a note names the heads initialised."""
    hf = hf_bert(cls=transformers.BertForMaskedLM)
    hf.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in load_file(str(path)).items()}
    state["bert.embeddings.position_ids"] = torch.arange(SEQ)[None]
    save_file(state, str(path), metadata={"format": "pt"})
    model, _ = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert "has no pooler, nsp_head weights: initialised randomly" in " ".join(capsys.readouterr().err.split())
    inputs = bert_inputs()
    with torch.no_grad():
        theirs = hf(**inputs).logits
    assert_close_on_real_tokens(lmforge_bert(model.eval(), inputs)[0], theirs, inputs["attention_mask"])


# --- BERT task heads: sequence classification and extractive QA, both ways -----------------------------------

def lmforge_head(model, inputs) -> torch.Tensor:
    """Class logits (B, K), or start/end logits (B, T, 2)."""
    with torch.no_grad():
        return model(inputs["input_ids"], attention_mask=inputs["attention_mask"], token_types=inputs["token_type_ids"])


def hf_head(model, inputs) -> torch.Tensor:
    """The same from a transformers task model (QA's start and end logits stacked as lmforge's)."""
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else torch.stack([out.start_logits, out.end_logits], dim=-1)


def assert_same_head_logits(ours: torch.Tensor, theirs: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
    if ours.ndim == 3:  # per token
        assert_close_on_real_tokens(ours, theirs, inputs["attention_mask"])
    else:
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() <= TOL


@pytest.mark.parametrize("variant", sorted(BERT_HEAD_VARIANTS))
def test_exported_bert_head_loads_in_its_auto_class_with_same_logits(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    out = export_hf(ckpt, tmp_path / "hf")
    auto_class, architecture = BERT_HEAD_CLASSES[model.cfg.head]
    hf = load_clean(getattr(transformers, auto_class), out)
    assert type(hf).__name__ == architecture
    inputs = bert_inputs(model.cfg.type_vocab_size)
    assert_same_head_logits(lmforge_head(model, inputs), hf_head(hf, inputs), inputs)
    config = json.loads((out / "config.json").read_text())
    if model.cfg.head == "classify":
        assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"} and config["num_labels"] == 3
        assert hf.config.label2id == {name: i for i, name in enumerate(LABELS)}
        assert config.get("problem_type") == ("multi_label_classification" if model.cfg.multi_label else None)
    else:
        assert not {"id2label", "label2id", "num_labels"} & config.keys()  # QA: start and end, nothing to name
    assert not (out / "generation_config.json").exists()


@pytest.mark.parametrize("variant", ["bert-classify", "bert-classify-multi-label", "bert-span"])
def test_bert_head_export_then_import_gives_back_the_checkpoint(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    loaded, cfg = load_model(import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "back"))
    assert cfg == model.cfg
    original = model.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    assert all(torch.equal(t, original[k]) for k, t in loaded.state_dict().items())


@pytest.mark.parametrize(("architecture", "extra", "labels"), [
    ("BertForSequenceClassification", {"id2label": {0: "spam", 1: "ham", 2: "eggs"}}, ["spam", "ham", "eggs"]),
    ("BertForSequenceClassification", {}, ["LABEL_0", "LABEL_1"]),  # transformers' default two labels
    ("BertForQuestionAnswering", {}, []),
])
def test_imported_bert_head_gives_transformers_logits(tmp_path, architecture, extra, labels):
    hf = hf_bert(False, getattr(transformers, architecture), **extra)
    hf.save_pretrained(tmp_path / "hf")
    cfg, state, fresh = read_hf_model(tmp_path / "hf")  # what `lmforge train --init-from HF_DIR` reads
    head = "span" if architecture.endswith("QuestionAnswering") else "classify"
    assert (cfg.head, cfg.labels, fresh) == (head, labels, [])
    assert ("pooler.weight" in state) == (head == "classify") and not any(k.startswith("mlm_head.") for k in state)
    model, imported = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert imported == cfg
    inputs = bert_inputs()
    assert_same_head_logits(lmforge_head(model.eval(), inputs), hf_head(hf, inputs), inputs)


@pytest.mark.parametrize(("variant", "auto_class"), [("bert-classify", "AutoModelForSequenceClassification"),
                                                     ("bert-span", "AutoModelForQuestionAnswering")])
def test_cli_export_names_the_auto_class_of_the_head(tmp_path, capsys, variant, auto_class):
    ckpt, _ = lmforge_checkpoint(tmp_path, variant)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert f"transformers.{auto_class}.from_pretrained" in capsys.readouterr().out


# --- T5: lmforge -> Hugging Face -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(T5_VARIANTS))
def test_exported_t5_loads_in_transformers_with_same_decoder_logits(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    out = export_hf(ckpt, tmp_path / "hf")
    hf = load_clean(transformers.AutoModelForSeq2SeqLM, out)
    assert type(hf).__name__ == "T5ForConditionalGeneration"
    inputs = t5_inputs()
    with torch.no_grad():
        theirs = hf(**inputs).logits
    assert (lmforge_t5(model, inputs) - theirs).abs().max() <= TOL
    config = json.loads((out / "config.json").read_text())
    assert config["decoder_start_token_id"] == 0  # no tokenizer: T5's id 0


@pytest.mark.parametrize("variant", ["t5-tiny", "t5-relu-untied"])
def test_t5_export_then_import_gives_back_the_checkpoint(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    loaded, cfg = load_model(import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "back"))
    # T5 configs carry no initialisation: an import takes T5's (init t5, which reads no init_std) and the default.
    assert cfg == ModelConfig(**{**model.cfg.to_dict(), "init": "t5", "init_std": ModelConfig.init_std})
    original = model.state_dict()
    assert all(torch.equal(t, original[k]) for k, t in loaded.state_dict().items())


def test_t5_tied_without_output_scaling_round_trips_to_the_same_logits(tmp_path):
    ckpt, model = lmforge_checkpoint(tmp_path, "t5-tied-unscaled")
    loaded, cfg = load_model(import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "back"))
    assert not cfg.tie_embeddings and not cfg.scale_decoder_output  # written untied, with lm_head a copy
    inputs = t5_inputs()
    assert torch.equal(lmforge_t5(model, inputs), lmforge_t5(loaded.eval(), inputs))


def test_transformers_greedy_generate_matches_lmforge_t5_generation(tmp_path):
    """Decoder start id, output scaling, source padding and the cached decoders of both libraries, against each
    other and against lmforge's full recompute.

    (transformers 5.23's `generate` fails on T5 models whose decoder is deeper than the encoder: its cache is
    sized from num_layers. Hence a symmetric model here.)"""
    from lmforge.infer.generate import GenerationConfig, generate_ids

    ckpt, model = lmforge_checkpoint(tmp_path, "t5-tiny")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(export_hf(ckpt, tmp_path / "hf")).eval()
    src, mask = ids(n=3, t=9), padding_mask(3, 9)  # row 1 is a shorter source, right-padded
    sources = [row[: int(m.sum())].tolist() for row, m in zip(src, mask)]
    ours = generate_ids(model, sources, GenerationConfig(max_new_tokens=8, temperature=0.0), decoder_start_id=0)
    with torch.no_grad():
        generated = hf.generate(src, attention_mask=mask, max_new_tokens=8, do_sample=False)
        assert generated[:, 0].tolist() == [0, 0, 0]  # decoder_start_token_id
        assert generated[:, 1:].tolist() == ours
        for source, row in zip(sources, ours):  # each row as if alone, recomputing every prefix
            memory, tgt = model.encode(torch.tensor([source])), torch.zeros(1, 1, dtype=torch.long)
            for _ in range(8):
                tgt = torch.cat([tgt, model.decode(tgt, memory)[:, -1:].argmax(-1)], dim=1)
            assert tgt[0, 1:].tolist() == row


# --- T5: Hugging Face -> lmforge -------------------------------------------------------------------------------

def hf_t5(feed_forward_proj: str, tie: bool, **kw):
    torch.manual_seed(0)
    config = transformers.T5Config(**{**dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                             num_decoder_layers=3, num_heads=4, dropout_rate=0.0), **kw},
                                   feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie)
    model = transformers.T5ForConditionalGeneration(config).eval()
    perturb_vectors(model)
    return model


@pytest.mark.parametrize(("ff", "tie", "extra"), [
    ("relu", True, {}),  # T5 v1.0: tied and scaled
    ("gated-gelu", False, {"relative_attention_num_buckets": 8, "relative_attention_max_distance": 16}),  # v1.1
    ("gated-silu", True, {"d_kv": 4}),
])
def test_imported_t5_gives_transformers_decoder_logits(tmp_path, ff, tie, extra):
    hf = hf_t5(ff, tie, **extra)
    hf.save_pretrained(tmp_path / "hf")
    model, cfg = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert cfg.family == "t5" and cfg.n_decoder_layer == 3 and cfg.scale_decoder_output == tie
    inputs = t5_inputs()
    with torch.no_grad():
        theirs = hf(**inputs).logits
    assert (lmforge_t5(model.eval(), inputs) - theirs).abs().max() <= TOL


def test_imported_t5_with_a_separate_lm_head_is_untied(tmp_path):
    """T5 v1.1 (tie_word_embeddings false, its own lm_head) as older transformers save it, and as transformers 5
    re-saves it (tie_word_embeddings true, scale_decoder_outputs false, lm_head different from shared)."""
    hf = hf_t5("gated-gelu", False)
    hf.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(path))
    state["lm_head.weight"] = torch.randn(VOCAB, 32, generator=torch.Generator().manual_seed(4))
    save_file(state, str(path), metadata={"format": "pt"})
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    inputs = t5_inputs()
    with torch.no_grad():
        theirs = hf(**inputs).logits
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] and not config["scale_decoder_outputs"]  # as transformers 5 saves v1.1
    older = {k: v for k, v in config.items() if k != "scale_decoder_outputs"}
    for tie, written in ((True, config), (False, {**older, "tie_word_embeddings": False})):
        (tmp_path / "hf" / "config.json").write_text(json.dumps(written))
        model, cfg = load_model(import_hf(tmp_path / "hf", tmp_path / f"ckpt-{tie}"))
        assert not cfg.tie_embeddings and not cfg.scale_decoder_output
        assert (lmforge_t5(model.eval(), inputs) - theirs).abs().max() <= TOL


# --- tokenizers --------------------------------------------------------------------------------------------------

TEXTS = ["The quick brown fox jumps over the lazy dog.", "An encoder reads the whole sentence at once.",
         "Unseen wörds, digits 12345 and  double spaces\n", "def f(x): return x ** 2  # Python"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    """A WordPiece and a unigram tokenizer trained by lmforge on a few built-in documents, saved as lmforge does."""
    docs = list(islice(python_docs(), 30))
    out = {}
    for kind, vocab_size in (("wordpiece", 600), ("unigram", 400)):
        directory = tmp_path_factory.mktemp(kind)
        save_tokenizer(train_tokenizer(docs, TokenizerOptions(kind=kind, vocab_size=vocab_size)), directory)
        out[kind] = directory
    return out


def test_exported_bert_wordpiece_tokenizer_gives_identical_ids_both_ways(tmp_path, tokenizers):
    tok = Tokenizer.from_file(str(tokenizers["wordpiece"] / "tokenizer.json"))
    ckpt, _ = lmforge_checkpoint(tmp_path, "bert-tiny", tokenizers["wordpiece"], vocab_size=tok.get_vocab_size())
    out = export_hf(ckpt, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (hf_tok.cls_token, hf_tok.sep_token, hf_tok.mask_token, hf_tok.pad_token) == ("<cls>", "<sep>", "<mask>",
                                                                                         "<pad>")
    assert hf_tok.mask_token_id == tok.token_to_id("<mask>") and hf_tok.model_max_length == SEQ
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == tok.encode(text).ids  # <cls> text <sep>, from the template
    pair = tok.encode("Is this next?", "It is.")
    theirs = hf_tok("Is this next?", "It is.")
    assert (theirs["input_ids"], theirs["token_type_ids"]) == (pair.ids, pair.type_ids)
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tok.token_to_id("<pad>")
    back = Tokenizer.from_file(str(import_hf(out, tmp_path / "back") / "tokenizer.json"))
    assert back.encode(TEXTS[2]).ids == tok.encode(TEXTS[2]).ids


def test_exported_t5_unigram_tokenizer_gives_identical_ids_and_generation_ids(tmp_path, tokenizers):
    tok = Tokenizer.from_file(str(tokenizers["unigram"] / "tokenizer.json"))
    ckpt, _ = lmforge_checkpoint(tmp_path, "t5-tiny", tokenizers["unigram"], vocab_size=tok.get_vocab_size())
    out = export_hf(ckpt, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        token_ids = tok.encode(text).ids
        assert hf_tok(text)["input_ids"] == token_ids
        assert hf_tok.decode(token_ids, skip_special_tokens=True) == tok.decode(token_ids)
    pad, eos = tok.token_to_id("<pad>"), tok.token_to_id("<eos>")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": tok.token_to_id("<bos>"), "eos_token_id": eos, "pad_token_id": pad,
                          "decoder_start_token_id": pad}
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(out)
    assert (hf.generation_config.decoder_start_token_id, hf.generation_config.eos_token_id) == (pad, eos)
    back = Tokenizer.from_file(str(import_hf(out, tmp_path / "back") / "tokenizer.json"))
    assert back.encode(TEXTS[0]).ids == tok.encode(TEXTS[0]).ids


# --- unsupported options -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("preset", "overrides", "message"), [
    ("bert-tiny", dict(pos="sinusoidal"), "pos=sinusoidal (needs learned)"),
    ("bert-tiny", dict(pos="rope"), "pos=rope (needs learned)"),
    ("bert-tiny", dict(norm_position="pre"), "norm_position=pre (needs post)"),
    ("bert-tiny", dict(mlp="gated"), "mlp=gated (needs standard)"),
    ("bert-tiny", dict(n_kv_head=2), "BERT has no grouped-query attention"),
    ("t5-tiny", dict(activation="gelu"), "mlp=gated with activation=gelu"),
    ("t5-tiny", dict(attn_scale=None), "attn_scale=None"),
    ("t5-tiny", dict(tie_embeddings=False), "scale_decoder_output=True with tie_embeddings=False"),
    ("t5-tiny", dict(bias=True), "bias=True (T5 has no biases)"),
])
def test_unsupported_lmforge_options_are_one_clear_error(tmp_path, preset, overrides, message):
    cfg = lmforge_config(preset, **overrides)
    ckpt = save_model(tmp_path / "ckpt", build_model(cfg), cfg)
    with pytest.raises(UserError, match="cannot express this model") as err:
        export_hf(ckpt, tmp_path / "hf")
    assert message in err.value.line() and "\n" not in err.value.line()
    assert not (tmp_path / "hf").exists()


BERT_CONFIG = dict(model_type="bert", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=48, max_position_embeddings=SEQ)
T5_CONFIG = dict(model_type="t5", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)


@pytest.mark.parametrize(("config", "message"), [
    ({**BERT_CONFIG, "position_embedding_type": "relative_key"}, "position_embedding_type=relative_key"),
    ({**BERT_CONFIG, "is_decoder": True}, "is_decoder=True"),
    ({**BERT_CONFIG, "hidden_act": "mish"}, "hidden_act=mish"),
    ({**T5_CONFIG, "feed_forward_proj": "gated-gelu_python"}, "feed_forward_proj=gated-gelu_python"),
    ({**T5_CONFIG, "feed_forward_proj": "gelu-gated"}, "feed_forward_proj=gelu-gated"),
])
def test_unsupported_hf_options_are_one_clear_error(tmp_path, config, message):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="lmforge cannot express") as err:
        import_hf(tmp_path / "hf", tmp_path / "ckpt")
    assert message in err.value.line() and "\n" not in err.value.line()
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(("config", "message"), [
    ({**T5_CONFIG, "architectures": ["T5ForSequenceClassification"]},
     "architecture 'T5ForSequenceClassification' is not supported (fix: lmforge imports t5 as: "
     "T5ForConditionalGeneration)"),
    ({**T5_CONFIG, "architectures": ["T5ForQuestionAnswering"]}, "architecture 'T5ForQuestionAnswering'"),
    ({**BERT_CONFIG, "architectures": ["BertForTokenClassification"]},
     "lmforge imports bert as: BertForPreTraining, BertForMaskedLM, BertModel, BertForNextSentencePrediction, "
     "BertForSequenceClassification, BertForQuestionAnswering"),
    ({**BERT_CONFIG, "architectures": ["BertForQuestionAnswering"], "num_labels": 3},
     "num_labels=3 (lmforge's span head has a start and an end logit)"),
    ({**BERT_CONFIG, "architectures": ["BertForSequenceClassification"], "problem_type": "regression"},
     "problem_type=regression"),
])
def test_unsupported_task_heads_are_one_clear_error(tmp_path, config, message):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        import_hf(tmp_path / "hf", tmp_path / "ckpt")
    assert message in err.value.line() and "\n" not in err.value.line()
    assert not (tmp_path / "ckpt").exists()


# --- CLI -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "auto_class"), [("bert-tiny", "AutoModelForPreTraining"),
                                                     ("t5-tiny", "AutoModelForSeq2SeqLM")])
def test_cli_export_and_import_round_trip(tmp_path, capsys, variant, auto_class):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert f"transformers.{auto_class}.from_pretrained" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    loaded, _ = load_model(tmp_path / "back")
    original = model.state_dict()
    assert all(torch.equal(t, original[k]) for k, t in loaded.state_dict().items())
