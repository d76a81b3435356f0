"""Tokenizers: the four kinds train, save as a tokenizer.json that `tokenizers` and `transformers` read alike."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models

from lmforge.data.tokenizer import (
    KINDS,
    LONG_RUN_CHARS,
    SPECIAL_TOKENS,
    TokenizerOptions,
    check_vocab_fits,
    decoder_start_id,
    encode_ids,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    split_long_runs,
    tokenizer_hash,
    tokenizer_kind,
    train_tokenizer,
)
from lmforge.errors import UserError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tokenizers split text into pieces; a model predicts the next piece.",
    "Naïve café owners in Zürich serve crème brûlée — déjà vu!",
    "日本語のテキストも扱えます。",
    "def f(x):\n    return x * 2  # doubled\n",
] * 20

SAMPLES = ["The lazy fox serves crème brûlée.", "return x * 2", "Zürich café", "テキスト"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Tokenizer]:
    out = {}
    for kind in KINDS:
        vocab = 400 if kind == "bpe" else 300
        tok = train_tokenizer(TEXTS, TokenizerOptions(kind=kind, vocab_size=vocab, min_frequency=1))
        directory = tmp_path_factory.mktemp(kind)
        save_tokenizer(tok, directory)
        out[kind] = directory
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_come_first_in_order(trained, kind):
    tok = load_tokenizer(trained[kind])
    assert tokenizer_kind(tok) == kind
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(SPECIAL_TOKENS[name]) == i
    assert special_token_ids(tok) == {name: i for i, name in enumerate(SPECIAL_TOKENS)}


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_loads_the_file_and_encodes_identically(trained, kind):
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_file(str(trained[kind] / "tokenizer.json"))
    theirs = transformers.AutoTokenizer.from_pretrained(str(trained[kind]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(trained[kind] / "tokenizer.json"))
    for text in SAMPLES:
        ids = ours.encode(text).ids
        assert theirs(text)["input_ids"] == ids
        assert fast(text)["input_ids"] == ids
    assert theirs.eos_token == "<eos>" and theirs.pad_token == "<pad>" and theirs.mask_token == "<mask>"


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_lossless_kinds_decode_back_exactly(trained, kind):
    tok = load_tokenizer(trained[kind])
    for text in SAMPLES:
        assert tok.decode(tok.encode(text).ids) == text


def test_char_tokenizer_has_one_token_per_seen_character(trained):
    tok = load_tokenizer(trained["char"])
    chars = sorted(set("".join(TEXTS)))
    assert tok.get_vocab_size() == len(SPECIAL_TOKENS) + len(chars)
    assert tok.encode("fox").tokens == ["f", "o", "x"]
    assert tok.encode("€").ids == [tok.token_to_id("<unk>")]  # never seen


@pytest.fixture(scope="module")
def bpe(trained) -> Tokenizer:
    return load_tokenizer(trained["bpe"])


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_byte_level_bpe_round_trips_any_unicode_string(bpe, text):
    encoding = bpe.encode(text)
    assert bpe.token_to_id("<unk>") not in encoding.ids or "<unk>" in text
    assert bpe.decode(encoding.ids, skip_special_tokens=False) == text


def test_training_is_deterministic_and_hash_identifies_the_file(tmp_path):
    opts = TokenizerOptions(kind="bpe", vocab_size=350, min_frequency=1)
    a = save_tokenizer(train_tokenizer(TEXTS, opts), tmp_path / "a")
    b = save_tokenizer(train_tokenizer(TEXTS, opts), tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert tokenizer_hash(a) == tokenizer_hash(tmp_path / "b")


@pytest.mark.parametrize(("opts", "message"), [
    (dict(kind="bpe", vocab_size=200), "smaller than the byte alphabet"),
    (dict(kind="char", vocab_size=20), "distinct characters seen"),
    (dict(kind="unigram", vocab_size=30), "distinct characters seen"),
    (dict(kind="wordpiece", vocab_size=40), "smaller than the"),
])
def test_vocabulary_smaller_than_alphabet_plus_specials_is_a_user_error(opts, message):
    with pytest.raises(UserError, match=message) as e:
        train_tokenizer(TEXTS, TokenizerOptions(**opts))
    assert "vocab_size to at least" in e.value.line()


@pytest.mark.parametrize(("opts", "message"), [
    (dict(kind="sentencepiece"), "option 'kind' is 'sentencepiece', but must be one of bpe"),
    (dict(special_tokens=["eos", "foo"]), "unknown special token name"),
    (dict(kind="wordpiece", special_tokens=["eos"]), "needs the unk special token"),
    (dict(vocab_size=0), "option 'vocab_size' is 0, but must be >= 1"),
])
def test_bad_options_are_user_errors(opts, message):
    with pytest.raises(UserError, match=message):
        TokenizerOptions(**opts)


def test_empty_stream_is_a_user_error():
    with pytest.raises(UserError, match="no text to train the tokenizer on"):
        train_tokenizer([], TokenizerOptions(vocab_size=300))


def test_loading_a_missing_or_corrupt_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json here"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer file"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(("ids", "start"), [({"pad": 0, "bos": 2, "eos": 3}, 0), ({"bos": 2, "eos": 3}, 2),
                                            ({"eos": 3}, 3)])
def test_decoder_start_is_pad_else_bos_else_eos_for_training_explain_and_export(ids, start):
    from lmforge.explain.inputs import decoder_start_id as explain_start
    from lmforge.interop.hf import token_ids

    assert decoder_start_id(ids) == start
    # explain and the HF export decide with the same rule, so a model starts decoding from the token it trained on
    tok = Tokenizer(models.WordLevel({f"<{n}>": i for n, i in ids.items()} | {"x": 9}, unk_token=None))
    assert explain_start(tok) == start
    specials = {n: (f"<{n}>", i) for n, i in ids.items()}
    assert token_ids({"is_encoder_decoder": True}, specials)["decoder_start_token_id"] == start
    with pytest.raises(KeyError):
        decoder_start_id({"unk": 1})


def test_vocab_check_refuses_a_tokenizer_bigger_than_the_model():
    check_vocab_fits(10, 10, fix="x")
    with pytest.raises(UserError, match="the tokenizer has 11 tokens but model.vocab_size is 10"):
        check_vocab_fits(11, 10, model="model.vocab_size", fix="raise it")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "é", ".", "7", " ", "\n", "\u00a0", "x" * 999, "y" * 1001]), max_size=12))
def test_long_runs_are_cut_every_long_run_chars_and_nothing_else_moves(parts):
    text = "".join(parts)
    pieces = split_long_runs(text)
    assert "".join(pieces) == text
    longest = max((len(w) for w in text.split()), default=0)
    if longest <= LONG_RUN_CHARS:
        assert pieces == [text]  # ordinary text is encoded exactly as Tokenizer.encode would
    for left, right in itertools.pairwise(pieces):  # each cut: inside a run, LONG_RUN_CHARS after its start or a cut
        run = left.split()[-1] if left.split() else ""
        assert not left[-1].isspace() and not right[0].isspace() and len(run) % LONG_RUN_CHARS == 0


def test_encode_ids_is_tokenizers_encode_for_ordinary_text(trained):
    tok = load_tokenizer(trained["bpe"])
    for text in [*SAMPLES, "word " * 2000]:
        assert encode_ids(tok, text) == tok.encode(text, add_special_tokens=False).ids
    long = "ab" * 1500
    assert tok.decode(encode_ids(tok, long)) == long  # cut, but still lossless


def test_training_sees_long_runs_cut_as_encoding_does(monkeypatch):
    # BPE training over one n-character "word" costs about n x merges: 11 s for a 200 KB line, uncut.
    import lmforge.data.tokenizer as tokenizer

    fed: list[str] = []
    cut = tokenizer.split_long_runs
    monkeypatch.setattr(tokenizer, "split_long_runs", lambda text: fed.extend(cut(text)) or cut(text))
    line = "".join(chr(97 + (i * 7919) % 26) for i in range(20_000))  # 20 KB of letters, one "word"
    tok = train_tokenizer([*TEXTS, line], TokenizerOptions(kind="bpe", vocab_size=400, min_frequency=1))
    assert max(len(w) for piece in fed for w in piece.split()) == LONG_RUN_CHARS
    assert tok.decode(encode_ids(tok, line)) == line


def test_offsets_survive_the_cutting_of_long_runs(bpe):
    from lmforge.data.tokenizer import encode_ids, encode_with_offsets

    normal = "The cat sat on the mat."
    enc = bpe.encode(normal, add_special_tokens=False)
    assert encode_with_offsets(bpe, normal) == (enc.ids, enc.tokens, [tuple(o) for o in enc.offsets])
    long = "see " + "ab1" * 1500 + " done"  # a 4,500-character run: cut every 1,000 characters
    ids, _, spans = encode_with_offsets(bpe, long)
    assert ids == encode_ids(bpe, long)
    assert spans[0][0] == 0 and spans[-1][1] == len(long)
    assert all(a <= b <= c for (a, b), (c, _) in itertools.pairwise(spans))  # in order, no overlaps
