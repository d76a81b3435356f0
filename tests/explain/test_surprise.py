from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.data.tokenizer import TokenizerOptions, train_tokenizer
from lmforge.errors import UserError
from lmforge.explain.inputs import encode_text
from lmforge.explain.surprise import surprise_json, surprise_page, token_surprise

from . import tiny_model

SENTENCES = ["The cat sat on the mat.", "Dogs bark at cats all day long.", "<script>alert(1)</script>"] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES, TokenizerOptions(kind="wordpiece", vocab_size=200, min_frequency=1))


def model_of(family: str, vocab_size: int, **kw):
    return tiny_model(family, vocab_size, 0.2, **kw)


def test_decoder_surprise_is_the_next_token_cross_entropy(tokenizer):
    model, cfg = model_of("gpt", tokenizer.get_vocab_size())
    enc = encode_text(tokenizer, "The cat sat on the mat.", cfg)
    s = token_surprise(model, tokenizer, enc, top_k=3)
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        expected = F.cross_entropy(model(ids)[0, :-1], ids[0, 1:], reduction="none")
    assert s.tokens[0].nats is None  # the <eos> start is context, not text
    torch.testing.assert_close(torch.tensor([t.nats for t in s.tokens[1:]]), expected)
    assert s.mean_nats() == pytest.approx(float(expected.mean()), rel=1e-5)
    t = s.tokens[3]
    assert t.prob == pytest.approx(math.exp(-t.nats)) and len(t.top) == 3
    assert t.top[0][2] >= t.top[1][2] >= t.top[2][2]
    assert (t.rank == 1) == (t.top[0][0] == t.id)


def test_masked_lm_surprise_masks_each_token_in_turn(tokenizer):
    model, cfg = model_of("bert", tokenizer.get_vocab_size(), type_vocab_size=2)
    enc = encode_text(tokenizer, "The cat sat", cfg)  # <cls> The cat sat <sep>
    s = token_surprise(model, tokenizer, enc)
    assert [t.nats is None for t in s.tokens] == [True, False, False, False, True]
    ids = torch.tensor([enc.ids])
    masked = ids.clone()
    masked[0, 2] = tokenizer.token_to_id("<mask>")
    with torch.no_grad():
        log_p = model.mlm_logits(model(masked, token_types=torch.zeros_like(ids)))[0, 2].log_softmax(-1)
    assert s.tokens[2].nats == pytest.approx(-float(log_p[enc.ids[2]]), rel=1e-5)


def test_encoder_decoder_surprise_is_refused(tokenizer):
    model, cfg = model_of("t5", tokenizer.get_vocab_size(), pos="relative")
    with pytest.raises(UserError, match="next-token model or a masked LM; this checkpoint is a t5 encoder-decoder"):
        token_surprise(model, tokenizer, encode_text(tokenizer, "The cat", cfg))


def test_page_and_json_in_bits_or_nats(tokenizer):
    model, cfg = model_of("gpt", tokenizer.get_vocab_size())
    text = "The <script>alert(1)</script> cat"
    enc = encode_text(tokenizer, text, cfg)
    s = token_surprise(model, tokenizer, enc)
    page = surprise_page(s, enc, units="bits")
    assert "<script" not in page and "&lt;" in page  # tokens are escaped, never markup
    assert "http" not in page and " src=" not in page and "<link" not in page  # self-contained
    assert 'class="legend"' in page and "surprise (bits)" in page
    assert "top predictions: " in page and "rank " in page  # hover titles
    bits, nats = surprise_json(s, units="bits"), surprise_json(s, units="nats")
    assert bits["mean"] == pytest.approx(nats["mean"] / math.log(2))
    assert bits["tokens"][2]["surprise"] == pytest.approx(s.tokens[2].nats / math.log(2))
    assert bits["perplexity"] == pytest.approx(math.exp(s.mean_nats()))
    assert [t["text"] for t in bits["tokens"]][:3] == ["<eos>", "The", "<"]
