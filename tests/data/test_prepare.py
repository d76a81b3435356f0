"""`prepare`: the whole pipeline, every input format, the report, and one clear error per bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmforge.config import resolve
from lmforge.data.loaders import TokenDataset
from lmforge.data.prepare import PrepareConfig, prepare
from lmforge.data.tokenizer import load_tokenizer
from lmforge.errors import UserError

PROSE = [
    "Language models predict the next token from the ones before it.",
    "Write to ada.lovelace@example.org or call +1 (555) 010-4477 before Friday.",
    "The server at 192.168.10.20 rejected card 4111 1111 1111 1111 twice.",
    "Tokenizers turn text into integer ids; models turn ids into probabilities.",
]


def _config(tmp_path: Path, inputs, **overrides) -> PrepareConfig:
    base = dict(inputs=[str(i) for i in inputs], out=str(tmp_path / "out"), workers=1, val_fraction=0.2,
                tokenizer__vocab_size=300, tokenizer__min_frequency=1)
    return resolve(PrepareConfig, **{**base, **overrides})


def _corpus_dir(tmp_path: Path) -> Path:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    d = tmp_path / "corpus"
    (d / "nested").mkdir(parents=True)
    (d / "a.txt").write_text("\n\n".join(PROSE) + "\n")
    (d / "b.md").write_text("# Notes\n\nMarkdown paragraphs count as documents too.\n")
    (d / "c.jsonl").write_text("".join(json.dumps({"text": f"json record {i}: {PROSE[i % 4]}"}) + "\n"
                                       for i in range(4)))
    (d / "d.csv").write_text('id,text\n1,"a csv cell, with a comma"\n2,another csv row\n')
    (d / "e.tsv").write_text("text\tlabel\ntab separated text\t1\n")
    with gzip.open(d / "nested" / "f.txt.gz", "wt") as f:
        f.write("a gzipped paragraph\n\n" + PROSE[0] + "\n")  # PROSE[0] again: an exact duplicate
    pq.write_table(pa.table({"text": ["a parquet row", "another parquet row"]}), d / "nested" / "g.parquet")
    return d


def test_every_input_format_reaches_the_shards_and_the_report_counts_cleaning(tmp_path):
    result = prepare(_config(tmp_path, [_corpus_dir(tmp_path)]))
    out = result.out
    for name in ("tokenizer.json", "manifest.json", "report.json", "config.yaml", "train-00000.bin",
                 "train-00000.idx", "val-00000.bin", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not (out / ".spool").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["documents"]["read"] == 4 + 2 + 4 + 2 + 1 + 2 + 2
    assert report["clean"]["exact_duplicates"] == 1
    assert report["documents"]["after_cleaning"] == report["documents"]["read"] - 1
    assert report["clean"]["pii_email"] >= 1 and report["clean"]["pii_phone"] >= 1
    assert report["clean"]["pii_ip"] >= 1 and report["clean"]["pii_card"] >= 1
    assert report["unknown_token_rate"] == 0.0 and report["bytes_per_token"] > 1.0
    assert report["top_tokens"][0]["count"] >= report["top_tokens"][-1]["count"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["sources"]) == 7 and all(len(s["sha256"]) == 64 for s in manifest["sources"])
    # The scrubbed text is what was encoded: placeholders, not the personal data.
    tok = load_tokenizer(out)
    train, val = TokenDataset.open(out, "train"), TokenDataset.open(out, "val")
    text = "".join(tok.decode(ds.document(i).tolist()) for ds in (train, val) for i in range(ds.num_documents))
    assert "<EMAIL>" in text and "ada.lovelace" not in text and "4111" not in text
    assert train.num_documents + val.num_documents == report["documents"]["after_cleaning"]
    assert any("documents:" in line for line in result.summary)


def test_the_same_corpus_and_seed_give_identical_output(tmp_path):
    corpus = _corpus_dir(tmp_path)
    a = prepare(_config(tmp_path / "a", [corpus]))
    b = prepare(_config(tmp_path / "b", [corpus]))
    for name in ("tokenizer.json", "train-00000.bin", "val-00000.bin"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes()


def test_builtin_corpus_is_the_default(tmp_path):
    result = prepare(resolve(PrepareConfig, out=str(tmp_path / "out"), tokenizer__vocab_size=1024))
    assert result.manifest["sources"][0]["path"] == "builtin:python-docs"
    assert result.report["documents"]["after_cleaning"] > 3000
    assert result.report["tokens"]["val"] > 10_000
    assert result.report["bytes_per_token"] > 2.5  # a real subword vocabulary compresses English prose


@pytest.mark.shared_data
def test_tiny_shakespeare_char_level(tmp_path, shared_data):
    result = prepare(_config(tmp_path, [shared_data / "tinyshakespeare.txt"], tokenizer__kind="char",
                             tokenizer__vocab_size=100, val_fraction=0.1))
    assert result.report["tokenizer"]["vocab_size"] == 7 + 65  # the 65 characters of char-rnn's vocabulary
    assert 0.95 < result.report["bytes_per_token"] <= 1.0  # one token per character (plus <eos> separators)


def test_reusing_a_tokenizer_keeps_its_hash(tmp_path):
    corpus = _corpus_dir(tmp_path)
    first = prepare(_config(tmp_path / "a", [corpus]))
    second = prepare(_config(tmp_path / "b", [corpus / "a.txt"], tokenizer_from=str(first.out / "tokenizer.json")))
    assert second.manifest["tokenizer"]["sha256"] == first.manifest["tokenizer"]["sha256"]


def _assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*")), "a temporary directory was left behind"


@pytest.mark.parametrize(("setup", "overrides", "message"), [
    (lambda p: p / "missing.txt", {}, "no such file or directory"),
    (lambda p: _write(p / "empty.txt", ""), {}, "the corpus holds no documents"),
    (lambda p: _write(p / "short.txt", "tiny\n\nbits\n"), {"clean__min_chars": 50}, "no documents left after cleaning"),
    (lambda p: _write(p / "blob.txt", bytes(range(256)) * 64), {}, "binary"),
    (lambda p: _write(p / "ok.txt", "\n\n".join(PROSE)), {"tokenizer__vocab_size": 100}, "smaller than the byte"),
    (lambda p: _write(p / "one.txt", "just one document"), {}, "too few to split"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, setup, overrides, message):
    source = setup(tmp_path)
    with pytest.raises(UserError, match=message) as e:
        prepare(_config(tmp_path, [source], **overrides))
    assert "\n" not in e.value.line() and e.value.fix
    _assert_nothing_written(tmp_path)


def test_unknown_tokenizer_kind_is_rejected_before_reading(tmp_path):
    with pytest.raises(UserError, match="'tokenizer.kind' is 'bpe2'"):
        _config(tmp_path, ["builtin:python-docs"], tokenizer__kind="bpe2")


def test_output_path_that_is_a_file_is_refused(tmp_path):
    source = _write(tmp_path / "ok.txt", "\n\n".join(PROSE))
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(UserError, match="exists and is not a directory"):
        prepare(_config(tmp_path, [source]))


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    source = _write(tmp_path / "ok.txt", "\n\n".join(PROSE))
    prepare(_config(tmp_path, [source]))
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        prepare(_config(tmp_path, [source], seed=5))
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    prepare(_config(tmp_path, [source], seed=5, overwrite=True))
    assert (tmp_path / "out" / "manifest.json").read_bytes() != before


def test_an_interrupted_run_leaves_the_previous_output_intact(tmp_path, monkeypatch):
    source = _write(tmp_path / "ok.txt", "\n\n".join(PROSE))
    prepare(_config(tmp_path, [source]))
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    from lmforge.data import prepare as prepare_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "encode_spool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(tmp_path, [source], overwrite=True))
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    assert not list(tmp_path.glob(".out.*"))


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path
