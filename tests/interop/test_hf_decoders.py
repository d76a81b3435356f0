"""Hugging Face interop for the decoder families, pinned against the real `transformers` classes.

Every model is tiny, random and built in the test (nothing is downloaded). Norm weights and biases are moved away
from their initial 1 / 0 so that a swapped or dropped tensor shows in the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from lmforge.checkpoints import load_model  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.errors import UserError  # noqa: E402
from lmforge.interop import export_hf, import_hf  # noqa: E402
from lmforge.interop.families import GPT2  # noqa: E402
from lmforge.interop.hf import loader_hint, read_hf_model  # noqa: E402
from lmforge.models import DecoderLM, ModelConfig  # noqa: E402
from lmforge.models.io import save_model  # noqa: E402

VOCAB, SEQ = 97, 32
TOL = 1e-4

LMFORGE_VARIANTS = {
    "gpt-tied": dict(family="gpt"),
    "gpt-untied-gelu": dict(family="gpt", tie_embeddings=False, activation="gelu"),
    "gpt-no-bias": dict(family="gpt", bias=False),  # exported with zero biases
    "gpt-relu2-untied": dict(family="gpt", activation="relu2", tie_embeddings=False),  # transformers' `relu2`
    "llama-gqa-untied": dict(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope",
                             bias=False, tie_embeddings=False, n_kv_head=2, rope_theta=500.0, d_ff=48),
    "llama-mha-tied-bias": dict(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope",
                                bias=True, tie_embeddings=True),
}
LABELS = ["negative", "neutral", "positive"]
CLASSIFIER_VARIANTS = {
    "gpt-classify": dict(family="gpt", head="classify", labels=LABELS),
    "llama-classify": dict(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope", bias=False,
                           tie_embeddings=False, n_kv_head=2, d_ff=48, head="classify", labels=LABELS),
}


def lmforge_config(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=VOCAB, max_seq_len=SEQ, n_layer=2, n_head=4, d_model=32, init_std=0.1),
                          **kw})


def perturb_vectors(model: torch.nn.Module) -> None:
    """Move every 1-D parameter (norm weights, biases) off its initial value."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))


def random_ids(n: int = 3, t: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def lmforge_checkpoint(tmp_path: Path, variant: str, tokenizer: Path | None = None,
                       vocab_size: int = VOCAB) -> tuple[Path, DecoderLM]:
    torch.manual_seed(0)
    cfg = lmforge_config(**{**LMFORGE_VARIANTS, **CLASSIFIER_VARIANTS}[variant], vocab_size=vocab_size)
    model = DecoderLM(cfg).eval()
    perturb_vectors(model)
    return save_model(tmp_path / "ckpt", model, cfg, tokenizer), model


def hf_model(kind: str, tie: bool, auto_class=None, **kw):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=4,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1,
                                         tie_word_embeddings=tie, **kw)
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=SEQ, initializer_range=0.1,
                                          tie_word_embeddings=tie, rope_theta=500.0, **kw)
    model = (auto_class or transformers.AutoModelForCausalLM).from_config(config).eval()
    perturb_vectors(model)
    return model


# --- lmforge -> Hugging Face -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(LMFORGE_VARIANTS))
def test_exported_model_loads_in_transformers_with_same_logits(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    out = export_hf(ckpt, tmp_path / "hf")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(hf).__name__ == json.loads((out / "config.json").read_text())["architectures"][0]
    ids = random_ids()
    with torch.no_grad():
        ours = model(ids)
    assert (hf_logits(hf.eval(), ids) - ours).abs().max() <= TOL


@pytest.mark.parametrize("variant", ["gpt-untied-gelu", "llama-gqa-untied", "llama-mha-tied-bias"])
def test_export_then_import_gives_back_the_checkpoint(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    back = import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "back")
    loaded, cfg = load_model(back)
    assert cfg == model.cfg
    original = model.state_dict()
    assert all(torch.equal(t, original[k]) for k, t in loaded.state_dict().items())


# --- Hugging Face -> lmforge -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "tie", "extra"), [
    ("gpt2", True, {}),
    ("gpt2", False, {"activation_function": "gelu"}),
    ("llama", False, {}),
    ("llama", True, {}),
    ("llama", False, {"attention_bias": True, "mlp_bias": True}),
    ("llama", False, {"head_dim": 16}),  # head_dim * heads != hidden_size, as in some Llama-family models
])
def test_imported_model_gives_transformers_logits(tmp_path, kind, tie, extra):
    hf = hf_model(kind, tie, **extra)
    hf.save_pretrained(tmp_path / "hf")
    model, cfg = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert cfg.tie_embeddings == tie and cfg.n_kv_head == (4 if kind == "gpt2" else 2)
    ids = random_ids()
    with torch.no_grad():
        assert (model(ids) - hf_logits(hf, ids)).abs().max() <= TOL


def test_import_reads_base_model_names_and_sharded_weights(tmp_path):
    """Checkpoints saved from GPT2Model (no `transformer.` prefix, with the old causal-mask buffers) and split into
    shards still import."""
    hf = hf_model("gpt2", True)
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    from safetensors.torch import load_file, save_file

    src = tmp_path / "hf"
    for shard in src.glob("model-*.safetensors"):
        state = {k.removeprefix("transformer."): v for k, v in load_file(str(shard)).items()}
        state["h.0.attn.bias"] = torch.ones(1, 1, SEQ, SEQ).tril()  # as in the original GPT-2 release
        save_file(state, str(shard), metadata={"format": "pt"})
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k.removeprefix("transformer."): v for k, v in index["weight_map"].items()}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    model, _ = load_model(import_hf(src, tmp_path / "ckpt"))
    ids = random_ids()
    with torch.no_grad():
        assert (model(ids) - hf_logits(hf, ids)).abs().max() <= TOL


# --- tokenizer and generation --------------------------------------------------------------------------------

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A language model predicts the next token.",
             "Byte-level BPE never meets an unknown character: é, ß, 東京.", "lmforge exports to Hugging Face."]


def make_tokenizer(directory: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB + 200, special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    # A template that adds <bos>: AutoTokenizer must apply the same post-processing.
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return tok


def test_exported_tokenizer_matches_tokenizers_both_ways(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    ckpt, _ = lmforge_checkpoint(tmp_path, "gpt-tied", tmp_path / "tok", vocab_size=tok.get_vocab_size())
    out = export_hf(ckpt, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.model_max_length == SEQ
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (2, 3, 0)
    for text in [*SENTENCES, "unseen wörds and  spaces\n"]:
        ids = tok.encode(text).ids
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids) == text
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    back = Tokenizer.from_file(str(import_hf(out, tmp_path / "back") / "tokenizer.json"))
    assert back.encode(SENTENCES[2]).ids == tok.encode(SENTENCES[2]).ids


@pytest.mark.parametrize("variant", ["gpt-tied", "llama-gqa-untied"])
def test_transformers_greedy_generate_matches_lmforge_argmax(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ckpt, tmp_path / "hf")).eval()
    prompt = random_ids(n=1, t=5)
    ids = prompt
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
        generated = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                do_sample=False)
    assert generated.tolist() == ids.tolist()


# --- unsupported options -------------------------------------------------------------------------------------

def write_hf_config(directory: Path, **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


LLAMA_CONFIG = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=SEQ)
GPT2_CONFIG = dict(model_type="gpt2", vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=4)


@pytest.mark.parametrize(("config", "message"), [
    ({**LLAMA_CONFIG, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
    ({**LLAMA_CONFIG, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope scaling 'llama3'"),
    ({**LLAMA_CONFIG, "attention_bias": True}, "attention_bias=True with mlp_bias=None"),
    ({**GPT2_CONFIG, "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({**GPT2_CONFIG, "reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True"),
    ({"model_type": "bloom"}, "model_type 'bloom' is not supported"),
])
def test_unsupported_hf_options_are_one_clear_error(tmp_path, config, message):
    src = write_hf_config(tmp_path / "hf", **config)
    with pytest.raises(UserError, match=message) as err:
        import_hf(src, tmp_path / "ckpt")
    assert "\n" not in err.value.line()
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(norm_position="post"), "norm_position=post"),
    (dict(pos="sinusoidal"), "pos=sinusoidal"),
    (dict(n_kv_head=2), "no grouped-query attention"),
    (dict(family="llama", pos="rope", mlp="gated", norm="layernorm"), "norm=layernorm"),
    (dict(qk_norm=True), "qk_norm=True"),
    (dict(logit_softcap=15.0), "logit_softcap=15.0"),
    (dict(family="llama", norm="rmsnorm", mlp="gated", pos="rope", qk_norm=True), "qk_norm=True"),
])
def test_unsupported_lmforge_options_are_one_clear_error(tmp_path, overrides, message):
    cfg = lmforge_config(**overrides)
    ckpt = save_model(tmp_path / "ckpt", DecoderLM(cfg), cfg)
    with pytest.raises(UserError, match=message) as err:
        export_hf(ckpt, tmp_path / "hf")
    assert "\n" not in err.value.line()


def test_export_refuses_to_replace_a_directory_that_is_not_a_model(tmp_path):
    ckpt, _ = lmforge_checkpoint(tmp_path, "gpt-tied")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing to replace"):
        export_hf(ckpt, tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_import_rejects_weights_of_another_architecture(tmp_path):
    hf = hf_model("llama", False)
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["num_hidden_layers"] = 1  # the weights hold two layers
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"does not know: model\.layers\.1\."):
        import_hf(tmp_path / "hf", tmp_path / "ckpt")


# --- task head: sequence classification ---------------------------------------------------------------------

def padded_batch(vocab_size: int, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask: rows 1 and 2 are shorter; no real token is the pad id."""
    ids = torch.randint(pad + 1, vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = mask[2, 4:] = 0
    return ids.masked_fill(mask == 0, pad), mask


@pytest.mark.parametrize("variant", sorted(CLASSIFIER_VARIANTS))
def test_exported_classifier_loads_for_sequence_classification_with_same_logits_on_a_padded_batch(tmp_path,
                                                                                                 variant):
    tok = make_tokenizer(tmp_path / "tok")  # <pad> = 0: transformers reads each row at its last non-pad token
    ckpt, model = lmforge_checkpoint(tmp_path, variant, tmp_path / "tok", vocab_size=tok.get_vocab_size())
    out = export_hf(ckpt, tmp_path / "hf")
    hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = json.loads((out / "config.json").read_text())
    expected = {"gpt": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}[model.cfg.family]
    assert type(hf).__name__ == config["architectures"][0] == expected
    assert (config["num_labels"], config["pad_token_id"]) == (3, 0)
    assert hf.config.id2label == dict(enumerate(LABELS)) and hf.config.label2id == {n: i for i, n in enumerate(LABELS)}
    assert not (out / "generation_config.json").exists()  # a classifier does not generate
    assert loader_hint(out) == "transformers.AutoModelForSequenceClassification.from_pretrained"
    ids, mask = padded_batch(tok.get_vocab_size())
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf.eval()(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(model(ids)[1:], ours[1:])  # the padding matters: rows are read at a real token
    assert ours.shape == theirs.shape == (3, 3)
    assert (theirs - ours).abs().max() <= TOL


@pytest.mark.parametrize("variant", sorted(CLASSIFIER_VARIANTS))
def test_classifier_export_then_import_gives_back_the_checkpoint(tmp_path, variant):
    ckpt, model = lmforge_checkpoint(tmp_path, variant)
    loaded, cfg = load_model(import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "back"))
    assert cfg == model.cfg and cfg.labels == LABELS
    original = model.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    assert all(torch.equal(t, original[k]) for k, t in loaded.state_dict().items())


HF_LABELS = {0: "spam", 1: "ham", 2: "eggs"}  # not sorted by name: labels come back in index order


@pytest.mark.parametrize(("kind", "tie", "extra"), [
    ("gpt2", True, {}),
    ("llama", False, {}),
    ("llama", False, {"attention_bias": True, "mlp_bias": True}),
])
def test_imported_classifier_gives_transformers_logits_and_labels(tmp_path, kind, tie, extra):
    hf = hf_model(kind, tie, transformers.AutoModelForSequenceClassification, id2label=HF_LABELS,
                  label2id={n: i for i, n in HF_LABELS.items()}, pad_token_id=0, **extra)
    hf.save_pretrained(tmp_path / "hf")
    cfg, state, fresh = read_hf_model(tmp_path / "hf")  # what `lmforge train --init-from HF_DIR` reads
    assert (cfg.head, cfg.labels, fresh) == ("classify", ["spam", "ham", "eggs"], [])
    assert state["score.weight"].shape == (3, 32) and "lm_head.weight" not in state
    model, imported = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert imported == cfg
    ids, mask = padded_batch(VOCAB)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        assert (model(ids, attention_mask=mask) - theirs).abs().max() <= TOL


def test_causal_lm_directories_still_read_as_language_models(tmp_path):
    hf_model("llama", False).save_pretrained(tmp_path / "hf")
    cfg, state, _ = read_hf_model(tmp_path / "hf")
    assert (cfg.head, cfg.labels) == ("lm", []) and "lm_head.weight" in state


@pytest.mark.parametrize(("config", "message"), [
    ({**GPT2_CONFIG, "architectures": ["GPT2ForQuestionAnswering"]},
     "architecture 'GPT2ForQuestionAnswering' is not supported (fix: lmforge imports gpt2 as: GPT2LMHeadModel, "
     "GPT2Model, GPT2ForSequenceClassification)"),
    ({**LLAMA_CONFIG, "architectures": ["LlamaForTokenClassification"]},
     "architecture 'LlamaForTokenClassification' is not supported"),
    ({**GPT2_CONFIG, "architectures": ["GPT2ForSequenceClassification"], "problem_type": "regression",
      "id2label": {"0": "LABEL_0"}}, "problem_type=regression"),
    ({**LLAMA_CONFIG, "architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "yes", "1": "yes"}},
     "id2label ['yes', 'yes'] (lmforge's labels are distinct, non-empty names)"),
    ({**LLAMA_CONFIG, "architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "a", "2": "b"}},
     "id2label keys ['0', '2'] (needs 0 to num_labels-1)"),
])
def test_unsupported_task_heads_are_one_clear_error(tmp_path, config, message):
    src = write_hf_config(tmp_path / "hf", **config)
    with pytest.raises(UserError) as err:
        import_hf(src, tmp_path / "ckpt")
    assert message in err.value.line() and "\n" not in err.value.line()
    assert not (tmp_path / "ckpt").exists()


def test_export_of_a_head_the_family_table_lacks_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delitem(GPT2.heads, "classify")
    ckpt, _ = lmforge_checkpoint(tmp_path, "gpt-classify")
    with pytest.raises(UserError, match="a gpt model with a classify head has no Hugging Face class") as err:
        export_hf(ckpt, tmp_path / "hf")
    assert "exports the heads: lm" in err.value.line()
    assert not (tmp_path / "hf").exists()


# --- CLI -----------------------------------------------------------------------------------------------------

def test_cli_export_and_import_round_trip(tmp_path, capsys):
    ckpt, model = lmforge_checkpoint(tmp_path, "llama-gqa-untied")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    loaded, _ = load_model(tmp_path / "back")
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert "exported" in capsys.readouterr().out


@pytest.mark.parametrize("verb", ["export", "import"])
def test_cli_bad_directory_is_status_2_and_one_line(tmp_path, capsys, verb):
    assert main([verb, str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lmforge {verb}: error:")


def test_a_classifier_pooled_another_way_than_transformers_is_refused(tmp_path):
    from lmforge.errors import UserError
    from lmforge.interop.hf import export_hf
    from lmforge.models import ModelConfig, build_model
    from lmforge.models.io import save_model

    cfg = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=16, labels=["a", "b"],
                      pooling="mean")
    save_model(tmp_path / "ckpt", build_model(cfg), cfg)
    with pytest.raises(UserError, match="pooling=mean"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
