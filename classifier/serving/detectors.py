"""Deterministic detectors: credentials (gitleaks rules) and structured personal data, torch-free.

A router must not send a live key or a social-security number to an external model because a
classifier was unsure. ``Detectors.scan(text)`` finds them with rules a person can audit:

- **credentials**: the gitleaks rule set (regexes in Go syntax, translated by
  ``classifier.regex_go``; keywords; entropy thresholds; allowlists with regexes, ``regexTarget``
  and stopwords; ``secretGroup``), compiled once at load. A rule runs only when one of its
  keywords is in the lower-cased text (gitleaks' own prefilter): the keywords are found in one
  pass (``pyahocorasick`` when installed, else one combined ``re`` alternation; measured in
  ``benchmarks/peers.py``). Like gitleaks, rules whose id starts with ``generic`` need a digit in
  the secret; on top of gitleaks, a secret that reads as a placeholder (``YOUR_API_KEY``,
  ``xxxx``, ``<token>``, ``${VAR}``, ``example``...) is not reported.
- **personal data** with validators: e-mail (documentation domains left out), phone numbers
  (formatted NANP or ``+``-international, 10-15 digits), US SSN (area not 000/666/9xx, group not
  00, serial not 0000, separators or an ``ssn`` context), payment cards (13-19 digits, issuer
  prefix, Luhn), IBAN (country length, mod 97), IPv4/IPv6 (globally routable only: private,
  loopback, documentation and well-known public resolvers are not personal data), dates of birth
  (a date within 40 characters after ``born``/``date of birth``/``DOB``).

Before matching, the text is put into a canonical form with a map back to the original offsets:
Unicode NFKC (fullwidth ``ＡＫＩＡ`` -> ``AKIA``), zero-width characters and soft hyphens removed,
Cyrillic/Greek letters that look like Latin ones folded to Latin, and ``\\uXXXX`` JSON escapes
decoded. Extra *views* are scanned too, each mapped back: blobs that are base64, URL (``%41``)
or hex encoded are decoded once and scanned (a hit reports the blob's span); runs of short
chunks split by spaces or newlines are joined and scanned with the credential rules that have a
distinctive keyword (not the generic ones); digits spelled as words (``four one one``) and
e-mail addresses written with ``(at)``/``(dot)`` are rewritten for the personal-data checks.

A hit is ``Hit(rule, cls, start, end)``: character offsets into the scanned text, never the
matched text. ``Hit.to_dict()`` is the ``Decision.detections`` entry
``{"rule": "detector:<id>", "class": "credential"|"pii", "start", "end"}``.

The rule file (``detectors.json`` in a bundle) is plain data: ``build_rules(gitleaks_toml)``
writes it, ``Detectors.from_bytes`` reads it. What this module leaves out: names, street
addresses and other free-text personal data (the model's job), secrets in file paths (gitleaks'
path rules), and more than one level of decoding (a base64 blob inside a base64 blob is not
decoded twice). It imports the standard library only (``pyahocorasick`` optionally).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import threading
import unicodedata
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomllib

from classifier.errors import BundleError, ConfigError
from classifier.regex_go import go_to_python_regex
from classifier.serving.prefilter import RegexPrefilter

logger = logging.getLogger(__name__)

DETECTORS_FILE = "detectors.json"
FORMAT = "tierwise-detectors"
FORMAT_VERSION = 1
CREDENTIAL = "credential"
PII = "pii"
# The default personal-data rules. ``date-of-birth`` is opt-in (``ALL_PII_RULES``): a date alone is a
# quasi-identifier, which the data set labels ``none`` (``classifier/data/sensitivity.py``); as a
# default it flagged 34 of the test split's benign prompts and found none of its pii.
PII_RULES = ("email", "phone", "us-ssn", "payment-card", "iban", "ipv4", "ipv6")
ALL_PII_RULES = (*PII_RULES, "date-of-birth")
RULE_PREFIX = "detector:"


@dataclass(frozen=True, slots=True)
class Hit:
    """One detection: the rule, its sensitivity class and the span (offsets into the scanned text)."""

    rule: str
    cls: str
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"rule": RULE_PREFIX + self.rule, "class": self.cls, "start": self.start, "end": self.end}


# ------------------------------------------------------------------------------------------
# Canonical text with offsets back to the original
# ------------------------------------------------------------------------------------------
# zero-width and invisible format characters, soft hyphen, BOM, bidi controls, variation selectors
_INVISIBLE = frozenset(
    [0x00AD, 0x034F, 0x061C, 0x180E, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF]
    + list(range(0x200B, 0x2010)) + list(range(0x202A, 0x202F)) + list(range(0x2066, 0x206A))
    + list(range(0xFE00, 0xFE10))
    # C0/C1 control characters but tab, newline and carriage return (the runtime deletes them too)
    + [c for c in range(0x20) if c not in (9, 10, 13)] + list(range(0x7F, 0xA0))
)
# Cyrillic and Greek letters that look like Latin ones (the homoglyphs used to dodge filters)
_CONFUSABLE = {
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "Х": "X", "У": "Y", "І": "I", "Ј": "J", "Ѕ": "S", "а": "a", "е": "e", "о": "o", "р": "p", "с": "c",
    "х": "x", "у": "y", "і": "i", "ј": "j", "ѕ": "s", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "ο": "o", "ν": "v", "ι": "i", "κ": "k",
}
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INVISIBLE_RE = re.compile("[" + "".join(chr(c) for c in sorted(_INVISIBLE)) + "]")
_CONFUSABLE_CLASS = "[" + "".join(_CONFUSABLE) + "]"
_MIXED_SCRIPT = re.compile(f"[A-Za-z0-9_+/=-]{_CONFUSABLE_CLASS}|{_CONFUSABLE_CLASS}[A-Za-z0-9_+/=-]")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


class View:
    """A text derived from the original, with ``starts[i]``/``ends[i]``: the original span that
    produced character ``i``. ``span(a, b)`` maps a match back. ``blob`` views (decoded
    base64/URL/hex) map every character to the whole blob."""

    __slots__ = ("text", "starts", "ends")

    def __init__(self, text: str, starts: list[int] | None, ends: list[int] | None) -> None:
        self.text = text
        self.starts = starts  # None: identity
        self.ends = ends

    def span(self, a: int, b: int) -> tuple[int, int]:
        if self.starts is None or self.ends is None:
            return a, b
        if b <= a:
            b = a + 1
        return self.starts[a], self.ends[b - 1]


def canonical(text: str) -> View:
    """NFKC, invisible characters removed, homoglyphs folded, ``\\uXXXX`` escapes decoded, with
    offsets back to ``text``. ASCII text without escapes is returned as it is (the common case)."""
    has_escape = "\\u" in text
    if text.isascii() and not has_escape and _CONTROL_RE.search(text) is None:
        return View(text, None, None)
    if (not has_escape and _INVISIBLE_RE.search(text) is None and _MIXED_SCRIPT.search(text) is None
            and unicodedata.is_normalized("NFKC", text)):
        return View(text, None, None)  # e.g. Russian or Chinese prose: nothing to fold
    # copy the runs between characters that change in bulk; rewrite only those characters
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    for m in _changes(text):
        a = m.start()
        if a > i:
            out.append(text[i:a])
            starts.extend(range(i, a))
            ends.extend(range(i + 1, a + 1))
        c = m.group(0)
        j = m.end()
        if c.startswith("\\"):
            c = chr(int(c[2:], 16))
        if ord(c) in _INVISIBLE:
            i = j
            continue
        mapped = _CONFUSABLE.get(c)
        if mapped is None:
            mapped = unicodedata.normalize("NFKC", c)
            mapped = "".join(_CONFUSABLE.get(x, x) for x in mapped if ord(x) not in _INVISIBLE)
        out.append(mapped)
        starts.extend([a] * len(mapped))
        ends.extend([j] * len(mapped))
        i = j
    if i < len(text):
        out.append(text[i:])
        starts.extend(range(i, len(text)))
        ends.extend(range(i + 1, len(text) + 1))
    return View("".join(out), starts, ends)


@functools.lru_cache(maxsize=1)
def _changing() -> re.Pattern[str]:
    """One character class of everything ``canonical`` rewrites: characters NFKC changes (up to
    U+2FFFF), invisible ones and homoglyphs, plus ``\\uXXXX`` escapes. Built once (~0.1 s)."""
    chars = set(_INVISIBLE) | {ord(c) for c in _CONFUSABLE}
    for o in range(0xA0, 0x30000):
        if 0xD800 <= o <= 0xDFFF:
            continue
        c = chr(o)
        if not unicodedata.is_normalized("NFKC", c):
            chars.add(o)
    ranges: list[str] = []
    run: list[int] = []
    for o in sorted(chars):
        if run and o == run[-1] + 1:
            run.append(o)
            continue
        if run:
            ranges.append(_class_range(run[0], run[-1]))
        run = [o]
    if run:
        ranges.append(_class_range(run[0], run[-1]))
    return re.compile(r"\\u[0-9a-fA-F]{4}|[" + "".join(ranges) + "]")


@functools.lru_cache(maxsize=1)
def _candidates() -> re.Pattern[str]:
    """Where ``_changing`` can match: non-ASCII characters, its ASCII members and escapes. Its
    class has hundreds of ranges, which ``re`` tries one by one at every character; this class is
    two ranges, so long ASCII-heavy prompts pay for the big class only at their odd characters."""
    big = _changing()
    ascii_members = "".join(f"\\x{o:02x}" for o in range(128) if big.match(chr(o)))
    return re.compile(r"\\u[0-9a-fA-F]{4}|[" + ascii_members + r"\x80-\U0010ffff]")


def _changes(text: str) -> Iterator[re.Match[str]]:
    """The matches of ``_changing`` in ``text``, left to right (the same as its ``finditer``)."""
    big = _changing()
    for c in _candidates().finditer(text):
        m = big.match(text, c.start())
        if m is not None:
            yield m


def _class_range(lo: int, hi: int) -> str:
    esc = lambda o: f"\\U{o:08x}"  # noqa: E731
    return esc(lo) if lo == hi else f"{esc(lo)}-{esc(hi)}"


def _sub_view(base: View, pieces: list[tuple[str, int, int]]) -> View:
    """A view built of (text, start, end) pieces in ``base`` coordinates, mapped to the original."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for piece, a, b in pieces:
        oa, ob = base.span(a, b)
        for x in piece:
            out.append(x)
            starts.append(oa)
            ends.append(ob)
    return View("".join(out), starts, ends)


# ------------------------------------------------------------------------------------------
# Decoded views
# ------------------------------------------------------------------------------------------
_B64_BLOB = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{24,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX_BLOB = re.compile(r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{2}){12,}(?![0-9A-Za-z])")
_URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_SPLIT_RUN = re.compile(r"(?<![\w+/=.-])(?:[\w+/=.-]{1,12}(?:[ \t]{1,2}|[ \t]*\r?\n[ \t]*)){2,}[\w+/=.-]{1,}")
_WHITESPACE = re.compile(r"\s+")
_NON_SPACE = re.compile(r"\S+")
_MAX_DECODE = 4096  # characters of one blob decoded at most (bounded work per blob)


def _printable(data: bytes) -> str | None:
    """``data`` as text when it reads as text (UTF-8, >= 95% printable), else None."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not s:
        return None
    good = sum(1 for c in s if c.isprintable() or c in "\n\r\t")
    return s if good >= 0.95 * len(s) else None


def _decode_b64(blob: str) -> str | None:
    core = blob.rstrip("=")
    if len(core) % 4 == 1:
        return None
    padded = core + "=" * (-len(core) % 4)
    try:
        if "-" in core or "_" in core:
            data = base64.urlsafe_b64decode(padded)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(data)


def _can(maybe: Collection[str] | None, name: str) -> bool:
    """May pattern ``name`` match? ``maybe``: the names the prefilter allows (None: every pattern)."""
    return maybe is None or name in maybe


def decoded_views(view: View, maybe: Collection[str] | None = None) -> list[View]:
    """Views of the base64, hex and URL-encoded blobs in ``view``, each mapped to its blob's span.
    ``maybe``: the patterns that can match in the view (``Detectors.patterns``; None: all)."""
    text = view.text
    out: list[View] = []
    b64, hexa = _can(maybe, "b64"), _can(maybe, "hex")
    # a whitespace-free run of >= 24 characters (str.split in C: a regex \S{24,} retries at every
    # character of every word and cost more than the rest of this function on ordinary prose)
    if (b64 or hexa) and len(text) >= 24 and max(map(len, text.split()), default=0) >= 24:
        for m in _B64_BLOB.finditer(text) if b64 else ():
            blob = m.group(0)
            # a plain word or identifier is not base64 worth decoding: it needs a digit or +/ and mixed case
            if blob.isalpha() or blob.islower() or blob.isupper() or blob.isdigit():
                continue
            s = _decode_b64(blob[:_MAX_DECODE])
            if s is not None:
                out.append(_blob_view(view, s, m.start(), m.end()))
        for m in _HEX_BLOB.finditer(text) if hexa else ():
            try:
                s = _printable(bytes.fromhex(m.group(0)[:_MAX_DECODE]))
            except ValueError:
                s = None
            if s is not None:
                out.append(_blob_view(view, s, m.start(), m.end()))
    if "%" in text and _can(maybe, "url"):
        done = -1
        for m in _URL_ESCAPE.finditer(text):
            if m.start() < done:
                continue
            # the whitespace-free token around the escape; decoded when it holds >= 3 escapes
            a = max(text.rfind(" ", 0, m.start()), text.rfind("\n", 0, m.start())) + 1
            b = min((k for k in (text.find(" ", m.end()), text.find("\n", m.end())) if k >= 0), default=len(text))
            done = b
            token = text[a:b]
            if len(_URL_ESCAPE.findall(token)) >= 3:
                s = urllib.parse.unquote(token[:_MAX_DECODE])
                if s != token:
                    out.append(_blob_view(view, s, a, b))
    return out


def _blob_view(base: View, decoded: str, a: int, b: int) -> View:
    oa, ob = base.span(a, b)
    inner = canonical(decoded)
    n = len(inner.text)
    return View(inner.text, [oa] * n, [ob] * n)


def split_runs(view: View, keep: Callable[[int, str], bool] | None = None) -> list[list[tuple[str, int, int]]]:
    """Runs of short chunks split by spaces or newlines (``AKIA IOSF ODNN ...``): each run as its
    tokens (text, start, end) in ``view`` coordinates. ``keep`` (given a run's start and its text
    without whitespace, runs in order) skips runs early: in prose nearly every sentence is a run."""
    out: list[list[tuple[str, int, int]]] = []
    for m in _SPLIT_RUN.finditer(view.text):
        run = m.group(0)
        joined = "".join(run.split())  # \S+ tokens joined: str.split and \S agree on whitespace
        if len(joined) < 16 or (keep is not None and not keep(m.start(), joined)):
            continue
        tokens = [(c.group(0), m.start() + c.start(), m.start() + c.end()) for c in _NON_SPACE.finditer(run)]
        out.append(tokens[:64])
    return out


def _runs_holding(text: str, where: Mapping[str, list[int]]) -> Callable[[int, str], bool]:
    """A ``split_runs`` filter: does a run (start in ``text``, its text without whitespace) hold a
    whole keyword occurrence of ``where`` (keyword -> positions in ``text`` without whitespace)?
    A run's non-space characters are one stretch of that text; the filter tracks where it starts."""
    spans = sorted((q, q + len(w)) for w, qs in where.items() for q in qs)
    firsts = [a for a, _ in spans]
    state = [0, 0]  # position in text, non-space characters before it

    def keep(start: int, joined: str) -> bool:
        prev, off = state
        off += len("".join(text[prev:start].split()))
        state[0], state[1] = start, off
        end = off + len(joined)
        for a, b in spans[bisect.bisect_left(firsts, off):]:
            if a >= end:
                return False
            if b <= end:
                return True
        return False

    return keep


def joined_view(view: View, tokens: list[tuple[str, int, int]], skip: int = 0) -> View:
    """``tokens`` joined without their separators (the first ``skip`` characters left out)."""
    pieces = [(ch, a + k, a + k + 1) for piece, a, _ in tokens for k, ch in enumerate(piece)][skip:]
    return _sub_view(view, pieces)


_DIGIT_WORDS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_DIGIT_WORD = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)"
_SPELLED_RUN = re.compile(rf"(?i)\b{_DIGIT_WORD}(?:(?:[\s,]+|\s*-\s*|\s+dash\s+){_DIGIT_WORD}\b){{6,}}")
_AT_DOT = re.compile(
    r"(?i)\b([\w.+-]+)\s*(?:\[at\]|\(at\)|\{at\}|<at>|\sat\s)\s*([\w-]+(?:\s*(?:\[dot\]|\(dot\)|\{dot\}|<dot>|\sdot\s|\.)\s*[\w-]+)+)"
)
_DOT_WORD = re.compile(r"(?i)\s*(?:\[dot\]|\(dot\)|\{dot\}|<dot>|\sdot\s|\.)\s*")


def spelled_views(view: View, maybe: Collection[str] | None = None) -> list[View]:
    """Digits written as words (``one two three dash ...``) and ``name (at) host (dot) com``
    e-mails, rewritten as digits / plain addresses for the personal-data checks. ``maybe`` as in
    ``decoded_views``."""
    text = view.text
    out: list[View] = []
    lower = text.lower()
    if _can(maybe, "spelled") and sum(w in lower for w in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero")) >= 3:
        for m in _SPELLED_RUN.finditer(text):
            pieces: list[tuple[str, int, int]] = []
            for t in re.finditer(rf"(?i){_DIGIT_WORD}|dash|-|,", m.group(0)):
                w = t.group(0).lower()
                piece = _DIGIT_WORDS.get(w, "-")
                pieces.append((piece, m.start() + t.start(), m.start() + t.end()))
            out.append(_sub_view(view, pieces))
    if _can(maybe, "at-dot") and ("at" in lower and "dot" in lower or "[at]" in lower or "(at)" in lower):
        for m in _AT_DOT.finditer(text):
            domain = _DOT_WORD.sub(".", m.group(2))
            addr = f"{m.group(1)}@{domain}"
            out.append(_sub_view(view, [(ch, m.start(), m.end()) for ch in addr]))
    return out


# ------------------------------------------------------------------------------------------
# Credentials: gitleaks rules
# ------------------------------------------------------------------------------------------
def shannon_entropy(s: str) -> float:
    """Bits per character (gitleaks' ``ShannonEntropy``)."""
    if not s:
        return 0.0
    counts: dict[str, int] = {}
    for c in s:
        counts[c] = counts.get(c, 0) + 1
    n = len(s)
    return -sum(k / n * math.log2(k / n) for k in counts.values())


# A secret that is a placeholder a person wrote, not a value (on top of gitleaks' allowlists).
_PLACEHOLDER = re.compile(
    r"(?i)(x{4,}|\*{3,}|\.\.\.|<[^<>\n]*>|\$\{|\{\{|\$\(|example|dummy|fake|redact|placeholder|your[_-]|"
    r"^your|changeme|change[_-]me|replace[_-]?me|insert[_-]|put[_-]your|(.)\2{5,}|abcdef|0123456|123456789)"
)


# a code identifier after a token prefix (``GLC_CreateLightmapTexturesIndividual``): CamelCase
# words and underscores, no digit. A random 32-character base62 token has this shape with
# probability far below 1e-9, so no real secret is lost.
_IDENTIFIER = re.compile(r"(?:[A-Za-z]+_)?(?:[A-Z][a-z]+){2,}(?:_[A-Za-z]+)*")


def looks_like_placeholder(secret: str) -> bool:
    """True when a matched secret is a placeholder (``YOUR_API_KEY``, ``xxxx``, ``<token>``...) or a
    code identifier (``GLC_CreateLightmapTextures``)."""
    return _PLACEHOLDER.search(secret) is not None or _IDENTIFIER.fullmatch(secret) is not None


@dataclass
class _Allowlist:
    regexes: tuple[re.Pattern[str], ...]
    target: str  # secret | match | line
    stopwords: tuple[str, ...]
    _finder: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # generic-api-key has 1,446 stopwords: the rules' own keyword finder, one pass over the
        # secret, not 1,446 substring tests (same answer: is any stopword a substring)
        if len(self.stopwords) > 32 and all(self.stopwords):
            self._finder = _KeywordFinder(self.stopwords)

    def allows(self, secret: str, match: str, line: str) -> bool:
        if self.regexes:
            subject = {"secret": secret, "match": match, "line": line}[self.target]
            if any(r.search(subject) for r in self.regexes):
                return True
        if self.stopwords:
            low = secret.lower()
            if self._finder is not None:
                return bool(self._finder.find(low))
            if any(w in low for w in self.stopwords):
                return True
        return False


@dataclass
class _SecretRule:
    id: str
    pattern: re.Pattern[str]
    keywords: tuple[str, ...]
    secret_group: int
    entropy: float
    allowlists: tuple[_Allowlist, ...]
    generic: bool
    distinctive: bool
    prefix: int = 0  # characters of [\w.-] gitleaks' lazy prefix may add before the match
    anchored: bool = False  # every match starts with one of the keywords (semi-generic rules)
    # the regex without its tail (``end_free_core``): rules out a split-key run in one search
    core: re.Pattern[str] | None = None
    # the regex without any assertion (``context_free``): rules out the whole split-key search
    free: re.Pattern[str] | None = None


# gitleaks' "semi-generic" rules start with a lazy prefix that only widens the reported match;
# searching without it finds the same secrets several times faster (the prefix is rebuilt for
# allowlists whose regexTarget is ``match``)
_SEMI_GENERIC_PREFIX = "(?i)[\\w.-]{0,50}?"
_LAZY_PREFIX = "[\\w.-]{0,50}?"


def strip_prefix(pattern: str) -> tuple[str, int]:
    """A Go rule regex without its leading lazy ``[\\w.-]{0,50}?`` prefixes (also inside a leading
    ``(?i)``/``(?i:``), and how many characters they could add before a match."""
    prefix = 0
    while True:
        if pattern.startswith(_LAZY_PREFIX):
            pattern = pattern[len(_LAZY_PREFIX):]
        elif pattern.startswith("(?i)" + _LAZY_PREFIX):
            pattern = "(?i)" + pattern[4 + len(_LAZY_PREFIX):]
        elif pattern.startswith("(?i:" + _LAZY_PREFIX):
            pattern = "(?i:" + pattern[4 + len(_LAZY_PREFIX):]
        else:
            return pattern, prefix
        prefix += 50
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    pattern = strip_prefix(pattern)[0]
    try:
        # RE2's \w, \s, \d and (?i) are ASCII: so is re.ASCII (and it is faster)
        return re.compile(go_to_python_regex(pattern), re.ASCII)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ConfigError(f"{where}: regex does not compile in Python ({exc})") from None


def _compile_core(regex: str, cut: Callable[[str], str | None] | None = None) -> re.Pattern[str] | None:
    """``cut(regex)`` (``end_free_core``, the default, or ``context_free``) compiled like the rule
    itself, or None."""
    core = (cut or end_free_core)(regex)
    if core is None:
        return None
    try:
        return _compile(core, "core")
    except ConfigError:
        return None


def _starts_with_keyword(pattern: str, keywords: Sequence[str]) -> bool:
    """True when ``pattern`` is semi-generic and every alternative of its identifier group starts
    with one of ``keywords`` (so a match can only start where a keyword occurs)."""
    stripped, prefix = strip_prefix(pattern)
    if not prefix or not keywords:
        return False
    for head in ("(?i)(?:", "(?i:(?:", "(?:"):
        if stripped.startswith(head):
            rest = stripped[len(head):]
            break
    else:
        return False
    depth, k = 0, 0
    while k < len(rest):
        if rest[k] == "\\":
            k += 2
            continue
        if rest[k] == "(":
            depth += 1
        elif rest[k] == ")":
            if depth == 0:
                break
            depth -= 1
        k += 1
    group = re.sub(r"\(\?:[^()|]*\)\?", "", rest[:k]).replace("(?-i:", "").replace("(?:", "").replace(")", "").replace("(", "")
    group = re.sub(r"\[(\w)\1?\]", lambda m: m.group(1), re.sub(r"\[([A-Za-z])([A-Za-z])\]",
                   lambda m: m.group(1) if m.group(1).lower() == m.group(2).lower() else m.group(0), group))
    for alt in group.lower().split("|"):
        if not any(alt.startswith(w) for w in keywords):
            return False
    return True


def _allowlists(raw: Iterable[Mapping[str, Any]], where: str) -> tuple[_Allowlist, ...]:
    out = []
    for k, a in enumerate(raw):
        regexes = tuple(_compile(r, f"{where}.allowlists[{k}].regexes") for r in a.get("regexes", ()))
        stopwords = tuple(str(w).lower() for w in a.get("stopwords", ()))
        target = a.get("regexTarget", "secret")
        if target not in ("secret", "match", "line"):
            raise ConfigError(f"{where}.allowlists[{k}].regexTarget: must be secret, match or line, got {target!r}")
        if a.get("condition", "OR").upper() == "AND" and a.get("paths"):
            continue  # needs a file path to hold as well: a prompt has none, so it never applies
        if regexes or stopwords:
            out.append(_Allowlist(regexes, target, stopwords))
    return tuple(out)


# ------------------------------------------------------------------------------------------
# Personal data
# ------------------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)+[A-Za-z]{2,24}\b")
_EMAIL_DOC_DOMAINS = re.compile(
    r"(?i)(?:^|\.)(?:example|test|invalid|localhost|domain|yourdomain|mydomain|company|email|mail|"
    r"acme|foo|bar|sample|xyz|abc|users\.noreply\.github)\.[a-z.]+$|\.(?:test|example|invalid|local|localhost|png|jpe?g|gif|svg|js|py)$"
)
_EMAIL_DOC_LOCAL = re.compile(r"(?i)^(?:user(?:name)?|name|email|your[._-]?\w*|someone|somebody|me|you|test\w*|"
                              r"example|foo|bar|admin|info|support|noreply|no-reply|git|john\.?doe|jane\.?doe|xxx+)$")
_VERSION_BEFORE = re.compile(r"(?i)(?:version|ver\.|release|v)\s*$")
_EXAMPLE_BEFORE = re.compile(r"(?i)(?:example|e\.g\.|eg\.|sample)\W*$")
_PHONE = re.compile(
    r"(?<![\w.+/-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,5}){1,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([ .-])\d{3}\1\d{4})(?![\w.-]?\d)"
)
_SSN = re.compile(r"(?<![\w.-])(\d{3})([- .])(\d{2})\2(\d{4})(?![\w-]|\.\d)")
_SSN_BARE = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?|ss#)\W{0,10}(\d{9})\b")
_CARD = re.compile(r"(?<![\w.-])\d(?:[ .-]?\d){12,18}(?![\w-]|\.\d)")
_IBAN = re.compile(r"\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)\b")
_NUMBER_RUN = re.compile(r"\d[\d \t().+/-]{6,}\d|\d\.\d{1,3}\.\d")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_MONTHS = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_DOB = re.compile(
    r"(?i)\b(?:d\.?o\.?b\.?|date\s+of\s+birth|birth\s*date|born(?:\s+on)?)\b[^\n\d]{0,20}?"
    rf"(\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:19|20)?\d{{2}}|(?:19|20)\d{{2}}-\d{{1,2}}-\d{{1,2}}|"
    rf"{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}}|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}\.?,?\s+(?:19|20)\d{{2}})"
)
# IBAN lengths per country (ISO 13616 registry, the common ones)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}
_PUBLIC_RESOLVERS = frozenset({"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112",
                               "208.67.222.222", "208.67.220.220", "4.2.2.2", "2001:4860:4860::8888",
                               "2001:4860:4860::8844", "2606:4700:4700::1111"})


def luhn_ok(digits: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if k % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_ok(digits: str) -> bool:
    """13-19 digits, a known issuer prefix, not one repeated digit, and the Luhn checksum."""
    n = len(digits)
    if not 13 <= n <= 19 or len(set(digits)) < 3:
        return False
    issuer = (
        digits[0] == "4" and n in (13, 16, 19)
        or digits[:2] in ("51", "52", "53", "54", "55") and n == 16
        or "2221" <= digits[:4] <= "2720" and n == 16
        or digits[:2] in ("34", "37") and n == 15
        or (digits[:4] == "6011" or digits[:2] == "65" or "644" <= digits[:3] <= "649") and n in (16, 19)
        or "3528" <= digits[:4] <= "3589" and n in (16, 19)
        or digits[:2] in ("36", "38", "39") and n in (14, 16) or "300" <= digits[:3] <= "305" and n in (14, 16)
        or digits[:2] == "62" and 16 <= n <= 19
    )
    return bool(issuer) and luhn_ok(digits)


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000; not the famous
    advertising numbers."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return f"{area}{group}{serial}" not in ("078051120", "219099999", "123456789")


def iban_ok(compact: str) -> bool:
    """Known country length and ISO 7064 mod 97 == 1."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def phone_ok(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 10 <= len(digits) <= 15 or len(set(digits)) < 3:
        return False
    if candidate.startswith("+"):
        return True
    # NANP: area code and exchange start 2-9; toll-free numbers (800, 833...888) belong to
    # businesses, and 555-0100..0199 is reserved for fiction: neither is anyone's personal data
    return (len(digits) == 10 and digits[0] in "23456789" and digits[3] in "23456789"
            and digits[:3] not in _TOLL_FREE and not (digits[3:6] == "555" and digits[6:8] == "01"))


_TOLL_FREE = frozenset({"800", "833", "844", "855", "866", "877", "888"})


def ip_ok(candidate: str) -> bool:
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast and candidate not in _PUBLIC_RESOLVERS


def scan_spelled_numbers(text: str, out: list[tuple[str, int, int]]) -> None:
    """A spelled-out number (the whole view is one): a phone, card or SSN by its digit count and
    validator, separators or not."""
    digits = re.sub(r"\D", "", text)
    if 10 <= len(digits) <= 11 and phone_ok(digits[-10:]):
        out.append(("phone", 0, len(text)))
    elif 13 <= len(digits) <= 19 and card_ok(digits):
        out.append(("payment-card", 0, len(text)))
    elif len(digits) == 9 and ssn_ok(digits[:3], digits[3:5], digits[5:]):
        out.append(("us-ssn", 0, len(text)))


def scan_pii(text: str, out: list[tuple[str, int, int]], maybe: Collection[str] | None = None) -> None:
    """Append (rule, start, end) of each validated personal-data match in ``text``. ``maybe``: the
    patterns that can match in it (``Detectors.patterns``; None: all), the others are not run."""
    def can(name: str) -> bool:
        return _can(maybe, name)

    if "@" in text and can("email"):
        for m in _EMAIL.finditer(text):
            local, _, domain = m.group(0).partition("@")
            if _EMAIL_DOC_DOMAINS.search(domain) or _EMAIL_DOC_LOCAL.match(local):
                continue
            if _EXAMPLE_BEFORE.search(text, max(0, m.start() - 16), m.start()):
                continue  # "example: mario@gmail.com" documents a format
            out.append(("email", m.start(), m.end()))
    # one cheap pass finds the runs of >= 8 characters of digits and separators: every phone,
    # SSN, card, IBAN or IPv4 address that validates holds one, so the number-shaped rules need
    # only run near them (``_near``), not over all of a long prompt
    runs = [m.span() for m in _NUMBER_RUN.finditer(text)] if can("number-run") else []
    ipv6, dob = can("ipv6") and ("::" in text or text.count(":") >= 5), can("dob")
    if not runs:
        if ipv6:
            _scan_ipv6(text, out)
        if dob:
            _scan_dob(text, out)
        return
    near = _windows(text, runs)
    if can("phone"):
        for m in _near(_PHONE, text, _windows(text, runs, _PHONE_CHARS)):
            if phone_ok(m.group(0)):
                out.append(("phone", m.start(), m.end()))
    if can("ssn"):
        for m in _near(_SSN, text, near):
            if ssn_ok(m.group(1), m.group(3), m.group(4)):
                out.append(("us-ssn", m.start(), m.end()))
    if can("ssn-bare"):
        for m in _near(_SSN_BARE, text, near):
            d = m.group(1)
            if ssn_ok(d[:3], d[3:5], d[5:]):
                out.append(("us-ssn", m.start(1), m.end(1)))
    if can("card"):
        for m in _near(_CARD, text, near):
            digits = re.sub(r"\D", "", m.group(0))
            if card_ok(digits):
                out.append(("payment-card", m.start(), m.end()))
    if can("iban"):
        for m in _near(_IBAN, text, _windows(text, runs, _IBAN_CHARS)):
            if iban_ok(m.group(1).replace(" ", "")):
                out.append(("iban", m.start(1), m.end(1)))
    if "." in text and can("ipv4"):
        for m in _near(_IPV4, text, near):
            if ip_ok(m.group(0)) and _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()) is None:
                out.append(("ipv4", m.start(), m.end()))
    if ipv6:
        _scan_ipv6(text, out)
    if dob:
        _scan_dob(text, out)


# Near a number run. Every match of a number-shaped rule lies within ``NUMBER_WINDOW`` characters
# of a run it holds (the longest, an IBAN or "social security number ... 123456789", is < 50
# characters; a test checks each rule's widest match). Where a rule's raw matches need not hold a
# run (a short phone-like "+1 2 34", an IBAN-shaped word), one of them could start before a window
# and hide a match that starts inside it from a scan of the whole text; for those rules a window
# starts further back, past every character such a match can hold, so both scans agree.
NUMBER_WINDOW = 64
_PHONE_CHARS = frozenset("0123456789 +.()-")
_IBAN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ")
_WALK_BACK = 512  # characters a window start walks back at most; further, it starts at 0


def _windows(text: str, runs: Sequence[tuple[int, int]], chars: frozenset[str] | None = None
             ) -> list[tuple[int, int]]:
    """Merged stretches of ``text`` around ``runs`` (see above), in order."""
    out: list[tuple[int, int]] = []
    n = len(text)
    for a, b in runs:
        a, b = max(0, a - NUMBER_WINDOW), min(n, b + NUMBER_WINDOW)
        if chars is not None:
            stop = max(0, a - _WALK_BACK)
            while a > stop and text[a - 1] in chars:
                a -= 1
            if a == stop:
                a = 0
        if out and a <= out[-1][1]:
            out[-1] = (min(out[-1][0], a), max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _near(pattern: re.Pattern[str], text: str, windows: Sequence[tuple[int, int]]) -> Iterator[re.Match[str]]:
    """``pattern.finditer(text)`` where its matches can be: within ``windows``. A window's scan
    reads 8 characters past it (lookarounds see the real text; a lookahead cut short by the scan's
    end could accept what the whole text rejects, so a match that close to it is dropped: none of
    the real ones is, as they end well inside the window)."""
    n = len(text)
    for a, b in windows:
        end = min(n, b + 8)
        for m in pattern.finditer(text, a, end):
            if end < n and m.end() + 4 > end:
                continue
            yield m


def _scan_ipv6(text: str, out: list[tuple[str, int, int]]) -> None:
    for m in _IPV6.finditer(text):
        c = m.group(0)
        if c.count(":") >= 2 and any(len(g) >= 3 for g in c.split(":")) and ip_ok(c):
            out.append(("ipv6", m.start(), m.end()))


def _scan_dob(text: str, out: list[tuple[str, int, int]]) -> None:
    low = text.lower()
    if "birth" in low or "born" in low or "dob" in low or "d.o.b" in low:
        for m in _DOB.finditer(text):
            year = re.search(r"(\d{4}|\d{2})$", m.group(1))
            if year is not None and len(year.group(1)) == 4 and int(year.group(1)) >= datetime.now().year:
                continue  # a birthday to come, not a date of birth
            out.append(("date-of-birth", m.start(1), m.end(1)))


# The patterns the prefilter (``classifier.serving.prefilter``) vouches for, by the names the
# passes above ask it about; the credential rules join them as ``rule:<id>``.
_VIEW_PATTERNS = {"b64": _B64_BLOB, "hex": _HEX_BLOB, "url": _URL_ESCAPE, "split": _SPLIT_RUN,
                  "spelled": _SPELLED_RUN, "at-dot": _AT_DOT}
_PII_PATTERNS = {"email": _EMAIL, "number-run": _NUMBER_RUN, "phone": _PHONE, "ssn": _SSN, "ssn-bare": _SSN_BARE,
                 "card": _CARD, "iban": _IBAN, "ipv4": _IPV4, "ipv6": _IPV6, "dob": _DOB}


# ------------------------------------------------------------------------------------------
# The rule file
# ------------------------------------------------------------------------------------------
# gitleaks' rule helpers write the secret as the last group: ``...[\x60'"\s=]{0,5}(SECRET)`` after a
# provider name and an operator (semi-generic), or ``\b(SECRET)`` (unique token), then this tail
_GITLEAKS_TAIL = "(?:[\\x60'\"\\s;]|\\\\[nr]|$)"
_SEMI_GENERIC_HEAD = "[\\x60'\"\\s=]{0,5}("
# a bare token may also sit in brackets or a list: ``(auth pnu_...)``, ``[hf_...]``, ``key,``
_BARE_TAIL = "(?:[\\x60'\"\\s;,)\\]}>]|\\\\[nr]|$)"
BARE_MIN_PREFIX = 3  # literal characters a secret must start with to be found without its provider's name
BARE_MIN_WIDTH = 16  # and characters it must have at least
BARE_MIN_ENTROPY = 3.0  # and bits per character (Shannon) at least


def _secret_group(regex: str) -> tuple[str, str] | None:
    """(flags, SECRET) of a rule regex written by gitleaks' semi-generic or unique-token helper, else None."""
    flags = "(?i)" if regex.startswith("(?i)") else ""
    for tail in (_GITLEAKS_TAIL, _BARE_TAIL, "\\b"):
        if regex.endswith(")" + tail):
            body = regex[: -len(tail) - 1]
            break
    else:
        return None
    if _SEMI_GENERIC_HEAD in body:
        secret = body.split(_SEMI_GENERIC_HEAD, 1)[1]
    elif body.startswith(flags + "\\b("):
        secret = body[len(flags) + 3:]
    else:
        return None
    depth, k = 0, 0
    while k < len(secret):  # the group must be balanced, or this is not the helper's shape
        if secret[k] == "\\":
            k += 2
            continue
        depth += {"(": 1, ")": -1}.get(secret[k], 0)
        if depth < 0:
            return None
        k += 1
    return (flags, secret) if depth == 0 else None


# What gitleaks rules ask of the character after a key: a delimiter, a word boundary or the end
# of the text. Only these tails are stripped for ``end_free_core``; any other tail keeps the rule
# out of the split-key prefilter (the search then tries every end, as before).
_END_TAILS = (_GITLEAKS_TAIL, _BARE_TAIL, "(?:[\\x60'\"\\s;]|\\\\[nr]|$|\\b)", "(?:[^\\w-]|\\z)",
              "(?:[^a-zA-Z0-9+/]|\\z)", "(?:\\s|\\z)", "(?:\\B|\\s|\\z)", "(?:[\\/|\\#|\\?|:]|$)", "\\b")
_LEADING_GROUPS = re.compile(r"(?:\((?:\?[a-zA-Z-]*[:)])?)*")


def _regex_tokens(regex: str, start: int = 0) -> tuple[list[tuple[int, str, bool]], bool]:
    """The tokens of a Go (or Python) regex from ``start``, which must be outside a class, as
    (position, token, inside a class), and whether it ends inside a class. An escape is one
    token of two characters; a class opener takes its leading ``^`` and ``]`` (a member in RE2)."""
    out: list[tuple[int, str, bool]] = []
    k, in_class = start, False
    while k < len(regex):
        c = regex[k]
        if c == "\\":
            out.append((k, regex[k:k + 2], in_class))
            k += 2
        elif in_class:
            out.append((k, c, True))
            in_class = c != "]"
            k += 1
        elif c == "[":
            j = k + 1
            for lead in ("^", "]"):
                if regex[j:j + 1] == lead:
                    j += 1
            out.append((k, regex[k:j], False))
            in_class, k = True, j
        else:
            out.append((k, c, False))
            k += 1
    return out, in_class


_ASSERTIONS = ("\\b", "\\B", "\\A", "\\z", "\\Z", "^", "$")
_LOOKAROUNDS = ("(?=", "(?!", "(?<=", "(?<!")


def end_free_core(regex: str) -> str | None:
    """``regex`` (Go syntax) without the condition it puts on what follows a key, or None when
    that cannot be done safely. The split-key search tries a rule on every prefix of a joined run
    (a prefix ends where the text "ends", which a tail like ``(?:\\s|$)`` or ``\\b`` then
    accepts); a match on any prefix is a match of this core on the whole run, so a core that finds
    nothing there rules the rule out for every prefix at once. That holds when nothing left in the
    core looks ahead, which is checked: a core with ``$``, ``\\Z``, ``\\B``, a lookahead, or
    ``\\b`` anywhere but before its first character gives None."""
    core = regex
    for tail in _END_TAILS:
        if core.endswith(tail) and not core.endswith("\\" + tail):
            core = core[: -len(tail)]
            break
    lead = _LEADING_GROUPS.match(core)
    k = lead.end() if lead else 0
    if core[k:k + 2] == "\\b":  # a word boundary before the first character looks back and at it
        k += 2
    tokens, open_class = _regex_tokens(core, k)
    if open_class or not core:
        return None
    for pos, token, in_class in tokens:
        # ^ and lookbehinds only look back, which cutting the text after the key does not change
        if not in_class and (token in ("\\b", "\\B", "\\A", "\\z", "\\Z", "$")
                             or core.startswith(("(?=", "(?!"), pos)):
            return None
    return core


def context_free(regex: str) -> str | None:
    """``regex`` (Go syntax) with every zero-width assertion (``\\b``, ``\\B``, ``^``, ``$``,
    ``\\A``, ``\\z``) deleted, or None when it has a lookaround. Deleting an assertion only lets a
    regex match more, and what is left reads nothing but the characters it consumes: a match of
    the rule inside any stretch of a text is a match of this inside the whole text. So when it
    finds nothing in a text with its whitespace removed, no split-key run can hold the rule's key
    (a run's joined text is a stretch of exactly that), and the split-key search is skipped."""
    tokens, open_class = _regex_tokens(regex)
    if open_class:
        return None
    out: list[str] = []
    for pos, token, in_class in tokens:
        if not in_class and token in _ASSERTIONS:
            continue
        if not in_class and regex.startswith(_LOOKAROUNDS, pos):
            return None
        out.append(token)
    return "".join(out)


def _top_level_alternatives(pattern: str) -> list[str]:
    """``pattern`` split at its ``|`` outside groups and character classes."""
    out, depth, in_class, start, k = [], 0, False, 0, 0
    while k < len(pattern):
        c = pattern[k]
        if c == "\\":
            k += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c in "()":
            depth += 1 if c == "(" else -1
        elif c == "|" and depth == 0:
            out.append(pattern[start:k])
            start = k + 1
        k += 1
    return [*out, pattern[start:]]


def _literal_prefixes(secret: str) -> list[str]:
    """The literal starts of every match of a secret pattern: ``["access-"]`` for
    ``access-(?:sandbox|...)``, ``["live_", "test_"]`` for ``(live|test)_[a-f0-9]{35}``, one per
    top-level alternative; ``""`` for an alternative that starts with a class."""
    out: list[str] = []
    for alt in _top_level_alternatives(secret):
        m = re.match(r"\((?:\?:)?([A-Za-z0-9_]+(?:\|[A-Za-z0-9_]+)+)\)", alt)
        if m is not None:  # a group of plain alternatives first
            rest = _literal_prefix(alt[m.end():]) if alt[m.end():m.end() + 1] not in "?*{" else ""
            out += [a + rest for a in m.group(1).split("|")]
        else:
            out.append(_literal_prefix(alt))
    return out


def _token_starts_with_keyword(regex: str, keywords: Sequence[str]) -> bool:
    """True for a unique-token rule (``\\b(SECRET)...``) every match of which starts with one of
    its keywords (``ghp_``, ``xox``): it need only be tried where a keyword occurs."""
    flags = "(?i)" if regex.startswith("(?i)") else ""
    found = _secret_group(regex) if keywords and regex.startswith(flags + "\\b(") else None
    if found is None:
        return False
    return all(p and any(p.lower().startswith(w) for w in keywords) for p in _literal_prefixes(found[1]))


def _literal_prefix(secret: str) -> str:
    out: list[str] = []
    k = 0
    while k < len(secret):
        c = secret[k]
        if c == "\\" and k + 1 < len(secret) and secret[k + 1] in "-_.":
            out.append(secret[k + 1])
            k += 2
        elif c.isalnum() or c in "_-":
            out.append(c)
            k += 1
        else:
            if c in "?*{" and out:  # the last character is optional or repeated: not literal
                out.pop()
            break
    return "".join(out)


def bare_rules(rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rules that find a provider's token **without** the provider's name beside it.

    gitleaks gates many rules on a name in context (``plaid``, ``airtable``, ``yandex``): a Plaid
    ``access-sandbox-<uuid>`` token pasted alone into a prompt, or in a log header, is not reported,
    and a unique-token rule misses ``(auth pnu_...)`` because ``)`` is not in its closing set. For
    every rule whose secret starts with >= ``BARE_MIN_PREFIX`` literal characters and is at least
    ``BARE_MIN_WIDTH`` long, this adds ``<id>-bare``: ``\\b(SECRET)`` with the closing set widened by
    ``,)]}>``, keyed on that literal prefix, with the rule's allowlists and an entropy of at least
    ``BARE_MIN_ENTROPY``. Secrets without a distinctive prefix (a bare 32-hex string: an MD5 hash looks the same) get no bare rule.
    """
    try:  # the standard library's own regex parser sizes a pattern (Python >= 3.11; sre_parse before)
        from re import _parser as sre
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as sre

    out: list[dict[str, Any]] = []
    for r in rules:
        found = _secret_group(r["regex"])
        if found is None:
            continue
        flags, secret = found
        prefixes = _literal_prefixes(secret)
        if min(len(p) for p in prefixes) < BARE_MIN_PREFIX:
            continue
        try:
            if sre.parse(go_to_python_regex(secret)).getwidth()[0] < BARE_MIN_WIDTH:
                continue
        except Exception:  # noqa: BLE001 - a pattern the parser cannot size gets no bare rule
            continue
        out.append({"id": f"{r['id']}-bare", "derived_from": r["id"],
                    "regex": f"{flags}\\b({secret}){_BARE_TAIL}", "keywords": sorted({p.lower() for p in prefixes}),
                    # a real token is random; a defanged one (``NRAK-x1x1x1...``) is not
                    "secretGroup": 1, "entropy": max(float(r.get("entropy") or 0.0), BARE_MIN_ENTROPY),
                    "allowlists": r.get("allowlists", [])})
    return out


def build_rules(gitleaks_toml: str | Path, *, pii: Sequence[str] = PII_RULES, bare: bool = True) -> dict[str, Any]:
    """The ``detectors.json`` document from a gitleaks config: rules (Go regexes, keywords,
    entropy, secretGroup, allowlists), the global allowlist, the personal-data rules, and where
    they came from (file name, sha256, gitleaks ``minVersion``). Rules without a regex (path-only)
    and rules whose regex Python cannot compile are left out and listed in ``skipped``. With
    ``bare``, the rules of ``bare_rules`` are added (``derived_from`` names their gitleaks rule)."""
    path = Path(gitleaks_toml)
    try:
        raw = path.read_bytes()
        config = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"gitleaks config {path} does not exist") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid gitleaks TOML file ({exc})") from None
    rules: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for k, r in enumerate(config.get("rules", [])):
        rid = r.get("id") if isinstance(r, dict) else None
        if not isinstance(rid, str):
            raise ConfigError(f"{path}: rules[{k}] has no id")
        if not r.get("regex"):
            skipped[rid] = "no regex (matches file paths only)"
            continue
        entry = {
            "id": rid, "regex": r["regex"], "keywords": [str(w).lower() for w in r.get("keywords", [])],
            "secretGroup": int(r.get("secretGroup", 0)), "entropy": float(r.get("entropy", 0.0)),
            "allowlists": [{key: a[key] for key in ("regexes", "regexTarget", "stopwords", "condition", "paths") if key in a}
                           for a in r.get("allowlists", [])],
        }
        try:
            _compile(entry["regex"], f"rules.{rid}")
        except ConfigError as exc:
            skipped[rid] = str(exc)
            continue
        rules.append(entry)
    if bare:
        for entry in bare_rules(rules):
            try:
                _compile(entry["regex"], f"rules.{entry['id']}")
            except ConfigError as exc:
                skipped[entry["id"]] = str(exc)
                continue
            rules.append(entry)
    glob = config.get("allowlist") or {}
    unknown = [p for p in pii if p not in ALL_PII_RULES]
    if unknown:
        raise ConfigError(f"pii: unknown rule(s) {unknown}; known: {list(ALL_PII_RULES)}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": hashlib.sha256(raw).hexdigest()[:12],
        "compiled_from": {"gitleaks": {"file": path.name, "sha256": hashlib.sha256(raw).hexdigest(),
                                       "min_version": config.get("minVersion"), "rules": len(rules)}},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "credential": {
            "global_allowlist": {key: glob[key] for key in ("regexes", "stopwords") if key in glob},
            "rules": rules,
            "skipped": skipped,
        },
        "pii": {"rules": list(pii)},
        "views": {"nfkc": True, "decode": ["base64", "hex", "url"], "joined": True, "spelled": True},
    }


def rules_bytes(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode("utf-8")


def default_gitleaks_path() -> Path:
    """``$TIERWISE_SHARED_DATA/gitleaks/gitleaks.toml`` (default ``../shared/datasets``)."""
    root = os.environ.get("TIERWISE_SHARED_DATA", "../shared/datasets")
    return Path(root) / "gitleaks" / "gitleaks.toml"


def default_rules_bytes(gitleaks: str | Path | None = None) -> bytes | None:
    """The ``detectors.json`` bytes built from ``gitleaks`` (default: the shared data's config),
    or None with a warning when that file is not there (the bundle then ships without detectors)."""
    path = Path(gitleaks) if gitleaks is not None else default_gitleaks_path()
    if gitleaks is None and not path.is_file():
        logger.warning("no gitleaks config at %s: the bundle is written without detector rules "
                       "(add them later with `tierwise detectors install BUNDLE --gitleaks PATH`)", path)
        return None
    return rules_bytes(build_rules(path))


# ------------------------------------------------------------------------------------------
# The scanner
# ------------------------------------------------------------------------------------------
class _KeywordFinder:
    """Which of a fixed set of lower-case keywords occur in a lower-case text: one pass."""

    def __init__(self, keywords: Iterable[str], engine: str = "auto") -> None:
        self.keywords = sorted(set(keywords), key=lambda w: (-len(w), w))
        if engine == "auto":
            try:
                import ahocorasick  # noqa: F401
                engine = "ahocorasick"
            except ImportError:
                engine = "re"
        self.engine = engine
        if engine == "ahocorasick":
            import ahocorasick

            auto = ahocorasick.Automaton()
            for w in self.keywords:
                auto.add_word(w, w)
            auto.make_automaton()
            self._auto = auto
        elif engine == "re":
            # overlapping keywords (``key`` inside ``apikey``) need a look-ahead to all be seen
            self._re = re.compile("(?=(" + "|".join(re.escape(w) for w in self.keywords) + "))")
            self._starting: dict[str, list[str]] = {}
            for w in self.keywords:
                self._starting.setdefault(w[:1], []).append(w)
        elif engine == "hyperscan":
            import hyperscan  # optional: measured in benchmarks/peers.py, not a serving dependency

            db = hyperscan.Database()
            db.compile(expressions=[re.escape(w).encode() for w in self.keywords],
                       ids=list(range(len(self.keywords))), elements=len(self.keywords),
                       flags=[hyperscan.HS_FLAG_SOM_LEFTMOST] * len(self.keywords))
            self._hs = db
            self._hs_local = threading.local()  # hyperscan scratch space is per thread
        elif engine == "in":
            pass
        else:
            raise ConfigError(f"keyword engine must be auto, ahocorasick, hyperscan, re or in, got {engine!r}")

    def find(self, lower: str) -> dict[str, list[int]]:
        """Keyword -> start positions of its occurrences in ``lower``."""
        found: dict[str, list[int]] = {}
        if self.engine == "ahocorasick":
            for end, w in self._auto.iter(lower):
                found.setdefault(w, []).append(end - len(w) + 1)
            return found
        if self.engine == "hyperscan" and lower.isascii():  # byte offsets = character offsets
            import hyperscan

            scratch = getattr(self._hs_local, "scratch", None)
            if scratch is None:
                scratch = self._hs_local.scratch = hyperscan.Scratch(self._hs)
            words = self.keywords

            def on_match(idx: int, start: int, end: int, flags: int, context: Any) -> None:
                found.setdefault(words[idx], []).append(start)

            self._hs.scan(lower.encode(), match_event_handler=on_match, scratch=scratch)
            for v in found.values():
                v.sort()
            return found
        if self.engine == "re":
            for m in self._re.finditer(lower):
                # the longest keyword matched at this position; shorter ones starting there too
                k = m.start()
                for v in self._starting[m.group(1)[:1]]:
                    if lower.startswith(v, k):
                        found.setdefault(v, []).append(k)
            return found
        for w in self.keywords:
            k = lower.find(w)
            while k >= 0:
                found.setdefault(w, []).append(k)
                k = lower.find(w, k + 1)
        return found


class Detectors:
    """Compiled detector rules. Build with :meth:`from_doc` / :meth:`from_bytes`; ``scan(text)``
    returns the hits in one text, ``scan_many(texts)`` one list per text. Thread-safe (read-only
    after construction)."""

    def __init__(self, doc: Mapping[str, Any], *, keyword_engine: str = "auto", prefilter: bool = True,
                 where: str = DETECTORS_FILE) -> None:
        if doc.get("format") != FORMAT:
            raise BundleError(f"{where}: format must be {FORMAT!r}, got {doc.get('format')!r}")
        if doc.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{where}: format_version {doc.get('format_version')!r} is not supported "
                              f"(this tierwise reads {FORMAT_VERSION}); rebuild it with `tierwise detectors install`")
        self.doc = doc
        self.version = str(doc.get("version"))
        cred = doc.get("credential") or {}
        try:
            glob = cred.get("global_allowlist") or {}
            self._global = _allowlists([glob], f"{where}: global_allowlist") if glob else ()
            rules: list[_SecretRule] = []
            for k, r in enumerate(cred.get("rules", [])):
                rid = r["id"]
                kws = tuple(r.get("keywords", ()))
                prefix = strip_prefix(r["regex"])[1]
                # a rule anchored on its own prefix (``AKIA``, ``ghp_``), not on a name in context
                distinctive = not rid.startswith("generic") and bool(kws) and min(len(w) for w in kws) >= 3 and not prefix
                rules.append(_SecretRule(
                    id=rid, pattern=_compile(r["regex"], f"{where}: credential.rules[{k}] ({rid})"),
                    keywords=kws, secret_group=int(r.get("secretGroup", 0)), entropy=float(r.get("entropy", 0.0)),
                    allowlists=_allowlists(r.get("allowlists", ()), f"{where}: credential.rules[{k}] ({rid})"),
                    generic=rid.startswith("generic"),
                    distinctive=distinctive,
                    prefix=prefix,
                    # semi-generic rules whose names start with a keyword, and unique tokens (bare
                    # rules among them) that start with one: tried only at keyword positions
                    anchored=_starts_with_keyword(r["regex"], kws) or _token_starts_with_keyword(r["regex"], kws),
                    # only the split-key search reads these, and only for distinctive rules
                    core=_compile_core(r["regex"]) if distinctive else None,
                    free=_compile_core(r["regex"], context_free) if distinctive else None,
                ))
        except (KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"{where}: malformed credential rules ({exc!r})") from None
        except ConfigError as exc:
            raise BundleError(str(exc)) from None
        self.rules = rules
        # ``<id>-bare`` -> ``<id>`` (``bare_rules``): a span both report is one hit, the gitleaks rule's
        self._parent = {r["id"]: r["derived_from"] for r in cred.get("rules", []) if r.get("derived_from")}
        self._always = [r for r in rules if not r.keywords]
        # the split-key prefilters (``free`` and ``core`` of each rule); off only to test them
        self._split_prefilter = True
        self._by_keyword: dict[str, list[_SecretRule]] = {}
        for r in rules:
            for w in r.keywords:
                self._by_keyword.setdefault(w, []).append(r)
        self._finder = _KeywordFinder(self._by_keyword, keyword_engine)
        self._distinctive_kw = frozenset(w for r in rules if r.distinctive for w in r.keywords)
        self._distinct_finder = _KeywordFinder(self._distinctive_kw, keyword_engine)
        _changing()  # build the canonical-form character class at load, not on the first request
        pii = (doc.get("pii") or {}).get("rules", list(PII_RULES))
        self.pii_rules = frozenset(pii)
        views = doc.get("views") or {}
        self._decode = bool(views.get("decode", True))
        self._joined = bool(views.get("joined", True))
        self._spelled = bool(views.get("spelled", True))
        # one Hyperscan pass names the regexes that can match in a text; the rest are not run
        self._rule_names = {r.id: "rule:" + r.id for r in rules}
        self.patterns = RegexPrefilter({**_VIEW_PATTERNS, **_PII_PATTERNS,
                                        **{self._rule_names[r.id]: r.pattern for r in rules}}, enabled=prefilter)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], **kw: Any) -> Detectors:
        return cls(doc, **kw)

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = DETECTORS_FILE, **kw: Any) -> Detectors:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise BundleError(f"{where}: must be a JSON object")
        return cls(doc, where=where, **kw)

    @classmethod
    def from_gitleaks(cls, path: str | Path, **kw: Any) -> Detectors:
        return cls(build_rules(path), **kw)

    @property
    def keyword_engine(self) -> str:
        return self._finder.engine

    def info(self) -> dict[str, Any]:
        return {"version": self.version, "credential_rules": len(self.rules), "bare_rules": len(self._parent),
                "pii_rules": sorted(self.pii_rules),
                "keyword_engine": self.keyword_engine, "prefilter": "hyperscan" if self.patterns.active else None,
                "compiled_from": self.doc.get("compiled_from")}

    # -- scanning ---------------------------------------------------------------------------
    def scan_many(self, texts: Sequence[str]) -> list[list[Hit]]:
        return [self.scan(t) for t in texts]

    def scan(self, text: str) -> list[Hit]:
        """Hits in ``text`` (offsets into ``text``), sorted by start, one per rule and span."""
        base = canonical(text)
        maybe = self.patterns.possible(base.text)
        found: list[tuple[str, str, int, int]] = []
        self._scan_view(base, found, credentials=True, pii=True, only_distinctive=False, maybe=maybe)
        if self._decode:
            for v in decoded_views(base, maybe):
                self._scan_view(v, found, credentials=True, pii=True, only_distinctive=False,
                                maybe=self.patterns.possible(v.text))
        if (self._joined and self._distinctive_kw and ("\n" in base.text or " " in base.text)
                and _can(maybe, "split")):
            # a key split by spaces or newlines: its keyword appears only once whitespace is gone
            whole = "".join(base.text.split())
            compact = whole.lower()  # lower-casing never makes or removes whitespace
            where = self._distinct_finder.find(compact)
            if where and self._split_prefilter:
                # in prose a keyword turns up often (``pat`` in "patient"); a key never does
                rules = {r.id: r for w in where for r in self._by_keyword[w] if r.distinctive}.values()
                if not any(r.free is None or r.free.search(whole) for r in rules):
                    where = {}
            if where:
                # keyword positions index the lower-cased text; usable for runs only if it kept every
                # length (whitespace keeps its length, so the text without it tells)
                self._scan_split(base, found, where if len(compact) == len(whole) else None)
        if self._spelled and self.pii_rules:
            for v in spelled_views(base, maybe):
                self._scan_view(v, found, credentials=False, pii=True, only_distinctive=False,
                                maybe=self.patterns.possible(v.text))
                if v.text and "@" not in v.text:  # a spelled number: judged by its digits alone
                    spans: list[tuple[str, int, int]] = []
                    scan_spelled_numbers(v.text, spans)
                    for rule, a, b in spans:
                        if rule in self.pii_rules:
                            oa, ob = v.span(a, b)
                            found.append((rule, PII, oa, ob))
        if not found:
            return []
        seen: set[tuple[str, int, int]] = set()
        hits: list[Hit] = []
        spans = {(rule, a, b) for rule, _, a, b in found} if self._parent else ()
        for rule, cls, a, b in sorted(found, key=lambda h: (h[2], h[3], h[0])):
            parent = self._parent.get(rule) if self._parent else None
            if parent is not None and (parent, a, b) in spans:
                continue
            if (rule, a, b) not in seen:
                seen.add((rule, a, b))
                hits.append(Hit(rule, cls, a, b))
        return hits

    def _scan_split(self, base: View, found: list[tuple[str, str, int, int]],
                    where: Mapping[str, list[int]] | None = None) -> None:
        """Keys split into chunks: for each distinctive keyword in a run's joined text, join from
        the keyword on, and try ends from the longest down (prose after the key would otherwise
        glue onto it and break the rule's word boundary); the first end that matches wins.
        ``where``: the keywords' positions in the whole text without whitespace, so that only
        runs holding one are looked at (in prose nearly every sentence is a run)."""
        prefilter = self._split_prefilter
        keep = None if where is None else _runs_holding(base.text, where)
        for tokens in split_runs(base, keep=keep):
            joined = "".join(t[0] for t in tokens).lower()
            for w, positions in self._distinct_finder.find(joined).items():
                rules = [r for r in self._by_keyword[w] if r.distinctive]
                if not rules:
                    continue
                starts: list[tuple[int, int]] = [(0, 0)]  # (token, characters skipped in it)
                for q in positions[:4]:
                    # the token holding the keyword's first character, and the offset into it
                    acc, i = 0, 0
                    while acc + len(tokens[i][0]) <= q:
                        acc += len(tokens[i][0])
                        i += 1
                    starts += [(i, 0), (i, q - acc)]
                for i, skip in dict.fromkeys(starts):
                    # one view of tokens[i:] joined; tokens[i:j] joined is its prefix of length
                    # ends[j - i - 1] (building a view per j made long prose quadratic in Python)
                    # the joined text only; its map back to ``base`` (a Python list per character)
                    # is built once a rule matches, not for every start that finds nothing
                    full = "".join(t[0] for t in tokens[i:])[skip:]
                    # a rule whose core finds nothing in the whole run matches no prefix of it
                    # (in prose, ``asia`` in "euthanasia" or ``pat`` in "patient" start a search)
                    live = [r for r in rules if r.core is None or r.core.search(full)] if prefilter else rules
                    if not live:
                        continue
                    ends = list(itertools.accumulate(len(t[0]) for t in tokens[i:]))
                    lower = full.lower()
                    # keyword positions found once; a prefix holds those that end inside it. Exact
                    # for Aho-Corasick (every occurrence) when lower-casing keeps every length; the
                    # other engines search each prefix as before.
                    exact = self._finder.engine == "ahocorasick" and len(lower) == len(full)
                    where_all = self._finder.find(lower) if exact else None
                    for j in range(len(tokens), i, -1):
                        end = max(0, ends[j - i - 1] - skip)
                        text = full[:end]
                        where = None if where_all is None else {
                            w: kept for w, qs in where_all.items() if (kept := [q for q in qs if q + len(w) <= end])}
                        hits = [(r.id, a, b) for r in live for a, b in self._match_rule(r, text, where)]
                        if hits:
                            v = joined_view(base, tokens[i:], skip=skip)
                            for rid, a, b in hits:
                                oa, ob = v.span(a, b)
                                found.append((rid, CREDENTIAL, oa, ob))
                            break

    def _scan_view(self, view: View, found: list[tuple[str, str, int, int]], *, credentials: bool, pii: bool,
                   only_distinctive: bool, maybe: Collection[str] | None) -> None:
        """Rule and personal-data hits in one view. ``maybe``: the patterns that can match in it
        (``self.patterns.possible(view.text)``; None: all)."""
        text = view.text
        names = self._rule_names
        if credentials and self.rules and (maybe is None or any(n.startswith("rule:") for n in maybe)):
            lower = text.lower()
            where = self._finder.find(lower)
            rules: dict[str, _SecretRule] = {r.id: r for r in self._always}
            for w in where:
                for r in self._by_keyword[w]:
                    rules[r.id] = r
            for r in rules.values():
                if only_distinctive and not r.distinctive or maybe is not None and names[r.id] not in maybe:
                    continue
                for a, b in self._match_rule(r, text, where):
                    oa, ob = view.span(a, b)
                    found.append((r.id, CREDENTIAL, oa, ob))
        if pii and self.pii_rules:
            spans: list[tuple[str, int, int]] = []
            scan_pii(text, spans, maybe)
            for rule, a, b in spans:
                if rule in self.pii_rules:
                    oa, ob = view.span(a, b)
                    found.append((rule, PII, oa, ob))

    @staticmethod
    def _matches(r: _SecretRule, text: str, where: Mapping[str, list[int]]) -> Iterable[re.Match[str]]:
        """``finditer``, or for a semi-generic rule (its regex, prefix removed, starts with its
        keywords) a match tried only where one of its keywords occurs: same matches, no scan of
        every position."""
        if not r.anchored:
            yield from r.pattern.finditer(text)
            return
        starts: set[int] = set()
        for w in r.keywords:
            starts.update(where.get(w, ()))
        end = 0
        for k in sorted(starts):
            if k < end:
                continue
            m = r.pattern.match(text, k)
            if m is not None:
                end = max(m.end(), k + 1)
                yield m

    def _match_rule(self, r: _SecretRule, text: str,
                    where: Mapping[str, list[int]] | None = None) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        if where is None:
            where = self._finder.find(text.lower())
        for m in self._matches(r, text, where):
            g = r.secret_group
            if g and g <= (r.pattern.groups or 0):
                secret, a, b = m.group(g) or "", m.start(g), m.end(g)
            else:
                secret, a, b = m.group(0), m.start(), m.end()
                for k in range(1, (r.pattern.groups or 0) + 1):  # gitleaks: the first non-empty group
                    if m.group(k):
                        secret, a, b = m.group(k), m.start(k), m.end(k)
                        break
            if not secret:
                continue
            if r.entropy and shannon_entropy(secret) <= r.entropy:
                continue
            if r.generic and not any(c.isdigit() for c in secret):
                continue
            if looks_like_placeholder(secret):
                continue
            ms = m.start()
            if r.prefix:
                stop = max(0, ms - r.prefix)
                while ms > stop and text[ms - 1] in _PREFIX_CHARS:
                    ms -= 1
            match = text[ms:m.end()]
            ls = text.rfind("\n", 0, m.start()) + 1
            le = text.find("\n", m.end())
            line = text[ls:] if le < 0 else text[ls:le]
            if any(al.allows(secret, match, line) for al in r.allowlists) or any(
                    al.allows(secret, match, line) for al in self._global):
                continue
            out.append((a, b))
        return out
