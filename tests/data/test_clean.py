"""Cleaning: each step and its counter, PII hits and non-hits, length filters, exact and near de-duplication."""

from __future__ import annotations

import itertools
import sys

import pytest

from lmforge.data.clean import CleanOptions, CleanStats, clean_documents, clean_text, scrub_pii, shingle_hashes
from lmforge.data.corpus import Document
from lmforge.errors import UserError

# Every step off: each test turns on the one it is about.
OFF = {"normalize": "none", "strip_control": False, "fix_whitespace": False, "dedup": False, "pii": False}


def clean(texts: list[str], **opts) -> tuple[list[str], CleanStats]:
    stats = CleanStats()
    docs = clean_documents((Document(t, "src") for t in texts), CleanOptions(**opts), stats)
    return [d.text for d in docs], stats


def one(text: str, **opts) -> tuple[str, CleanStats]:
    stats = CleanStats()
    return clean_text(text, CleanOptions(**{**OFF, **opts}), stats), stats


# ----------------------------------------------------------------------------------------------- normalize

def test_nfc_composes_combining_marks():
    out, stats = one("cafe\u0301 and caf\u00e9", normalize="nfc")
    assert out == "caf\u00e9 and caf\u00e9"
    assert (stats.documents_normalized, stats.chars_normalized) == (1, 1)


def test_nfkc_folds_compatibility_characters_nfc_does_not():
    text = "\ufb01ne \uff21\uff22"  # "ﬁne ＡＢ": ligature and full-width letters
    assert one(text, normalize="nfc")[0] == text
    out, stats = one(text, normalize="nfkc")
    assert out == "fine AB" and stats.chars_normalized == 3


def test_normalize_none_and_already_normal_text_are_untouched():
    assert one("cafe\u0301", normalize="none")[0] == "cafe\u0301"
    out, stats = one("plain ascii and caf\u00e9", normalize="nfc")
    assert out == "plain ascii and caf\u00e9" and stats.documents_normalized == 0


# -------------------------------------------------------------------------------------------- strip_control

def test_control_and_format_characters_are_removed_except_newline_tab_and_joiners():
    text = "a\x00b\x07c\x1bd\u200be\ufefff\u00adg\tt\nn \u200d \u200c"
    out, stats = one(text, strip_control=True)
    assert out == "abcdefg\tt\nn \u200d \u200c"
    assert stats.control_chars_removed == 6


def test_line_ends_become_newlines():
    out, stats = one("a\r\nb\rc\u2028d\x85e", strip_control=True)
    assert out == "a\nb\nc\nd\ne" and stats.newlines_normalized == 4


def test_strip_control_off_keeps_them():
    assert one("a\x07b\r\n", strip_control=False)[0] == "a\x07b\r\n"


# ------------------------------------------------------------------------------------------- fix_whitespace

def test_whitespace_runs_collapse_lines_are_stripped_and_blank_lines_limited():
    text = "  Title  \n\n\n\nword   word\tword \u00a0 word   \n\n\n    indented   code\n\tTabbed\nend  "
    out, stats = one(text, fix_whitespace=True)
    assert out == "Title\n\nword word word word\n\n    indented code\n\tTabbed\nend"
    assert stats.whitespace_fixed == 1


def test_clean_whitespace_is_not_counted():
    out, stats = one("one two\n\nthree", fix_whitespace=True)
    assert out == "one two\n\nthree" and stats.whitespace_fixed == 0


def test_whitespace_with_carriage_returns_when_strip_control_is_off():
    assert one("a  b \r\nc\x0bd", fix_whitespace=True)[0] == "a b\nc d"


# ---------------------------------------------------------------------------------------------------- PII

@pytest.mark.parametrize("text, expected, kind", [
    ("write to john.doe+tag@example.co.uk today", "write to <EMAIL> today", "email"),
    ("Mail: a_b-c@mail-server.org.", "Mail: <EMAIL>.", "email"),
    ("card 4111 1111 1111 1111 expires", "card <CARD> expires", "card"),
    ("card 4111-1111-1111-1111.", "card <CARD>.", "card"),
    ("card 4111111111111111", "card <CARD>", "card"),
    ("amex 3782 822463 10005", "amex <CARD>", "card"),
    ("host 192.168.0.1 is up", "host <IP> is up", "ip"),
    ("from 10.0.0.255.", "from <IP>.", "ip"),
    ("v6 2001:db8:85a3::8a2e:370:7334 ok", "v6 <IP> ok", "ip"),
    ("v6 2001:0db8:0000:0000:0000:ff00:0042:8329", "v6 <IP>", "ip"),
    ("call (415) 555-2671 now", "call <PHONE> now", "phone"),
    ("call 415-555-2671.", "call <PHONE>.", "phone"),
    ("call 415.555.2671", "call <PHONE>", "phone"),
    ("call 1-800-555-0199", "call <PHONE>", "phone"),
    ("call +44 20 7946 0958", "call <PHONE>", "phone"),
    ("call +14155552671", "call <PHONE>", "phone"),
    ("call +1 (415) 555-2671", "call <PHONE>", "phone"),
    ("call 020 7946 0958", "call <PHONE>", "phone"),
])
def test_pii_is_replaced_and_counted(text, expected, kind):
    stats = CleanStats()
    assert scrub_pii(text, stats) == expected
    counts = {"email": stats.pii_email, "card": stats.pii_card, "ip": stats.pii_ip, "phone": stats.pii_phone}
    assert counts == {k: int(k == kind) for k in counts}


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 fails Luhn",
    "number 4111111111111112",
    "a long id 12345678901234567890123",
    "in 2023 there were 1,234,567 people",
    "Python 3.11.7 and 3.12, version 1.2.3",
    "on 2023-01-15 and 12/03/2021 at 12:30:45",
    "pi is 3.14159 and e is 2.71828; x = 42",
    "dial 555-1234 (seven digits are not enough)",
    "ISBN 978-3-16-148410-0",
    "not an address: 256.1.1.1 or 1.2.3, and section 3.1.1.6",
    "slices x[1::2], loopback ::1, fe80::1, ratio 16:9",
    "MAC 00:1a:2b:3c:4d:5e",
    "decorators @property and @staticmethod, matrix a @ b",
    "list 1 2 3 4 5 6 7 8 9 10 11 12 13 14",
    "x+1234 and 10-20-30, padding as in +000000120",
    "user@localhost has no domain",
])
def test_ordinary_numbers_and_text_are_not_pii(text):
    stats = CleanStats()
    assert scrub_pii(text, stats) == text
    assert stats.pii_email == stats.pii_card == stats.pii_ip == stats.pii_phone == 0


def test_scrub_pii_without_stats_and_several_kinds_at_once():
    text = "Reach me at me@x.io or 415-555-2671 from 82.165.3.9 paying with 5555555555554444."
    assert scrub_pii(text) == "Reach me at <EMAIL> or <PHONE> from <IP> paying with <CARD>."


def test_pii_step_is_optional():
    text = "me@x.io"
    assert one(text, pii=False)[0] == text
    out, stats = one(text, pii=True)
    assert out == "<EMAIL>" and stats.pii_email == 1


def test_long_tokens_are_not_pii():
    # With backtracking-prone patterns this input takes minutes (a visibly slow suite); the patterns are linear.
    text = "@" + "a" * 200_000 + " " + "1" * 200_000 + " " + ":1" * 50_000
    assert scrub_pii(text) == text


# ------------------------------------------------------------------------------------------ length filters

def test_short_long_and_empty_documents_are_dropped_and_counted_never_truncated():
    out, stats = clean(["ok doc", "x", "   ", "way too long a document"], min_chars=2, max_chars=10)
    assert out == ["ok doc"]
    assert (stats.dropped_short, stats.dropped_long, stats.dropped_empty) == (1, 1, 1)
    assert (stats.documents_in, stats.documents_out) == (4, 1)


def test_max_chars_zero_means_no_limit():
    out, _ = clean(["a" * 100_000], max_chars=0)
    assert out == ["a" * 100_000]


# ----------------------------------------------------------------------------------------- de-duplication

def test_exact_duplicates_are_dropped_after_cleaning():
    out, stats = clean(["Hello  world", "Hello world", "hello world", "Hello world \n"])
    assert out == ["Hello world", "hello world"]
    assert stats.exact_duplicates == 2


def test_dedup_off_keeps_duplicates():
    out, stats = clean(["same", "same"], dedup=False)
    assert out == ["same", "same"] and stats.exact_duplicates == 0


BASE = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch and "
        "drinks his coffee slowly in the morning sun before the long day of work begins in the fields")


def test_near_duplicates_are_dropped_distinct_documents_kept():
    pytest.importorskip("datasketch")
    near = BASE.replace("fields", "meadows")  # last word changed: 28 of 30 distinct 5-grams shared (0.93)
    other = ("Completely different text about compilers, parsers and the code generators that turn "
             "syntax trees into machine instructions for many processors")
    out, stats = clean([BASE, near, other], near_dedup=True)
    assert out == [BASE, other]
    assert stats.near_duplicates == 1 and stats.exact_duplicates == 0


def test_near_dedup_threshold_controls_what_counts():
    pytest.importorskip("datasketch")
    words = BASE.split()
    half = " ".join(words[: len(words) // 2] + ["entirely", "new", "ending", "words", "here"] * 3)
    assert clean([BASE, half], near_dedup=True, near_dedup_threshold=0.9)[1].near_duplicates == 0
    assert clean([BASE, half], near_dedup=True, near_dedup_threshold=0.2)[1].near_duplicates == 1


def test_short_documents_use_their_words_as_shingles():
    assert len(shingle_hashes("two words")) == 2
    assert len(shingle_hashes("one two three four five six")) == 2  # two 5-grams
    assert list(shingle_hashes("a b c")) == list(shingle_hashes("C B A"))  # a set of words, case-folded
    pytest.importorskip("datasketch")
    out, stats = clean(["red green blue", "blue green red", "!!!", "!!!?"], near_dedup=True)
    assert out == ["red green blue", "!!!", "!!!?"] and stats.near_duplicates == 1


def test_near_dedup_threshold_too_high_for_lsh_is_a_user_error():
    pytest.importorskip("datasketch")
    with pytest.raises(UserError, match="too high"):
        clean_documents([], CleanOptions(near_dedup=True, near_dedup_threshold=0.995), CleanStats())


def test_near_dedup_without_datasketch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasketch", None)
    with pytest.raises(UserError, match="datasketch") as e:
        clean_documents([], CleanOptions(near_dedup=True), CleanStats())  # fails up front
    assert "lmforge[data]" in e.value.fix


# -------------------------------------------------------------------------------------------------- general

def test_clean_documents_is_lazy_and_keeps_sources():
    endless = (Document(f"doc {i}", f"file{i % 2}") for i in itertools.count())
    docs = list(itertools.islice(clean_documents(endless, CleanOptions(), CleanStats()), 3))
    assert [(d.text, d.source) for d in docs] == [("doc 0", "file0"), ("doc 1", "file1"), ("doc 2", "file0")]


def test_defaults_run_every_default_step():
    text = "Cafe\u0301\x07  Mail  me@x.io\r\n\r\n\r\n\r\nBye "
    out, stats = clean([text])
    assert out == ["Caf\u00e9 Mail <EMAIL>\n\nBye"]
    assert (stats.documents_normalized, stats.newlines_normalized, stats.control_chars_removed) == (1, 4, 1)
    assert (stats.whitespace_fixed, stats.pii_email) == (1, 1)
    assert stats.chars_in == len(text) and stats.chars_out == len(out[0])


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="normalize"):
        CleanOptions(normalize="nfd")
    with pytest.raises(UserError, match="max_chars"):
        CleanOptions(min_chars=10, max_chars=5)
    with pytest.raises(UserError, match="must be >= 0"):
        CleanOptions(min_chars=-1)
    with pytest.raises(UserError, match="near_dedup_threshold"):
        CleanOptions(near_dedup_threshold=1.5)


def test_stats_as_dict_has_every_counter():
    d = CleanStats().as_dict()
    for key in ("documents_in", "documents_out", "dropped_short", "dropped_long", "dropped_empty",
                "exact_duplicates", "near_duplicates", "pii_email", "pii_phone", "pii_ip", "pii_card",
                "chars_normalized"):
        assert d[key] == 0
