"""Reading a corpus: files, directories and globs of text, JSONL, CSV/TSV and Parquet, any of them gzipped.

Everything streams: text files are read line by line, Parquet in record batches, so a corpus larger than
memory reads in memory bounded by its largest document. Files are decoded as UTF-8 here (not by `open`) so
that invalid bytes are found per document and handled by one policy (`encoding_errors`), with the file and
byte offset named when the policy is to fail.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from lmforge.config import Config, field
from lmforge.data import builtin
from lmforge.errors import UserError

DOC_SPLITS = ("paragraph", "line", "file")
ENCODING_ERRORS = ("replace", "skip", "fail")

_KINDS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv",
          ".parquet": "parquet"}
SUPPORTED = (".txt .md .jsonl .csv .tsv .parquet, each optionally gzipped (.jsonl.gz, ...), "
             "or builtin:python-docs / builtin:tinyshakespeare")

# How much of a file is sniffed for binary content, and what share of undecodable bytes in it means "binary"
# rather than "text with a few bad bytes" (Latin-1 prose has a few percent at most).
_SNIFF_BYTES = 8192
_BINARY_FRACTION = 0.3

_PARQUET_BATCH_ROWS = 1024

# A lone surrogate escape in JSON ("\ud800") decodes to a str that cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ReadOptions(Config):
    """How source files become documents."""

    jsonl_field: str = field(
        "text", "field of each .jsonl record that holds the document (a dotted path such as meta.text "
                "reaches into nested objects)")
    csv_column: str = field(
        "text", "column of .csv/.tsv/.parquet files that holds the document: a header name, or a 0-based "
                "index given as digits (the first row is always the header)")
    doc_split: str = field(
        "paragraph", "how .txt/.md files split into documents: paragraph (blank-line separated), line (one "
                     "per non-blank line), or file (a whole file is one document, held in memory)",
        choices=DOC_SPLITS)
    encoding_errors: str = field(
        "replace", "what to do with invalid UTF-8: replace the bad bytes with U+FFFD, skip the document, or "
                   "fail naming the file and byte offset",
        choices=ENCODING_ERRORS)


def text_under_policy(text: str, policy: str, *, what: str, option: str = "encoding_errors") -> str | None:
    """A text given directly (a prompt, a text to explain) under the `encoding_errors` policy of corpora.

    Invalid UTF-8 reaches Python as lone surrogates: bytes that are not UTF-8 in `argv` or a file read with
    `surrogateescape`, or a `\\ud800` escape in JSON/YAML. Such a text cannot be encoded; `replace` gives it back
    with U+FFFD for each of them, `skip` gives None, `fail` raises a one-line UserError naming `what`.
    """
    bad = _SURROGATE.findall(text)
    if not bad:
        return text
    if policy == "replace":
        return _SURROGATE.sub("\ufffd", text)
    if policy == "skip":
        return None
    first = _SURROGATE.search(text)
    assert first is not None
    raise UserError(f"{what} holds invalid UTF-8 ({len(bad)} undecodable byte(s), the first at character "
                    f"{first.start()})", fix=f"give UTF-8 text, or set {option} to replace")


@dataclass(slots=True)
class Document:
    text: str
    source: str  # the file path, or "builtin:python-docs"


@dataclass
class ReadStats:
    """What reading saw; filled in as documents are yielded."""

    files: int = 0
    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents yielded
    invalid_utf8_documents: int = 0  # documents with invalid UTF-8, whatever the policy did with them
    skipped_invalid_utf8: int = 0  # of those, the ones dropped (encoding_errors=skip)
    skipped_empty: int = 0  # null or empty .jsonl fields and .csv/.tsv/.parquet cells

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------- sources

def source_kind(path: str) -> tuple[str, bool] | None:
    """(format, gzipped) of a path by its name, e.g. ("jsonl", True) for x.jsonl.gz; None if unsupported."""
    name = path.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    kind = _KINDS.get(os.path.splitext(name)[1])
    return (kind, gz) if kind else None


def _directory_files(directory: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        # Hidden entries (.git, editor swap files, .DS_Store) are never corpus; sorting fixes the order.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not f.startswith(".") and source_kind(f) is not None)
    return found


def _expand(spec: str) -> list[str]:
    """The supported files one path, directory or glob names; a UserError when it names none."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        files = _directory_files(path)
        if not files:
            raise UserError("directory holds no supported files", where=spec, fix=f"supported: {SUPPORTED}")
        return files
    if os.path.isfile(path):
        if source_kind(path) is None:
            raise UserError("unsupported file type", where=spec, fix=f"supported: {SUPPORTED}")
        return [path]
    if os.path.exists(path):
        raise UserError("not a regular file or directory", where=spec, fix="save the data to a file first")
    if not any(c in path for c in "*?["):  # an existing path is taken literally even if it has such characters
        raise UserError("no such file or directory", where=spec, fix="check the path")
    matches = sorted(glob.glob(path, recursive=True))
    if not matches:
        raise UserError("pattern matches no files", where=spec,
                        fix="check the pattern, and quote it so the shell passes it on unexpanded")
    files = []
    for m in matches:
        if os.path.isdir(m):
            files.extend(_directory_files(m))
        elif source_kind(m) is not None:
            files.append(m)
    if not files:
        raise UserError(f"pattern matches {len(matches)} paths but no supported file", where=spec,
                        fix=f"supported: {SUPPORTED}")
    return files


def resolve_sources(specs: list[str]) -> list[str]:
    """Expand files, directories (recursively), globs and built-in corpora (builtin:NAME) into sorted sources."""
    if not specs:
        raise UserError("no corpus given", fix=f"name files, directories or globs ({SUPPORTED})")
    found: set[str] = set()
    for spec in specs:
        if spec.startswith("builtin:"):
            if spec not in builtin.NAMES:
                from lmforge.config import suggest

                raise UserError(f"unknown built-in corpus '{spec}'{suggest(spec, builtin.NAMES)}",
                                fix=f"the built-in corpora are {', '.join(builtin.NAMES)}")
            found.add(spec)
        else:
            found.update(os.path.normpath(f) for f in _expand(spec))
    return sorted(found)


def source_fingerprint(source: str) -> dict[str, Any]:
    """{"path", "bytes", "sha256"} of a source file (streamed), or the built-in corpus's cheap fingerprint."""
    if source == builtin.NAME:
        return builtin.fingerprint()
    if source in builtin.NAMES:
        return builtin.packaged_fingerprint(source)
    h = hashlib.sha256()
    size = 0
    try:
        with open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror or e})", where=source) from None
    return {"path": source, "bytes": size, "sha256": h.hexdigest()}


# ------------------------------------------------------------------------------------------------ decoding

def _open(path: str, gz: bool) -> IO[bytes]:
    try:
        return gzip.open(path, "rb") if gz else open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot open ({e.strerror or e})", where=path) from None


def _check_text(path: str, gz: bool) -> None:
    """Refuse binary files (and UTF-16 text) by their first 8 KiB, before reading them as documents."""
    with _open(path, gz) as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError("is UTF-16 text; lmforge reads UTF-8", where=path,
                        fix="convert it, e.g. iconv -f UTF-16 -t UTF-8 in > out")
    if b"\0" in head:
        raise UserError("looks like a binary file (it holds NUL bytes), not text", where=path,
                        fix=f"remove it from the corpus; supported: {SUPPORTED}")
    # An incremental decoder with final=False does not count a character cut off at the 8 KiB boundary.
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=False)
    if text and text.count("\ufffd") > _BINARY_FRACTION * len(text):
        raise UserError("looks like a binary file (mostly invalid UTF-8), not text", where=path,
                        fix=f"remove it from the corpus, or convert it to UTF-8; supported: {SUPPORTED}")


class _Decoder:
    """Decodes one document's bytes under the encoding_errors policy, counting what it finds."""

    def __init__(self, path: str, gz: bool, opts: ReadOptions, stats: ReadStats) -> None:
        self.path, self.gz, self.policy, self.stats = path, gz, opts.encoding_errors, stats

    def __call__(self, raw: bytes, offset: int) -> str | None:
        """`raw` starts at byte `offset` of the (decompressed) file; None means skip the document."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return self.invalid(offset + e.start, raw.decode("utf-8", "replace"))

    def invalid(self, offset: int | None, replaced: str, where: str | None = None,
                what: str = "invalid UTF-8") -> str | None:
        """Apply the policy to an invalid document; `replaced` is its text with U+FFFD for the bad bytes."""
        self.stats.invalid_utf8_documents += 1
        if self.policy == "replace":
            return replaced
        if self.policy == "skip":
            self.stats.skipped_invalid_utf8 += 1
            return None
        if offset is not None:
            what += f" at byte offset {offset}" + (" of the decompressed data" if self.gz else "")
        raise UserError(what, where=where or self.path,
                        fix="fix or convert the file to UTF-8, or set encoding_errors to replace or skip")


def _lines(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line with its newline) of a binary file, a UTF-8 byte-order mark dropped."""
    offset = 0
    for line in f:
        if offset == 0 and line.startswith(codecs.BOM_UTF8):
            line = line[3:]
            offset = 3
        yield offset, line
        offset += len(line)


# ------------------------------------------------------------------------------------------------- formats

def _read_text(path: str, gz: bool, opts: ReadOptions, decode: _Decoder) -> Iterator[str]:
    with _open(path, gz) as f:
        if opts.doc_split == "file":
            data = f.read()
            start = 3 if data.startswith(codecs.BOM_UTF8) else 0
            if data[start:].strip():
                text = decode(data[start:], start)
                if text is not None:
                    yield text.replace("\r\n", "\n").strip("\n")
            return
        if opts.doc_split == "line":
            for offset, line in _lines(f):
                if line.strip():
                    text = decode(line.rstrip(b"\r\n"), offset)
                    if text is not None:
                        yield text
            return
        # paragraph: runs of non-blank lines; whitespace-only lines separate them.
        parts: list[bytes] = []
        start = 0
        for offset, line in _lines(f):
            if line.strip():
                if not parts:
                    start = offset
                parts.append(line)
                continue
            if parts:
                text = decode(b"".join(parts).rstrip(b"\r\n"), start)
                parts = []
                if text is not None:
                    yield text.replace("\r\n", "\n")
        if parts:
            text = decode(b"".join(parts).rstrip(b"\r\n"), start)
            if text is not None:
                yield text.replace("\r\n", "\n")


def _json_field(record: dict[str, Any], name: str) -> Any:
    """record[name], or a dotted path into nested objects; KeyError if absent."""
    if name in record:
        return record[name]
    node: Any = record
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(name)
        node = node[part]
    return node


def _read_jsonl(path: str, gz: bool, opts: ReadOptions, decode: _Decoder) -> Iterator[str]:
    name = opts.jsonl_field
    with _open(path, gz) as f:
        for lineno, (offset, line) in enumerate(_lines(f), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            text = decode(line, offset)
            if text is None:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"not valid JSON ({e.msg} at column {e.colno})", where=where,
                                fix="each line of a .jsonl file must be one JSON object") from None
            if not isinstance(record, dict):
                raise UserError(f"the record is a JSON {type(record).__name__}, not an object", where=where,
                                fix="each line of a .jsonl file must be one JSON object")
            try:
                value = _json_field(record, name)
            except KeyError:
                raise UserError(f"record has no field '{name}'; its fields: {', '.join(map(str, record))}",
                                where=where, fix="choose the field with the jsonl_field option") from None
            if value is None or value == "":
                decode.stats.skipped_empty += 1
                continue
            if not isinstance(value, str):
                raise UserError(f"field '{name}' is a JSON {type(value).__name__}, not a string", where=where,
                                fix="choose a field that holds text with the jsonl_field option")
            if "\\u" in text and _SURROGATE.search(value):
                fixed = decode.invalid(None, _SURROGATE.sub("\ufffd", value), where=where,
                                       what=f"field '{name}' holds a lone surrogate (a \\ud800-\\udfff "
                                            "escape), which is not valid Unicode")
                if fixed is None:
                    continue
                value = fixed
            yield value


def _column_index(header: list[str], name: str, where: str) -> int:
    if name in header:
        return header.index(name)
    if name.isdigit() and int(name) < len(header):
        return int(name)
    raise UserError(f"no column '{name}'; columns: {', '.join(header) or '(none)'}", where=where,
                    fix="choose the column with the csv_column option (a name or a 0-based index)")


def delimited_rows(lines: Iterable[str], tsv: bool) -> Any:
    """A `csv.reader` over text lines, as lmforge reads every CSV and TSV file (corpora, task files): TSV has no
    quoting (a quote character is text); CSV fields may be quoted and span lines. `reader.line_num` is the line
    a row ends on; malformed CSV raises `csv.Error`."""
    # Long documents are normal; the csv module's default 128 KiB field limit (process-wide) is too small.
    csv.field_size_limit(2**31 - 1)
    return csv.reader(lines, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
                      strict=not tsv)


def _read_csv(path: str, gz: bool, opts: ReadOptions, decode: _Decoder, tsv: bool) -> Iterator[str]:
    bad: list[int] = []  # offsets of invalid UTF-8 in the lines the reader consumed for the current row

    def lines(f: IO[bytes]) -> Iterator[str]:
        for offset, line in _lines(f):
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(offset + e.start)
                # surrogateescape keeps the bad bytes recoverable, to decide per cell below.
                yield line.decode("utf-8", "surrogateescape")

    with _open(path, gz) as f:
        reader = delimited_rows(lines(f), tsv)
        try:
            header = next(reader, None)
            if header is None:
                return
            col = _column_index(header, opts.csv_column, f"{path}:1")
            bad.clear()
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row:
                    continue
                if col >= len(row):
                    raise UserError(f"row has {len(row)} columns but the header has {len(header)}",
                                    where=where, fix="every row needs the document's column")
                cell = row[col]
                if bad:
                    offset = bad[0]
                    bad.clear()
                    try:
                        cell.encode("utf-8")
                    except UnicodeEncodeError:
                        fixed = decode.invalid(
                            offset, cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                        if fixed is None:
                            continue
                        cell = fixed
                if not cell:
                    decode.stats.skipped_empty += 1
                    continue
                yield cell
        except csv.Error as e:
            raise UserError(f"malformed {'TSV' if tsv else 'CSV'} ({e})", where=f"{path}:{reader.line_num}",
                            fix="check the quoting of that row") from None


def _import_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet files needs pyarrow, which is not installed",
                        fix="pip install 'lmforge[data]'") from None
    return pq


def _read_parquet(path: str, gz: bool, opts: ReadOptions, decode: _Decoder) -> Iterator[str]:
    import pyarrow as pa

    pq = _import_pyarrow()
    with contextlib.ExitStack() as stack:
        local = path
        if gz:  # Parquet needs a seekable file: decompress to a temporary one (streamed, on disk)
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".parquet"))
            with _open(path, gz) as f:
                shutil.copyfileobj(f, tmp, 1 << 20)
            tmp.flush()
            local = tmp.name
        try:
            pf = stack.enter_context(pq.ParquetFile(local))
            names = pf.schema_arrow.names
            col = _column_index(names, opts.csv_column, path)
            ftype = pf.schema_arrow.field(col).type
            if pa.types.is_dictionary(ftype):  # a categorical column: its values decide
                ftype = ftype.value_type
            is_binary = pa.types.is_binary(ftype) or pa.types.is_large_binary(ftype) or str(ftype) == "binary_view"
            is_text = pa.types.is_string(ftype) or pa.types.is_large_string(ftype) or str(ftype) == "string_view"
            if not (is_binary or is_text):
                raise UserError(f"column '{names[col]}' holds {ftype}, not text", where=path,
                                fix="choose a text column with the csv_column option")
            row = 0
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[names[col]]):
                for value in batch.column(0).to_pylist():
                    row += 1
                    if is_binary and value is not None:
                        try:
                            value = value.decode("utf-8")
                        except UnicodeDecodeError:
                            value = decode.invalid(None, value.decode("utf-8", "replace"),
                                                   where=f"{path} (row {row})")
                            if value is None:
                                continue
                    if not value:
                        decode.stats.skipped_empty += 1
                        continue
                    yield value
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"cannot read as Parquet ({e})", where=path,
                            fix="check that the file is a complete Parquet file") from None


# ----------------------------------------------------------------------------------------------- documents

def _read_source(source: str, opts: ReadOptions, stats: ReadStats) -> Iterator[str]:
    if source == builtin.NAME:
        yield from builtin.python_docs()
        return
    if source in builtin.NAMES:  # a text file shipped in the package, read as that file
        path = str(builtin.packaged_file(source))
        yield from _read_text(path, True, opts, _Decoder(path, True, opts, stats))
        return
    kind_gz = source_kind(source)
    if kind_gz is None:
        raise UserError("unsupported file type", where=source, fix=f"supported: {SUPPORTED}")
    kind, gz = kind_gz
    decode = _Decoder(source, gz, opts, stats)
    try:
        if kind == "parquet":
            yield from _read_parquet(source, gz, opts, decode)
            return
        _check_text(source, gz)
        if kind == "text":
            yield from _read_text(source, gz, opts, decode)
        elif kind == "jsonl":
            yield from _read_jsonl(source, gz, opts, decode)
        else:
            yield from _read_csv(source, gz, opts, decode, tsv=kind == "tsv")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"not a valid gzip file, or truncated ({e})", where=source,
                        fix="re-download or re-compress it") from None
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror or e})", where=source) from None


def iter_documents(sources: list[str], opts: ReadOptions, stats: ReadStats) -> Iterator[Document]:
    """Documents of `sources` (from `resolve_sources`) in order, one at a time; `stats` counts as they go."""
    if any((source_kind(s) or ("", False))[0] == "parquet" for s in sources):
        _import_pyarrow()  # fail before reading anything rather than halfway through the corpus
    return _iter_documents(sources, opts, stats)


def _iter_documents(sources: list[str], opts: ReadOptions, stats: ReadStats) -> Iterator[Document]:
    for source in sources:
        stats.files += 1
        for text in _read_source(source, opts, stats):
            stats.documents += 1
            stats.bytes += len(text) if text.isascii() else len(text.encode("utf-8"))
            yield Document(text, source)
