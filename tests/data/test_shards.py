"""Token shards: parallel encoding identical to `Tokenizer.encode`, deterministic splits, atomic output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data import shards
from lmforge.data.loaders import TokenDataset
from lmforge.data.shards import DocumentEncoder, TextSpool, assign_splits, encode_spool, read_manifest
from lmforge.data.tokenizer import TokenizerOptions, encode_ids, load_tokenizer, save_tokenizer, train_tokenizer
from lmforge.errors import UserError

WORDS = ["the", "model", "predicts", "next", "token", "café", "naïve", "über", "日本", "語", "x1", "2024", "it's",
         "  ", "\n", "\t", "!", "—", "«", "»", "\u00a0", "don't", "we'll", "ABC"]


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module", params=["bpe", "char", "wordpiece", "unigram"])
def tokenizer_path(request, tmp_path_factory):
    opts = TokenizerOptions(kind=request.param, vocab_size=400 if request.param != "char" else 100, min_frequency=1)
    tok = train_tokenizer(_docs(300), opts)
    return save_tokenizer(tok, tmp_path_factory.mktemp(request.param))


def _spool(tmp_path, docs):
    spool = TextSpool(tmp_path / "spool")
    for d in docs:
        spool.add(d)
    spool.close()
    return tmp_path / "spool"


def _reference(tok, docs, eos):
    tok.encode_special_tokens = True
    return [tok.encode(d, add_special_tokens=False).ids + [eos] for d in docs]


def test_shards_hold_exactly_the_tokenizer_ids_per_document(tmp_path, tokenizer_path):
    docs = _docs(200, seed=1) + ["a document that mentions <eos> and <mask> literally"]
    out = tmp_path / "out"
    result = encode_spool(_spool(tmp_path, docs), out, tokenizer_path, val_fraction=0.2, seed=3, shard_tokens=500)
    tok = load_tokenizer(tokenizer_path)
    eos = tok.token_to_id("<eos>")
    expected = _reference(tok, docs, eos)
    codes = assign_splits(len(docs), 3, 0.2, 0.0)
    for code, split in enumerate(["train", "val"]):
        ds = TokenDataset.open(out, split)
        want = [expected[i] for i in np.flatnonzero(codes == code)]
        assert ds.num_documents == len(want)
        got = [ds.document(i).tolist() for i in range(ds.num_documents)]
        assert got == want
        assert len(ds.shards) == -(-sum(map(len, want)) // 500)  # cut every 500 tokens, across documents
    assert result.manifest["dtype"] == "uint16"
    assert result.token_counts.sum() == sum(map(len, expected))
    if "unigram" not in str(tokenizer_path):  # a unigram vocabulary holds "<eos>" as an ordinary piece too
        # A literal "<eos>" inside a document is text, never a document boundary.
        assert sum(t.count(eos) for t in expected) == len(docs)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(st.characters(codec="utf-8"), max_size=60), min_size=1, max_size=5))
def test_fast_bpe_encoder_equals_tokenizers_encode(bpe_tokenizer, texts):
    enc = DocumentEncoder(bpe_tokenizer, np.uint16)
    assert enc.mode == "bytelevel"
    want = [bpe_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    assert [np.frombuffer(b, np.uint16).tolist() for b in enc.encode(texts)] == want


@pytest.fixture(scope="module")
def bpe_tokenizer():
    tok = train_tokenizer(_docs(300), TokenizerOptions(kind="bpe", vocab_size=400, min_frequency=1))
    tok.encode_special_tokens = True
    return tok


def test_output_does_not_depend_on_the_number_of_workers(tmp_path, monkeypatch, tokenizer_path):
    if "unigram" in str(tokenizer_path) or "wordpiece" in str(tokenizer_path):
        pytest.skip("one tokenizer kind is enough for the pool path")
    monkeypatch.setattr(shards, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 2000)  # many tasks, so the pool really interleaves them
    spool = _spool(tmp_path, _docs(400, seed=2))
    one = encode_spool(spool, tmp_path / "one", tokenizer_path, workers=1)
    two = encode_spool(spool, tmp_path / "two", tokenizer_path, workers=2)
    assert two.workers == 2 and one.workers == 1
    for name in ("train-00000.bin", "train-00000.idx", "val-00000.bin"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_splits_are_disjoint_deterministic_and_seeded():
    a, b, c = assign_splits(10_000, 0, 0.1, 0.05), assign_splits(10_000, 0, 0.1, 0.05), assign_splits(10_000, 1,
                                                                                                     0.1, 0.05)
    assert (a == b).all() and not (a == c).all()
    assert abs((a == 1).mean() - 0.1) < 0.01 and abs((a == 2).mean() - 0.05) < 0.01
    # Growing the corpus does not move existing documents between splits.
    assert (assign_splits(20_000, 0, 0.1, 0.05)[:10_000] == a).all()
    # A tiny corpus still gets its requested val split.
    assert (assign_splits(3, 0, 0.01, 0.0) == 1).sum() == 1
    with pytest.raises(UserError, match="too few to hold out"):
        assign_splits(1, 0, 0.1, 0.0)


def test_an_interrupted_encode_leaves_no_manifest_and_no_complete_looking_shard(tmp_path, monkeypatch,
                                                                               tokenizer_path):
    spool = _spool(tmp_path, _docs(300))
    out = tmp_path / "out"
    encode_spool(spool, out, tokenizer_path, shard_tokens=300)  # an earlier complete run in the same place
    calls = {"n": 0}
    real = shards._encode_chunk

    def dying(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(shards, "CHUNK_BYTES", 500)
    monkeypatch.setattr(shards, "_encode_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        encode_spool(spool, out, tokenizer_path, shard_tokens=300)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    with pytest.raises(UserError, match="preparation did not finish"):
        TokenDataset.open(out)


def test_vocabularies_over_65536_use_uint32(tmp_path):
    chars = [chr(0x20000 + i) for i in range(70_000)]  # CJK extension planes: 70,000 distinct characters
    docs = ["".join(chars[i:i + 7000]) for i in range(0, 70_000, 7000)]
    tok = train_tokenizer(docs, TokenizerOptions(kind="char", vocab_size=80_000))
    path = save_tokenizer(tok, tmp_path / "tok")
    result = encode_spool(_spool(tmp_path, docs), tmp_path / "out", path, val_fraction=0.0)
    assert result.manifest["dtype"] == "uint32" and result.manifest["vocab_size"] == 70_007
    ds = TokenDataset.open(tmp_path / "out")
    assert ds.document(9).tolist() == tok.encode(docs[9]).ids + [tok.token_to_id("<eos>")]
    assert ds.document(9).max() > 65_535


@pytest.mark.parametrize(("damage", "message"), [
    (lambda m: "{broken", "not valid JSON"),
    (lambda m: json.dumps({**m, "format": "other"}), "not an lmforge token-shard manifest"),
    (lambda m: json.dumps({**m, "version": 99}), "format version 99"),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "splits"}), "fields missing"),
])
def test_corrupt_manifest_is_one_clear_error(tmp_path, damage, message):
    tok = train_tokenizer(_docs(50), TokenizerOptions(kind="char", vocab_size=100))
    path = save_tokenizer(tok, tmp_path / "tok")
    encode_spool(_spool(tmp_path, _docs(50)), tmp_path / "out", path)
    manifest = tmp_path / "out" / "manifest.json"
    manifest.write_text(damage(json.loads(manifest.read_text())))
    with pytest.raises(UserError, match=message) as e:
        read_manifest(tmp_path / "out")
    assert "lmforge prepare" in e.value.line()


def test_truncated_shard_is_detected(tmp_path):
    tok = train_tokenizer(_docs(50), TokenizerOptions(kind="char", vocab_size=100))
    path = save_tokenizer(tok, tmp_path / "tok")
    encode_spool(_spool(tmp_path, _docs(50)), tmp_path / "out", path)
    shard = tmp_path / "out" / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(UserError, match="does not match the manifest"):
        TokenDataset.open(tmp_path / "out")


def _long_run_docs() -> list[str]:
    rng = np.random.default_rng(5)
    run = "".join(rng.choice(list("abcdeé日"), size=3500))  # one "word" of 3,500 characters: cut into 4 pieces
    return [f"before {run} after", "x" * 2001, _docs(1)[0] + " " + "7" * 1000 + " short", run]


def test_long_runs_are_encoded_in_pieces_by_every_encoder_alike(tmp_path, tokenizer_path):
    # The shard encoder (any of its modes) and `encode_ids` (generate, explain) give the same ids for text with
    # runs longer than LONG_RUN_CHARS, which neither hands to the tokenizer whole.
    docs = _long_run_docs()
    out = tmp_path / "out"
    encode_spool(_spool(tmp_path, docs), out, tokenizer_path, val_fraction=0.0)
    tok = load_tokenizer(tokenizer_path)
    tok.encode_special_tokens = True
    ds = TokenDataset.open(out, "train")
    assert [ds.document(i).tolist()[:-1] for i in range(ds.num_documents)] == [encode_ids(tok, d) for d in docs]


def test_a_huge_document_is_shared_by_the_workers_and_encoded_exactly(tmp_path, monkeypatch, tokenizer_path):
    """One long line (no whitespace for 30,000 characters, then prose) is cut into parts between the pieces the
    tokenizer encodes one by one anyway: the workers share it, and its tokens are those of the whole document."""
    monkeypatch.setattr(shards, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(shards, "CHUNK_BYTES", 2000)
    huge = "ab1日c" * 6000 + " " + " ".join(_docs(300, seed=5))
    docs = [*_docs(20, seed=4), huge, *_docs(20, seed=6)]
    calls = []
    real = shards._document_parts
    monkeypatch.setattr(shards, "_document_parts", lambda *a: calls.append(1) or real(*a))
    results = [encode_spool(_spool(tmp_path / str(w), docs), tmp_path / f"out{w}", tokenizer_path, workers=w,
                            val_fraction=0.0) for w in (1, 2)]
    assert calls == [1, 1] and [r.workers for r in results] == [1, 2]
    assert (tmp_path / "out1" / "train-00000.bin").read_bytes() == (tmp_path / "out2" / "train-00000.bin").read_bytes()
    assert (tmp_path / "out1" / "train-00000.idx").read_bytes() == (tmp_path / "out2" / "train-00000.idx").read_bytes()
    tok = load_tokenizer(tokenizer_path)
    tok.encode_special_tokens = True
    ds = TokenDataset.open(tmp_path / "out2", "train")
    eos = tok.token_to_id("<eos>")
    want = [encode_ids(tok, d) + [eos] for d in docs]
    tokens = ds.window(0, len(ds)).tolist()
    assert tokens == [t for w in want for t in w] and ds.num_documents == len(docs)
