from __future__ import annotations

import pytest
import torch

from lmforge.data.tokenizer import TokenizerOptions, train_tokenizer
from lmforge.errors import UserError
from lmforge.explain.attribution import (
    attribute,
    attribution_json,
    attribution_page,
    gradient_x_input,
    integrated_gradients,
    make_baseline,
    model_logits_fn,
    resolve_target,
    target_label,
)
from lmforge.explain.inputs import encode_text

from . import tiny_model

SENTENCES = ["The cat sat on the mat.", "Dogs bark at cats all day long.", "A bird sang."] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES, TokenizerOptions(kind="bpe", vocab_size=300, min_frequency=1))


def model_of(family: str, vocab_size: int, **kw):
    return tiny_model(family, vocab_size, 0.3, **kw)


def test_linear_function_ig_is_exact_and_equals_gradient_x_input():
    torch.manual_seed(0)
    W = torch.randn(8, 5)
    logits_fn = lambda e: e.sum(1) @ W  # (B, T, 8) -> (B, 5): the gradient is the same everywhere
    x = torch.randn(4, 8)
    ig = integrated_gradients(logits_fn, x, target=2, steps=3, output="logit")
    gxi = gradient_x_input(logits_fn, x, target=2, output="logit")
    torch.testing.assert_close(ig.attributions, x * W[:, 2])
    torch.testing.assert_close(gxi.attributions, ig.attributions)
    assert abs(ig.delta) < 1e-5 and gxi.delta is None
    torch.testing.assert_close(ig.scores, (x * W[:, 2]).sum(-1))


def test_ig_completeness_on_a_decoder_next_token_error_shrinks_with_steps(tokenizer):
    model, cfg = model_of("gpt", tokenizer.get_vocab_size())
    enc = encode_text(tokenizer, "The cat sat on the", cfg)
    logits_fn, x = model_logits_fn(model, enc)
    errors = []
    for steps in (2, 8, 64):
        a = integrated_gradients(logits_fn, x, target=5, steps=steps)
        errors.append(abs(a.delta))
    gap = abs(a.f_input - a.f_baseline)
    assert gap > 0.1  # a real difference to account for
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01 * gap


def test_ig_completeness_on_the_bert_next_sentence_head(tokenizer):
    model, cfg = model_of("bert", tokenizer.get_vocab_size(), type_vocab_size=2, embed_norm=True,
                          norm_position="post")
    enc = encode_text(tokenizer, "The cat sat. A bird sang.", cfg)
    logits_fn, x = model_logits_fn(model, enc)
    with torch.no_grad():
        direct = model.nsp_logits(model(torch.tensor([enc.ids]), token_types=enc.types_tensor()))
    torch.testing.assert_close(logits_fn(x[None]), direct)  # (1, 2): the classifier-style output
    coarse = integrated_gradients(logits_fn, x, target=1, steps=4, output="logit")
    fine = integrated_gradients(logits_fn, x, target=1, steps=128, output="logit")
    gap = abs(fine.f_input - fine.f_baseline)
    assert gap > 0.05
    assert abs(fine.delta) < abs(coarse.delta) and abs(fine.delta) < 0.02 * gap


@pytest.mark.parametrize("family", ["gpt", "llama", "bert", "t5"])
def test_substituted_embeddings_reproduce_the_model(tokenizer, family):
    extra = {"llama": dict(pos="rope", norm="rmsnorm", mlp="gated", n_kv_head=1),
             "bert": dict(type_vocab_size=2), "t5": dict(pos="relative", attn_scale=1.0)}.get(family, {})
    model, cfg = model_of(family, tokenizer.get_vocab_size(), **extra)
    enc = encode_text(tokenizer, "The cat sat", cfg)
    ids = torch.tensor([enc.ids])
    logits_fn, x = model_logits_fn(model, enc, decoder_start=0)
    with torch.no_grad():
        if family == "bert":
            expected = model.nsp_logits(model(ids, token_types=enc.types_tensor()))
        elif family == "t5":  # the decoder's own input must not be replaced: it shares the embedding table
            expected = model.decode(torch.zeros(1, 1, dtype=torch.long), model.encode(ids))[:, -1]
        else:
            expected = model(ids)[:, -1]
        torch.testing.assert_close(logits_fn(x[None].expand(3, -1, -1)), expected.expand(3, -1))
        assert (logits_fn(torch.zeros_like(x)[None]) - expected).abs().max() > 1e-3  # the substitute is used
    assert not any(m._forward_hooks for m in model.modules())


def test_pad_baseline_leaves_added_tokens_out(tokenizer):
    model, cfg = model_of("gpt", tokenizer.get_vocab_size())
    enc = encode_text(tokenizer, "The cat", cfg)
    _, x = model_logits_fn(model, enc)
    base = make_baseline(model, enc, x, "pad", pad_id=0)
    torch.testing.assert_close(base[0], x[0])  # <eos> start: same as the input
    torch.testing.assert_close(base[1], model.embed.tok.weight[0].detach())
    a = attribute(model, tokenizer, enc, baseline="pad", steps=8)
    assert float(a.scores[0]) == 0.0 and a.scores[1:].abs().sum() > 0


def test_attribute_defaults_to_the_top_prediction_and_resolves_a_token(tokenizer):
    model, cfg = model_of("gpt", tokenizer.get_vocab_size())
    enc = encode_text(tokenizer, "The cat sat on the", cfg)
    with torch.no_grad():
        top = int(model(torch.tensor([enc.ids]))[0, -1].argmax())
    assert attribute(model, tokenizer, enc, method="grad_x_input").target == top
    mat = tokenizer.encode(" mat", add_special_tokens=False).ids
    assert len(mat) == 1
    a = attribute(model, tokenizer, enc, target=" mat", steps=4)
    assert a.target == mat[0] and a.method == "ig" and a.steps == 4


def test_resolve_target_tokens_spellings_classes_and_labels(tokenizer):
    from lmforge.models import ModelConfig

    gpt = ModelConfig(vocab_size=300)
    bert = ModelConfig(family="bert", vocab_size=300)
    classifier = ModelConfig(family="lstm", vocab_size=300, labels=["neg", "pos"])
    cat = tokenizer.encode(" cat", add_special_tokens=False).ids[0]
    assert resolve_target(" cat", tokenizer, gpt) == cat
    assert resolve_target("Ġcat", tokenizer, gpt) == cat  # the vocabulary spelling
    assert resolve_target(None, tokenizer, gpt) is None
    with pytest.raises(UserError, match=r"target ' cat sat' is 2 tokens \(Ġcat Ġsat\), not one"):
        resolve_target(" cat sat", tokenizer, gpt)
    assert [resolve_target(t, tokenizer, bert) for t in ("0", "1", "next", "Random")] == [0, 1, 0, 1]
    with pytest.raises(UserError, match="not a class of the next-sentence head"):
        resolve_target("2", tokenizer, bert)
    assert [resolve_target(t, tokenizer, classifier) for t in ("pos", "neg", "1")] == [1, 0, 1]
    with pytest.raises(UserError, match="target 'maybe' is not a label of this classifier"):
        resolve_target("maybe", tokenizer, classifier)


@pytest.mark.parametrize("preset", ["lstm-tiny", "tiny", "llama-tiny", "bert-tiny"])
def test_a_sequence_classifier_attributes_its_class_and_integrated_gradients_are_complete(tokenizer, preset):
    from lmforge.models import ModelConfig, build_model, get_preset

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**get_preset(preset).to_dict(), "vocab_size": tokenizer.get_vocab_size(),
                                 "n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": None, "head_dim": None,
                                 "d_ff": None, "labels": ["neg", "pos"]})
    model = build_model(cfg).eval()
    enc = encode_text(tokenizer, "the cat sat on the mat", cfg)
    a = attribute(model, tokenizer, enc, target="pos", steps=64)
    with torch.no_grad():
        logits = model(enc.tensor())[0]
    assert a.target == 1 and a.target_prob == pytest.approx(float(logits.softmax(-1)[1]), rel=1e-5)
    assert a.delta is not None and abs(a.delta) < 0.05  # completeness: the scores sum to f(x) - f(baseline)
    assert target_label(a, tokenizer, cfg) == "'pos'"


def test_page_and_json_report_completeness(tokenizer):
    model, cfg = model_of("gpt", tokenizer.get_vocab_size())
    enc = encode_text(tokenizer, "The cat sat", cfg)
    a = attribute(model, tokenizer, enc, steps=16)
    page = attribution_page(a, enc, "' on'", baseline="zero")
    assert "integrated gradients, 16 steps, zero baseline" in page and "completeness error" in page
    assert "attribution +" in page or "attribution -" in page
    data = attribution_json(a, enc, "' on'", baseline="zero")
    assert data["sum"] == pytest.approx(sum(t["score"] for t in data["tokens"]), abs=1e-5)
    assert data["delta"] == pytest.approx(data["sum"] - (data["f_input"] - data["f_baseline"]), abs=1e-6)
    assert data["tokens"][0] == {"index": 0, "id": enc.ids[0], "text": "<eos>", "added": True, "score": 0.0}
