from __future__ import annotations

import html
import re

import pytest

from lmforge.data.tokenizer import TokenizerOptions, train_tokenizer
from lmforge.errors import UserError
from lmforge.explain.inputs import encode_text
from lmforge.explain.page import Scale, render
from lmforge.models import ModelConfig

SENTENCES = ["The cat sat on the mat.", "A naïve café: ünïcödé 日本語 text.", "Dogs bark at cats all day long."] * 4
TEXT = "The cat, naïve 日本 <b>&amp;</b>\n  end"


@pytest.fixture(scope="module", params=["bpe", "wordpiece", "unigram", "char"])
def tokenizer(request):
    size = 120 if request.param == "unigram" else 300
    return train_tokenizer(SENTENCES, TokenizerOptions(kind=request.param, vocab_size=size, min_frequency=1))


def cfg(family: str, **kw) -> ModelConfig:
    return ModelConfig(family=family, vocab_size=300, max_seq_len=64, n_layer=1, n_head=2, d_model=16, **kw)


def visible_text(page: str) -> str:
    """The page's text as a reader sees it, without the added (framing) tokens and character pieces."""
    body = page.split('<div class="text">', 1)[1].split("</div>", 1)[0]
    body = re.sub(r'<span class="tok (added|piece)[^"]*"[^>]*>.*?</span>', "", body, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def test_pages_show_the_text_exactly_as_given(tokenizer):
    enc = encode_text(tokenizer, TEXT, cfg("gpt"))
    page = render("t", enc, [1.0] * len(enc), ["hover"] * len(enc), Scale(vmax=2.0))
    assert visible_text(page) == TEXT
    assert "<b>" not in page and "</b>" not in page and "&lt;" in page  # the text is escaped, never markup


def test_framing_follows_the_family(tokenizer):
    specials = {n: tokenizer.token_to_id(f"<{n}>") for n in ("eos", "cls", "sep")}
    dec = encode_text(tokenizer, "The cat", cfg("gpt"))
    assert dec.ids[0] == specials["eos"] and dec.added == [True] + [False] * (len(dec) - 1)
    enc = encode_text(tokenizer, "The cat", cfg("bert", type_vocab_size=2))
    assert (enc.ids[0], enc.ids[-1]) == (specials["cls"], specials["sep"])
    assert enc.added[0] and enc.added[-1] and enc.token_types == [0] * len(enc)
    t5 = encode_text(tokenizer, "The cat", cfg("t5", pos="relative"))
    assert not any(t5.added) and t5.ids == dec.ids[1:]


def test_byte_pieces_of_one_character_show_it_once():
    tok = train_tokenizer(["plain ascii words only"] * 3, TokenizerOptions(kind="bpe", vocab_size=300,
                                                                           min_frequency=1))
    enc = encode_text(tok, "日", cfg("gpt"))  # three UTF-8 bytes, three tokens after <eos>
    assert len(enc) == 4 and [enc.partial(i) for i in range(4)] == [False, True, True, False]
    assert enc.shown(3) == "日"


def test_empty_and_too_long_texts_are_clear_errors(tokenizer):
    with pytest.raises(UserError, match="no text to explain"):
        encode_text(tokenizer, "", cfg("gpt"))
    with pytest.raises(UserError, match=r"more than the model's 64 positions.*shorten the text to under 63"):
        encode_text(tokenizer, "The cat sat on the mat. " * 40, cfg("gpt"))
    with pytest.raises(UserError, match="the tokenizer has .* tokens but the model.s vocabulary is 10"):
        encode_text(tokenizer, "The", ModelConfig(family="gpt", vocab_size=10, n_layer=1, n_head=1, d_model=8))
