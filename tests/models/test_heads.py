"""Task heads on the Transformer backbones: what each returns, and that padding never changes a text's result."""

from __future__ import annotations

import pytest
import torch

from lmforge.models import ModelConfig, build_model, get_preset
from lmforge.models.heads import pool


def config(preset: str, head: str = "lm", **kw) -> ModelConfig:
    labels = ["neg", "neu", "pos"] if head == "classify" else []
    return ModelConfig.from_dict({**get_preset(preset).to_dict(), "vocab_size": 50, "n_layer": 2, "d_model": 32,
                                  "n_head": 4, "n_kv_head": None, "head_dim": None, "d_ff": None, "head": head,
                                  "labels": labels, **kw})


def test_pooling_first_mean_last_and_max_over_real_tokens():
    h = torch.arange(2 * 3 * 1, dtype=torch.float).view(2, 3, 1)  # rows [0, 1, 2] and [3, 4, 5]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(h, mask, "first").flatten().tolist() == [0, 3]
    assert pool(h, mask, "mean").flatten().tolist() == [0.5, 4]
    assert pool(h, mask, "last").flatten().tolist() == [1, 5]
    assert pool(h, None, "last").flatten().tolist() == [2, 5]
    neg = -h  # the padding's value would win a max over the whole row: it must not be read
    assert pool(neg, mask, "max").flatten().tolist() == [0, -3]
    assert pool(neg, None, "max").flatten().tolist() == [0, -3]
    assert pool(h, mask, "max").flatten().tolist() == [1, 5]
    with pytest.raises(ValueError):
        pool(h, mask, "min")


@pytest.mark.parametrize(("preset", "pooling"), [("tiny", "auto"), ("llama-tiny", "auto"), ("tiny", "mean"),
                                                 ("bert-tiny", "auto"), ("bert-tiny", "mean"), ("lstm-tiny", "last"),
                                                 ("bert-tiny", "max"), ("lstm-tiny", "max")])
def test_a_classifier_gives_one_row_of_class_logits_per_text_whatever_the_padding(preset, pooling):
    torch.manual_seed(0)
    model = build_model(config(preset, "classify", pooling=pooling)).eval()
    short, long = torch.tensor([[5, 6, 7]]), torch.tensor([[5, 6, 7, 8, 9, 10]])
    batch = torch.tensor([[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 10]])  # right-padded with id 0
    mask = (torch.arange(6) < torch.tensor([[3], [6]])).long()
    with torch.no_grad():
        together = model(batch, attention_mask=mask)
        alone = torch.cat([model(short), model(long)])
    assert together.shape == (2, 3)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_heads_replace_the_language_model_head_and_are_named_as_in_transformers():
    def modules(preset: str, head: str) -> set[str]:
        return {k.split(".")[0] for k in build_model(config(preset, head)).state_dict()}

    assert modules("tiny", "classify") == {"embed", "blocks", "norm_f", "score"}  # GPT2ForSequenceClassification
    assert modules("bert-tiny", "classify") == {"embed", "encoder", "pooler", "classifier"}
    assert modules("bert-tiny", "span") == {"embed", "encoder", "qa_outputs"}  # no pooler, as BertForQuestionAnswering


def test_a_span_head_gives_start_and_end_logits_for_every_token():
    model = build_model(config("bert-tiny", "span")).eval()
    with torch.no_grad():
        out = model(torch.tensor([[2, 5, 6, 7, 3]]), attention_mask=torch.ones(1, 5))
    assert out.shape == (1, 5, 2)


def test_flops_count_only_an_lm_head_over_the_vocabulary():
    lm, classifier = config("tiny"), config("tiny", "classify")
    assert lm.flops_per_token(16) - classifier.flops_per_token(16) == pytest.approx(
        6 * lm.vocab_size * lm.d_model + 6 * (lm.num_params(False) - classifier.num_params(False)))


def test_first_token_pooling_is_refused_for_causal_models():
    from lmforge.errors import UserError

    with pytest.raises(UserError, match="pooling 'first' reads one token in a causal model"):
        config("tiny", "classify", pooling="first")
