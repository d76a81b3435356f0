"""Reading corpora: formats, splitting, sources, errors, encodings, streaming."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

import pytest

from lmforge.config import add_config_args, resolve
from lmforge.data import builtin
from lmforge.data.corpus import (
    Document,
    ReadOptions,
    ReadStats,
    iter_documents,
    resolve_sources,
    source_fingerprint,
)
from lmforge.errors import UserError


def read(paths: list[Path | str], **opts: str) -> list[str]:
    return [d.text for d in iter_documents([str(p) for p in paths], ReadOptions(**opts), ReadStats())]


def write(path: Path, data: str | bytes) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


# ------------------------------------------------------------------------------------------------ text files

def test_paragraph_split_separates_on_blank_lines(tmp_path):
    f = write(tmp_path / "a.txt", "first line\nsame paragraph\n\n\n  \nsecond\n\nthird")
    assert read([f]) == ["first line\nsame paragraph", "second", "third"]


def test_line_split_yields_non_blank_lines(tmp_path):
    f = write(tmp_path / "a.md", "# Title\n\nbody one\n   \nbody two\n")
    assert read([f], doc_split="line") == ["# Title", "body one", "body two"]


def test_file_split_yields_whole_file(tmp_path):
    f = write(tmp_path / "a.txt", "one\n\ntwo\n")
    assert read([f], doc_split="file") == ["one\n\ntwo"]


def test_crlf_line_ends_and_utf8_bom_are_handled(tmp_path):
    f = write(tmp_path / "a.txt", b"\xef\xbb\xbfHello\r\nworld\r\n\r\nnext\r\n")
    assert read([f]) == ["Hello\nworld", "next"]
    assert read([f], doc_split="line") == ["Hello", "world", "next"]


def test_whitespace_only_file_yields_nothing(tmp_path):
    f = write(tmp_path / "a.txt", "\n  \n\n")
    for split in ("paragraph", "line", "file"):
        assert read([f], doc_split=split) == []


# ----------------------------------------------------------------------------------------- structured formats

def test_jsonl_reads_the_field_and_skips_empty_records(tmp_path):
    lines = [{"text": "alpha", "id": 1}, {"text": ""}, {"text": None}, {"text": "beta"}]
    f = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n\n")
    stats = ReadStats()
    docs = list(iter_documents([str(f)], ReadOptions(), stats))
    assert [d.text for d in docs] == ["alpha", "beta"]
    assert stats.skipped_empty == 2


def test_jsonl_other_field_and_dotted_path(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"body": "x", "meta": {"content": "nested text"}}\n')
    assert read([f], jsonl_field="body") == ["x"]
    assert read([f], jsonl_field="meta.content") == ["nested text"]


def test_csv_reads_named_column_with_quoted_multiline_fields(tmp_path):
    f = write(tmp_path / "a.csv", 'id,text\n1,"hello, world"\n2,"two\nlines"\n3,plain\n')
    assert read([f]) == ["hello, world", "two\nlines", "plain"]


def test_csv_column_by_index(tmp_path):
    f = write(tmp_path / "a.csv", "label,sentence\n0,good film\n1,bad film\n")
    assert read([f], csv_column="1") == ["good film", "bad film"]


def test_tsv_has_no_quoting(tmp_path):
    f = write(tmp_path / "a.tsv", 'label\tsentence\n1\tsaid "hi\n0\t"quoted" words\n')
    assert read([f], csv_column="sentence") == ['said "hi', '"quoted" words']


def test_parquet_reads_column_in_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"document {i}" for i in range(2500)]  # more than one batch
    table = pa.table({"id": list(range(2500)), "text": texts})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=700)
    assert read([tmp_path / "a.parquet"]) == texts
    assert read([tmp_path / "a.parquet"], csv_column="1")[:2] == texts[:2]


@pytest.mark.parametrize("name, content, opts", [
    ("a.txt.gz", "one\n\ntwo\n", {}),
    ("a.md.gz", "one\n\ntwo\n", {}),
    ("a.jsonl.gz", '{"text": "one"}\n{"text": "two"}\n', {}),
    ("a.csv.gz", "text\none\ntwo\n", {}),
    ("a.tsv.gz", "text\none\ntwo\n", {}),
])
def test_gzipped_files_read_like_plain_ones(tmp_path, name, content, opts):
    f = write(tmp_path / name, content)
    assert read([f], **opts) == ["one", "two"]


def test_gzipped_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "p.parquet")
    write(tmp_path / "a.parquet.gz", (tmp_path / "p.parquet").read_bytes())
    assert read([tmp_path / "a.parquet.gz"]) == ["one", "two"]


def test_stats_count_files_documents_and_utf8_bytes(tmp_path):
    a = write(tmp_path / "a.txt", "héllo\n\nworld\n")
    b = write(tmp_path / "b.jsonl", '{"text": "ü"}\n')
    stats = ReadStats()
    docs = list(iter_documents([str(a), str(b)], ReadOptions(), stats))
    assert [d.source for d in docs] == [str(a), str(a), str(b)]
    assert stats.as_dict() == {"files": 2, "documents": 3, "bytes": len("héllo".encode()) + 5 + 2,
                               "invalid_utf8_documents": 0, "skipped_invalid_utf8": 0, "skipped_empty": 0}


# ------------------------------------------------------------------------------------------------- sources

def test_directory_is_recursive_sorted_and_filtered(tmp_path):
    for rel in ["b.txt", "a.jsonl", "sub/c.md", "sub/deeper/d.csv.gz", "notes.pdf", ".hidden.txt", ".git/x.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    got = resolve_sources([str(tmp_path)])
    assert got == sorted(str(tmp_path / r) for r in ["a.jsonl", "b.txt", "sub/c.md", "sub/deeper/d.csv.gz"])


def test_globs_files_and_builtin_are_merged_sorted_and_deduplicated(tmp_path):
    for name in ["x1.txt", "x2.txt", "y.jsonl"]:
        (tmp_path / name).write_text("x")
    got = resolve_sources([str(tmp_path / "x*.txt"), str(tmp_path / "x1.txt"), "builtin:python-docs",
                           str(tmp_path / "./y.jsonl")])
    assert got == sorted([str(tmp_path / "x1.txt"), str(tmp_path / "x2.txt"), str(tmp_path / "y.jsonl"),
                          "builtin:python-docs"])


def test_existing_path_with_glob_characters_is_taken_literally(tmp_path):
    f = write(tmp_path / "data[1].txt", "x")
    (tmp_path / "data1.txt").write_text("y")
    assert resolve_sources([str(f)]) == [str(f)]


def test_recursive_glob(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.txt").write_text("x")
    assert resolve_sources([str(tmp_path / "**" / "*.txt")]) == [str(tmp_path / "a" / "b" / "deep.txt")]


@pytest.mark.parametrize("setup, spec, message", [
    (lambda p: None, "missing.txt", "no such file or directory"),
    (lambda p: (p / "empty").mkdir(), "empty", "directory holds no supported files"),
    (lambda p: (p / "d").mkdir() or (p / "d" / "x.pdf").write_text("x"), "d", "no supported files"),
    (lambda p: None, "nothing-*.txt", "pattern matches no files"),
    (lambda p: (p / "x.json").write_text("{}"), "*.json", "no supported file"),
    (lambda p: (p / "x.docx").write_text("x"), "x.docx", "unsupported file type"),
])
def test_bad_sources_are_user_errors(tmp_path, setup, spec, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message) as e:
        resolve_sources([str(tmp_path / spec)])
    assert str(tmp_path / spec) in str(e.value)  # names where
    assert e.value.fix


def test_unknown_builtin_and_empty_list_are_user_errors():
    with pytest.raises(UserError, match="unknown built-in corpus"):
        resolve_sources(["builtin:wikipedia"])
    with pytest.raises(UserError, match="no corpus given"):
        resolve_sources([])


def test_fingerprint_of_a_file_is_its_size_and_sha256(tmp_path):
    f = write(tmp_path / "a.txt", "some text\n")
    assert source_fingerprint(str(f)) == {"path": str(f), "bytes": 10,
                                          "sha256": hashlib.sha256(b"some text\n").hexdigest()}
    fp = source_fingerprint(builtin.NAME)
    assert fp["path"] == builtin.NAME and fp["bytes"] > 0 and len(fp["sha256"]) == 64


# -------------------------------------------------------------------------------------------------- errors

def test_binary_file_is_refused(tmp_path):
    f = write(tmp_path / "model.txt", b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(UserError, match="looks like a binary file") as e:
        read([f])
    assert str(f) in str(e.value)


def test_mostly_undecodable_file_is_refused(tmp_path):
    f = write(tmp_path / "noise.txt", bytes(range(128, 256)) * 20)
    with pytest.raises(UserError, match="looks like a binary file"):
        read([f])


def test_binary_file_inside_gzip_is_refused(tmp_path):
    f = write(tmp_path / "a.jsonl.gz", b"\x00\x01\x02" * 100)
    with pytest.raises(UserError, match="binary"):
        read([f])


def test_utf16_file_is_refused_with_a_conversion_hint(tmp_path):
    f = write(tmp_path / "a.txt", "hello".encode("utf-16"))
    with pytest.raises(UserError, match="UTF-16") as e:
        read([f])
    assert "iconv" in e.value.fix


def test_corrupt_gzip_is_a_user_error(tmp_path):
    f = tmp_path / "a.txt.gz"
    f.write_bytes(gzip.compress(b"hello\n" * 1000)[:-30])
    with pytest.raises(UserError, match="gzip"):
        read([f])
    (tmp_path / "b.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="gzip"):
        read([tmp_path / "b.txt.gz"])


def test_missing_jsonl_field_names_file_line_and_fields(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"body": "x", "title": "y"}\n')
    with pytest.raises(UserError) as e:
        read([f])
    msg = str(e.value)
    assert f"{f}:2" in msg and "'text'" in msg and "body, title" in msg


def test_invalid_json_and_non_string_fields_are_user_errors(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": \n')
    with pytest.raises(UserError, match="not valid JSON") as e:
        read([f])
    assert f"{f}:2" in str(e.value)
    g = write(tmp_path / "b.jsonl", '{"text": ["a", "b"]}\n')
    with pytest.raises(UserError, match="is a JSON list, not a string"):
        read([g])
    h = write(tmp_path / "c.jsonl", '["text"]\n')
    with pytest.raises(UserError, match="not an object"):
        read([h])


@pytest.mark.parametrize("name", ["a.csv", "a.tsv"])
def test_missing_csv_column_lists_columns(tmp_path, name):
    sep = "," if name.endswith("csv") else "\t"
    f = write(tmp_path / name, f"label{sep}sentence\n1{sep}fine\n")
    with pytest.raises(UserError) as e:
        read([f])
    msg = str(e.value)
    assert f"{f}:1" in msg and "no column 'text'" in msg and "label, sentence" in msg


def test_short_csv_row_names_the_line(tmp_path):
    f = write(tmp_path / "a.csv", "id,text\n1,fine\n2\n")
    with pytest.raises(UserError, match="row has 1 columns") as e:
        read([f])
    assert f"{f}:3" in str(e.value)


def test_missing_parquet_column_and_non_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"id": [1, 2], "body": ["a", "b"]}), tmp_path / "a.parquet")
    with pytest.raises(UserError, match="no column 'text'; columns: id, body"):
        read([tmp_path / "a.parquet"])
    with pytest.raises(UserError, match="holds int64, not text"):
        read([tmp_path / "a.parquet"], csv_column="id")


def test_parquet_binary_and_categorical_text_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"raw": pa.array([b"ok", b"bad \xff"], type=pa.binary()),
                      "cat": pa.array(["x", "y"]).dictionary_encode()})
    pq.write_table(table, tmp_path / "a.parquet")
    assert read([tmp_path / "a.parquet"], csv_column="cat") == ["x", "y"]
    assert read([tmp_path / "a.parquet"], csv_column="raw") == ["ok", "bad \ufffd"]
    assert read([tmp_path / "a.parquet"], csv_column="raw", encoding_errors="skip") == ["ok"]
    with pytest.raises(UserError, match="row 2"):
        read([tmp_path / "a.parquet"], csv_column="raw", encoding_errors="fail")


def test_not_a_parquet_file(tmp_path):
    pytest.importorskip("pyarrow")
    f = write(tmp_path / "a.parquet", b"PAR1 but not really" * 10)
    with pytest.raises(UserError, match="cannot read as Parquet"):
        read([f])


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    f = write(tmp_path / "a.parquet", b"x")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match="pyarrow") as e:
        iter_documents([str(f)], ReadOptions(), ReadStats())  # fails up front, before reading anything
    assert "lmforge[data]" in e.value.fix


def test_bad_option_values_are_user_errors():
    with pytest.raises(UserError, match="doc_split"):
        ReadOptions(doc_split="sentence")
    with pytest.raises(UserError, match="encoding_errors"):
        ReadOptions(encoding_errors="ignore")


def test_options_are_cli_flags():
    parser = argparse.ArgumentParser()
    add_config_args(parser, ReadOptions)
    args = parser.parse_args(["--doc-split", "line", "--csv-column", "2", "--encoding-errors", "skip"])
    opts = resolve(ReadOptions, args)
    assert (opts.doc_split, opts.csv_column, opts.encoding_errors, opts.jsonl_field) == ("line", "2", "skip", "text")


# ------------------------------------------------------------------------------------------- invalid UTF-8

BAD = "good one\n\nbad \xff\xfe here\n\nlast\n".encode("latin-1")


def test_invalid_utf8_replace(tmp_path):
    f = write(tmp_path / "a.txt", BAD)
    stats = ReadStats()
    docs = [d.text for d in iter_documents([str(f)], ReadOptions(encoding_errors="replace"), stats)]
    assert docs == ["good one", "bad \ufffd\ufffd here", "last"]
    assert (stats.invalid_utf8_documents, stats.skipped_invalid_utf8) == (1, 0)


def test_invalid_utf8_skip(tmp_path):
    f = write(tmp_path / "a.txt", BAD)
    stats = ReadStats()
    docs = [d.text for d in iter_documents([str(f)], ReadOptions(encoding_errors="skip"), stats)]
    assert docs == ["good one", "last"]
    assert (stats.invalid_utf8_documents, stats.skipped_invalid_utf8, stats.documents) == (1, 1, 2)


def test_invalid_utf8_fail_names_file_and_byte_offset(tmp_path):
    f = write(tmp_path / "a.txt", BAD)
    offset = BAD.index(b"\xff")
    with pytest.raises(UserError, match=f"byte offset {offset}") as e:
        read([f], encoding_errors="fail")
    assert str(f) in str(e.value)


@pytest.mark.parametrize("name, data", [
    ("a.jsonl", b'{"text": "ok"}\n{"text": "bad \xff"}\n'),
    ("a.csv", b'id,text\n1,ok\n2,"bad \xff\nmore"\n'),
    ("a.tsv", b"id\ttext\n1\tok\n2\tbad \xff\n"),
])
def test_invalid_utf8_in_structured_files_follows_policy(tmp_path, name, data):
    f = write(tmp_path / name, data)
    assert read([f], encoding_errors="replace") == ["ok", "bad \ufffd" + ("\nmore" if name == "a.csv" else "")]
    assert read([f], encoding_errors="skip") == ["ok"]
    offset = data.index(b"\xff")
    with pytest.raises(UserError, match=f"byte offset {offset}"):
        read([f], encoding_errors="fail")


def test_invalid_utf8_in_other_csv_column_is_ignored(tmp_path):
    f = write(tmp_path / "a.csv", b"note,text\n\xff,fine\n")
    stats = ReadStats()
    assert [d.text for d in iter_documents([str(f)], ReadOptions(encoding_errors="fail"), stats)] == ["fine"]
    assert stats.invalid_utf8_documents == 0


def test_lone_surrogate_escape_in_json_is_invalid_text(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "bad \\ud800 escape"}\n')
    assert read([f]) == ["bad \ufffd escape"]
    with pytest.raises(UserError, match="surrogate"):
        read([f], encoding_errors="fail")


def test_invalid_offset_in_gzip_refers_to_decompressed_data(tmp_path):
    f = write(tmp_path / "a.txt.gz", b"fine\n\nbad \xff\n")
    with pytest.raises(UserError, match="byte offset 10 of the decompressed data"):
        read([f], encoding_errors="fail")


# ------------------------------------------------------------------------------------------------ streaming

@pytest.mark.parametrize("name, first, later", [
    ("a.txt", "first paragraph\n\n", "appended later\n"),
    ("a.jsonl", '{"text": "first"}\n', '{"text": "appended later"}\n'),
    ("a.csv", "text\nfirst\n", "appended later\n"),
])
def test_documents_stream_without_reading_the_whole_file_first(tmp_path, name, first, later):
    # A reader that loaded the file up front would never see text appended after its first document came out.
    f = tmp_path / name
    f.write_text(first)
    docs = iter_documents([str(f)], ReadOptions(), ReadStats())
    assert "first" in next(docs).text
    with open(f, "a") as out:
        out.write(later)
    assert [d.text for d in docs] == ["appended later"]


def test_iteration_is_lazy_across_sources(tmp_path):
    a = write(tmp_path / "a.txt", "only\n")
    stats = ReadStats()
    docs = iter_documents([str(a), str(tmp_path / "deleted-later.txt")], ReadOptions(), stats)
    assert next(docs) == Document("only", str(a))
    assert stats.files == 1  # the second source has not been opened yet
    with pytest.raises(UserError, match="cannot open"):
        next(docs)


# --------------------------------------------------------------------------------------------- shared data

@pytest.mark.shared_data
def test_reads_the_team_datasets(shared_data):
    tsv = shared_data / "sst2" / "train.tsv"
    csv_file = shared_data / "cnn_dailymail" / "sample100.csv"
    shakespeare = shared_data / "tinyshakespeare.txt"
    stats = ReadStats()
    sentences = list(iter_documents([str(tsv)], ReadOptions(csv_column="sentence"), stats))
    assert len(sentences) == 67349
    assert len(read([csv_file], csv_column="article")) == 100
    speeches = read([shakespeare])
    assert speeches[0].startswith("First Citizen:") and len(speeches) > 5000
