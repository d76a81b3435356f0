"""The built-in corpus: real prose from the Python install, read without importing, in a fixed order."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from lmforge.data import builtin
from lmforge.data.corpus import ReadOptions, ReadStats, iter_documents

# Modules whose import has visible effects (a browser opens, the Zen is printed, a window may open).
NEVER_IMPORTED = ("antigravity", "this", "turtle")


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], ReadStats, list[str]]:
    """The whole corpus, read once for this module (about 2 s), through the same path `prepare` uses."""
    already = [m for m in NEVER_IMPORTED if m in sys.modules]
    stats = ReadStats()
    docs = iter_documents([builtin.NAME], ReadOptions(), stats)
    texts = []
    for d in docs:
        assert d.source == builtin.NAME
        texts.append(d.text)
    newly_imported = [m for m in NEVER_IMPORTED if m in sys.modules and m not in already]
    return texts, stats, newly_imported


def test_corpus_is_megabytes_of_english_prose(corpus):
    texts, stats, _ = corpus
    assert stats.documents == len(texts) > 1000
    assert stats.bytes > 1_000_000
    with_articles = sum(1 for t in texts if " the " in t)
    assert with_articles / len(texts) > 0.6  # prose, not code
    assert any(t.startswith('The "assert" statement') for t in texts)  # the language reference
    assert any("Return" in t for t in texts)  # docstrings


def test_modules_are_read_not_imported(corpus):
    assert corpus[2] == []


def test_order_is_deterministic(corpus):
    texts = corpus[0]
    again = list(itertools.islice(builtin.python_docs(), 600))
    assert again == texts[:600]


def test_sources_skip_tests_demos_and_third_party_and_are_sorted():
    paths = builtin.stdlib_sources()
    assert len(paths) > 100
    assert paths == builtin.stdlib_sources()
    for p in paths:
        assert not {"test", "tests", "idlelib", "turtledemo", "site-packages"} & set(p.parts), p


def test_fake_stdlib_tree_is_walked_in_sorted_order_skipping_excluded_dirs(tmp_path):
    for rel in ["zeta.py", "alpha.py", "pkg/b.py", "pkg/a.py", "test/t.py", "pkg/tests/t.py", "idlelib/x.py",
                "site-packages/lib.py", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    got = [p.relative_to(tmp_path).as_posix() for p in builtin.stdlib_sources(tmp_path)]
    assert got == ["alpha.py", "zeta.py", "pkg/a.py", "pkg/b.py"]


def test_docstrings_come_in_source_order_long_ones_only(tmp_path):
    long = "x" * builtin.MIN_DOCSTRING_CHARS
    src = f'''"""Module {long}"""
import sys

class A:
    """Class {long}"""
    def method(self):
        """Short."""
    async def run(self):
        """Async {long}"""

if sys.platform:
    def inner():
        """Conditional {long}"""
        def nested():
            """Nested {long}"""
try:
    pass
except ImportError:
    def fallback():
        """Fallback {long}"""
'''
    f = tmp_path / "m.py"
    f.write_text(src)
    docs = builtin.file_docstrings(f)
    assert [d.split()[0] for d in docs] == ["Module", "Class", "Async", "Conditional", "Nested", "Fallback"]


def test_unparsable_files_are_skipped(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    assert builtin.file_docstrings(bad) == []
    assert builtin.file_docstrings(tmp_path / "missing.py") == []


def test_fingerprint_is_stable():
    fp = builtin.fingerprint()
    assert fp == builtin.fingerprint()
    assert set(fp) == {"path", "bytes", "sha256", "python"} and fp["path"] == builtin.NAME
    assert fp["python"] == sys.version.split()[0]


def test_stdlib_dir_is_the_base_install():
    assert (builtin.stdlib_dir() / "os.py").is_file()
    assert Path(sys.base_prefix) in builtin.stdlib_dir().parents


def shakespeare_documents(spec: str) -> list[str]:
    return [d.text for d in iter_documents([spec], ReadOptions(), ReadStats())]


def test_tinyshakespeare_is_shipped_and_reads_as_the_plays_by_paragraph():
    from lmforge.data.corpus import resolve_sources, source_fingerprint

    assert resolve_sources([builtin.TINYSHAKESPEARE]) == [builtin.TINYSHAKESPEARE]
    docs = shakespeare_documents(builtin.TINYSHAKESPEARE)
    assert len(docs) > 7000 and docs[0].startswith("First Citizen:\nBefore we proceed any further")
    assert 1_100_000 < sum(len(d) for d in docs) < 1_120_000
    fp = source_fingerprint(builtin.TINYSHAKESPEARE)
    assert fp["path"] == builtin.TINYSHAKESPEARE and fp == source_fingerprint(builtin.TINYSHAKESPEARE)


def test_tinyshakespeare_gives_the_documents_of_the_original_file(shared_data):
    original = shared_data / "tinyshakespeare.txt"
    assert shakespeare_documents(builtin.TINYSHAKESPEARE) == shakespeare_documents(str(original))


def test_an_unknown_builtin_corpus_is_one_line_naming_the_ones_there_are():
    from lmforge.data.corpus import resolve_sources
    from lmforge.errors import UserError

    with pytest.raises(UserError, match="did you mean builtin:tinyshakespeare") as err:
        resolve_sources(["builtin:tinyshakespear"])
    assert "builtin:python-docs" in err.value.line()
