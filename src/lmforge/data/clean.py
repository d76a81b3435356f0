"""Cleaning documents: Unicode normalization, control characters, whitespace, PII, length filters, de-duplication.

Every step is optional and counted in `CleanStats`, so a report can say what cleaning did to the corpus; nothing
is truncated or dropped silently. It runs over every document, so the per-document work is a few precompiled
regular expressions with cheap pre-checks (`"@" in text` before looking for e-mail addresses, `isascii()` before
normalizing), and de-duplication keeps 16 bytes per document, not the text.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import re
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from lmforge.config import Config, field
from lmforge.data.corpus import Document
from lmforge.errors import UserError

NORMALIZE_FORMS = ("none", "nfc", "nfkc")
_NUM_PERM = 128  # MinHash permutations: ~3% error on the Jaccard estimate, cheap enough per document
_SHINGLE_WORDS = 5
_WORDS = re.compile(r"\w+")


@dataclass
class CleanOptions(Config):
    """Which cleaning steps run, in the order listed."""

    normalize: str = field("nfc", "Unicode normalization form (nfkc also folds compatibility characters such "
                                  "as full-width letters and ligatures)", choices=NORMALIZE_FORMS)
    strip_control: bool = field(True, "turn \\r\\n, \\r and Unicode line separators into \\n, and drop control "
                                      "and format characters except \\n, \\t and zero-width (non-)joiners")
    fix_whitespace: bool = field(True, "collapse runs of blanks inside lines to one space, strip line ends, "
                                       "keep at most one blank line in a row, strip the document; leading "
                                       "indentation is kept")
    min_chars: int = field(1, "drop documents shorter than this many characters after the steps above",
                         min=0)
    max_chars: int = field(0, "drop (never truncate) documents longer than this many characters; 0 = no limit", min=0)
    dedup: bool = field(True, "drop exact duplicates of an earlier document (after cleaning)")
    near_dedup: bool = field(False, "drop near-duplicates of an earlier document with MinHash LSH (needs "
                                    "pip install 'lmforge[data]'); approximate, and memory grows with the corpus")
    near_dedup_threshold: float = field(0.8, "Jaccard similarity of word 5-gram sets above which a document "
                                             "counts as a near-duplicate", gt=0, lt=1)
    pii: bool = field(True, "replace e-mail addresses, phone numbers, IP addresses and card numbers (Luhn-"
                            "checked) with <EMAIL>, <PHONE>, <IP>, <CARD>")

    def __post_init__(self) -> None:
        if self.max_chars and self.max_chars < self.min_chars:
            raise UserError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})",
                            fix="raise max_chars, or set it to 0 for no limit")


@dataclass
class CleanStats:
    """What cleaning did; filled in as documents pass through."""

    documents_in: int = 0
    documents_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    dropped_empty: int = 0
    dropped_short: int = 0
    dropped_long: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    documents_normalized: int = 0
    chars_normalized: int = 0  # characters replaced or composed by normalization (see _count_normalized)
    newlines_normalized: int = 0
    control_chars_removed: int = 0
    whitespace_fixed: int = 0  # documents changed by fix_whitespace
    pii_email: int = 0
    pii_phone: int = 0
    pii_ip: int = 0
    pii_card: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------ regular expressions
#
# Python's `re` finds where a pattern can start at memchr speed when it begins with a literal, at ~90 MB/s when
# it begins with one character class, and at ~15 MB/s when it begins with a look-behind or an alternation (it
# then tries the whole pattern at every character). So the patterns below begin with a literal or one class and
# check their left context after the first character: `[0-9](?<![\w.][0-9])` is "a digit that does not follow a
# word character or a dot". Cheap `in` checks skip a pattern entirely where it cannot match.


def _char_class(chars: Iterable[str]) -> str:
    """A regex character class matching exactly `chars`, written compactly as ranges."""
    codes = sorted(ord(c) for c in chars)
    ranges: list[list[int]] = []
    for c in codes:
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "[" + "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                         for a, b in ranges) + "]"


# ------------------------------------------------------------------------------------------------ normalization

@functools.cache
def _unstable(form: str) -> re.Pattern[str]:
    """Characters that `form` changes on their own (compatibility characters, singletons such as U+212B).

    Built on first use (~0.05 s). Only the planes that hold such characters are scanned: the BMP, the SMP and
    the CJK compatibility supplement.
    """
    codepoints = (*range(0x20000), *range(0x2F800, 0x2FA20))
    return re.compile(_char_class(chr(c) for c in codepoints if unicodedata.normalize(form, chr(c)) != chr(c)))


def _count_normalized(before: str, after: str, form: str) -> int:
    # Characters changed on their own, plus combining marks composed into their base (the length shrinks by one
    # for each). Canonical reordering of marks is not counted: this is a measure, not an audit.
    return len(_unstable(form).findall(before)) + max(len(before) - len(after), 0)


# ------------------------------------------------------------------------------------------------ control chars

_NEWLINES = re.compile("\r\n?|[\x85\u2028\u2029]")
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


@functools.cache
def _control() -> re.Pattern[str]:
    """Control (Cc) and format (Cf) characters of the BMP, except \\n, \\t, and ZWNJ/ZWJ (U+200C/D).

    ZWNJ and ZWJ are part of correct spelling in Persian and Indic scripts and of emoji sequences. Format
    characters beyond the BMP are kept for the same reason (tag characters spell subdivision flag emoji,
    Egyptian hieroglyph controls arrange signs); leaving them out also keeps the class a bitmap, which `re`
    scans about four times faster than a list of ranges.
    """
    keep = {"\n", "\t", "\u200c", "\u200d"}
    return re.compile(_char_class(chr(c) for c in range(0x10000)
                                  if unicodedata.category(chr(c)) in ("Cc", "Cf") and chr(c) not in keep))


def _strip_control(text: str, stats: CleanStats) -> str:
    ascii_ = text.isascii()
    if "\r" in text or (not ascii_ and ("\x85" in text or "\u2028" in text or "\u2029" in text)):
        text, n = _NEWLINES.subn("\n", text)
        stats.newlines_normalized += n
    pattern = _ASCII_CONTROL if ascii_ else _control()
    if pattern.search(text):
        text, n = pattern.subn("", text)
        stats.control_chars_removed += n
    return text


# --------------------------------------------------------------------------------------------------- whitespace

# General case: a run of blanks that is two or more long, or one blank that is not a space (a tab, a no-break
# space), before a non-blank on the same line; `_inner_blank` keeps those that are a line's indentation.
_INNER_BLANKS = re.compile(r"[^\S\n](?:[^\S\n]+|(?<=[^\S\n ]))(?=\S)")
_TRAILING_BLANKS = re.compile(r"[^\S\n]+(?=\n)")
# Fast path, for text whose only blanks are space, tab and newline (nearly all of it): patterns that start with
# a literal. "  (?<=\S  )" is two spaces after a non-blank, i.e. inside a line, not indentation.
_INNER_SPACES = re.compile(r"  (?<=\S  ) *(?=\S)")
_INNER_TABS = re.compile(r"\t[ \t]*(?=\S)")
_TRAILING_ASCII = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
# Every blank that is not space, tab or newline (the Unicode White_Space characters).
_OTHER_BLANKS = re.compile("[\r\x0b\x0c\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def _inner_blank(m: re.Match[str]) -> str:
    text, start = m.string, m.start()
    # Indentation (blanks from a line's start) is structure in code, lists and verse: keep it.
    line_start = text.rfind("\n", 0, start) + 1
    if line_start == start or text[line_start:start].isspace():
        return m.group()
    return " "


def _fix_whitespace(text: str, controls_stripped: bool) -> str:
    # ASCII text that went through strip_control has no blanks but space, tab and newline: skip the search.
    if not (controls_stripped and text.isascii()) and _OTHER_BLANKS.search(text):
        text = _TRAILING_BLANKS.sub("", text)
        text = _INNER_BLANKS.sub(_inner_blank, text)
    else:
        if " \n" in text or "\t\n" in text:
            text = _TRAILING_ASCII.sub("\n", text)
        if "\t" in text:
            text = _INNER_TABS.sub(_inner_blank, text)
        if "  " in text:
            text = _INNER_SPACES.sub(" ", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


# ---------------------------------------------------------------------------------------------------------- PII

# E-mail: found from its "@" (a literal), the local part then read backwards (at most 64 characters, RFC 5321),
# which also keeps a long token from being scanned once per character.
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_EMAIL_LOCAL = re.compile(r"[\w.%+-]{1,64}\Z")
_EMAIL_LOCAL_CHAR = re.compile(r"[\w.%+-]")

# Numbers that start with a digit, in one pass: card numbers (13-19 digits, single spaces or dashes between
# them), dotted quads, and North American 3-3-4 numbers joined by dashes or dots (415-555-2671, 1-800-555-0199).
_DIGIT_PII = re.compile(r"""
    [0-9](?<![\w.+-][0-9])                              # not inside a word or number
    (?:
        (?P<card>(?<!\d[ -]\d)(?:[ -]?\d){12,18}(?![ -]?\d))
      | (?P<ip>\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d))
      | (?P<phone>(?:(?<=1)[ .-]\d{3}[.-]|\d{2}[.-])\d{3}[.-]\d{4}(?![\w-]|\.\d))
    )""", re.VERBOSE)
# Other phone numbers need their punctuation too: a +country code (+44 20 7946 0958, +14155552671; never 0), a
# parenthesised area code ((415) 555-2671), or a trunk 0 and spaced groups (020 7946 0958). Unformatted digit runs
# are left alone: without punctuation they cannot be told from years, counts, IDs or version numbers.
_PHONE_INTL = re.compile(r"\+(?<![\w+]\+)[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
                         r"(?![\w-]|\.\d)")
_PHONE_AREA = re.compile(r"\((?<!\w\()\d{3}\) ?\d{3}[ .-]\d{4}(?![\w-]|\.\d)")
_PHONE_TRUNK = re.compile(r"0(?<![\w+.-]0)\d{1,4}[ -]\d{3,4}[ -]\d{3,4}(?![\w-]|\.\d)")
# IPv6 candidates (ipaddress decides), tried only where the cheap hint shows: an address of 3+ groups always has
# a group between two colons. An optional dotted-quad tail covers ::ffff:192.0.2.1.
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{1,4}:")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                   r"(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\w)")
_SEPARATORS = re.compile(r"[ .()+-]")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class _Scrubber:
    """The replacement callbacks of one `scrub_pii` call, counting what they replace."""

    def __init__(self) -> None:
        self.email = self.phone = self.ip = self.card = 0

    def emails(self, text: str) -> str:
        out: list[str] = []
        end = 0
        for m in _EMAIL_DOMAIN.finditer(text):
            at = m.start()
            local = _EMAIL_LOCAL.search(text, max(at - 64, end), at)
            # No local part, or one that is the tail of a longer token (> 64 characters): not an address.
            if local is None or (local.start() > 0 and _EMAIL_LOCAL_CHAR.match(text, local.start() - 1)):
                continue
            out += (text[end:local.start()], "<EMAIL>")
            end = m.end()
            self.email += 1
        return "".join(out) + text[end:] if out else text

    def digits(self, m: re.Match[str]) -> str:
        s = m.group()
        if m.lastgroup == "card":
            groups = re.split(r"[ -]", s)
            # Card numbers are printed whole or in groups of 3+ (4-4-4-4, 4-6-5): keeps lists of numbers out.
            if (len(groups) > 1 and min(map(len, groups)) < 3) or not _luhn("".join(groups)):
                return s
            self.card += 1
            return "<CARD>"
        if m.lastgroup == "ip":
            octets = s.split(".")
            # All four single digits (3.1.1.6) is a section or version number far more often than an address.
            if any(int(o) > 255 for o in octets) or all(len(o) == 1 for o in octets):
                return s
            self.ip += 1
            return "<IP>"
        self.phone += 1
        return "<PHONE>"

    def phone_digits(self, m: re.Match[str]) -> str:
        s = m.group()
        if not 8 <= len(_SEPARATORS.sub("", s)) <= 15:  # E.164 numbers have at most 15 digits
            return s
        self.phone += 1
        return "<PHONE>"

    def ipv6(self, m: re.Match[str]) -> str:
        s = m.group()
        # Fewer than 3 groups: loopback and link-local shorthands (::1, fe80::1) and slices (x[1::2]), not PII.
        if sum(1 for g in s.split(":") if g) < 3:
            return s
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            return s
        self.ip += 1
        return "<IP>"


def scrub_pii(text: str, stats: CleanStats | None = None) -> str:
    """Replace e-mail addresses, IP addresses, card numbers and phone numbers with <EMAIL> <IP> <CARD> <PHONE>."""
    s = _Scrubber()
    if "@" in text:
        text = s.emails(text)
    if ":" in text and _IPV6_HINT.search(text):
        text = _IPV6.sub(s.ipv6, text)
    text = _DIGIT_PII.sub(s.digits, text)
    if "+" in text:
        text = _PHONE_INTL.sub(s.phone_digits, text)
    if "(" in text:
        text = _PHONE_AREA.sub(s.phone_digits, text)
    if "0" in text:
        text = _PHONE_TRUNK.sub(s.phone_digits, text)
    if stats is not None:
        stats.pii_email += s.email
        stats.pii_phone += s.phone
        stats.pii_ip += s.ip
        stats.pii_card += s.card
    return text


# ---------------------------------------------------------------------------------------------------- documents

def clean_text(text: str, opts: CleanOptions, stats: CleanStats) -> str:
    """The per-document transforms (normalize, control characters, whitespace, PII); no filtering."""
    if opts.normalize != "none" and not text.isascii():  # ASCII is already in every normal form
        form = opts.normalize.upper()
        if not unicodedata.is_normalized(form, text):
            normalized = unicodedata.normalize(form, text)
            stats.documents_normalized += 1
            stats.chars_normalized += _count_normalized(text, normalized, form)
            text = normalized
    if opts.strip_control:
        text = _strip_control(text, stats)
    if opts.fix_whitespace:
        fixed = _fix_whitespace(text, opts.strip_control)
        if fixed != text:
            stats.whitespace_fixed += 1
            text = fixed
    if opts.pii:
        text = scrub_pii(text, stats)
    return text


def shingle_hashes(text: str) -> np.ndarray:
    """32-bit hashes of the distinct word 5-grams of `text` (of its words, if it has fewer than 5), lowercased.

    Words are hashed once each (CRC-32) and combined into 5-gram hashes with numpy, rather than hashing every
    5-gram string in Python: this is most of what near-duplicate detection costs per document.
    """
    words = _WORDS.findall(text.lower())
    h = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words))
    n = len(words) - _SHINGLE_WORDS + 1
    if n > 0:
        combined = np.zeros(n, dtype=np.uint64)
        for j in range(_SHINGLE_WORDS):  # a polynomial hash of the 5 word hashes, mod 2**32 (no uint64 overflow)
            combined = (combined * np.uint64(0x01000193) + h[j:j + n]) & np.uint64(0xFFFFFFFF)
        h = combined
    return np.unique(h)


class _NearDuplicates:
    """Streaming near-duplicate detection: MinHash of word 5-gram shingles, looked up in an LSH index.

    LSH finds earlier documents whose Jaccard similarity is likely above the threshold; like every MinHash method
    it is approximate, both ways, within a few percent of the threshold. Memory grows by ~1 KB per kept document.
    """

    def __init__(self, threshold: float) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError:
            raise UserError("near_dedup needs datasketch, which is not installed",
                            fix="pip install 'lmforge[data]', or turn near_dedup off") from None
        try:
            self._lsh = MinHashLSH(threshold=threshold, num_perm=_NUM_PERM)
        except ValueError as e:  # thresholds near 1 leave too few LSH bands for 128 permutations
            raise UserError(f"near_dedup_threshold {threshold} is too high for MinHash LSH ({e})",
                            fix="use 0.98 or less (exact de-duplication handles identical documents)") from None
        # The shingles arrive hashed (`shingle_hashes`), so the MinHash's own hash function is the identity.
        # Making the permutations is the slow part of a new MinHash: copies of an empty one share them.
        self._empty = MinHash(num_perm=_NUM_PERM, seed=1, hashfunc=int)
        self._count = 0

    def seen(self, text: str) -> bool:
        """True if `text` is a near-duplicate of an earlier text; otherwise remember it and return False."""
        hashes = shingle_hashes(text)
        if not len(hashes):
            return False  # no words at all (punctuation only): exact de-duplication is all that applies
        m = self._empty.copy()
        m.update_batch(hashes.tolist())
        if self._lsh.query(m):
            return True
        self._lsh.insert(self._count, m, check_duplication=False)
        self._count += 1
        return False


def clean_documents(docs: Iterable[Document], opts: CleanOptions, stats: CleanStats) -> Iterator[Document]:
    """Clean, filter and de-duplicate `docs` lazily, in order; `stats` counts as they go."""
    near = _NearDuplicates(opts.near_dedup_threshold) if opts.near_dedup else None  # fail now if not installed
    return _clean_documents(docs, opts, stats, near)


def _clean_documents(docs: Iterable[Document], opts: CleanOptions, stats: CleanStats,
                     near: _NearDuplicates | None) -> Iterator[Document]:
    seen: set[bytes] = set()
    for doc in docs:
        stats.documents_in += 1
        stats.chars_in += len(doc.text)
        text = clean_text(doc.text, opts, stats)
        n = len(text)
        if n == 0:
            stats.dropped_empty += 1
            continue
        if n < opts.min_chars:
            stats.dropped_short += 1
            continue
        if opts.max_chars and n > opts.max_chars:
            stats.dropped_long += 1
            continue
        if opts.dedup:
            # 16 bytes of BLAKE2b: collisions are negligible (~1e-20 for a billion documents) and memory is
            # ~100 bytes per distinct document rather than the document itself.
            digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in seen:
                stats.exact_duplicates += 1
                continue
            seen.add(digest)
        if near is not None and near.seen(text):
            stats.near_duplicates += 1
            continue
        stats.documents_out += 1
        stats.chars_out += n
        yield Document(text, doc.source)
