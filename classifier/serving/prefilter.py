"""Which of the detectors' regexes can match a text, from one compiled pass (Hyperscan).

The detectors run some three hundred Python regexes (the gitleaks rules and the personal-data
patterns), each gated by a cheap test of its own (a keyword, an ``@``, a run of digits). On
ordinary prose most of those gates open and most of the regexes then find nothing, at tens of
nanoseconds per character each. ``RegexPrefilter`` compiles all of them into one Hyperscan
database in *prefilter mode*, in which every expression matches a **superset** of what it
matches as written (constructs Hyperscan lacks, such as look-arounds and back-references, are
widened, never narrowed). One scan of the text names the expressions that can match somewhere
in it; a regex it does not name cannot match, so the detectors skip its pass, and the hits are
the same by construction.

Assumptions, stated (``possible`` returns None, "run everything", whenever one does not hold):

- Hyperscan is installed (the ``serve`` extra has it; without it nothing changes but speed).
- The text is valid UTF-8 once encoded (no lone surrogates) and holds no control characters
  other than tab, newline and carriage return (the detectors' canonical form removes them).
- Patterns compiled with ``re.ASCII`` (the gitleaks rules) whose source is ASCII with no escape
  of a non-ASCII character: for them a non-ASCII character is one character that is not ``\\w``,
  ``\\d`` or ``\\s`` and is in no class but the negated ones, which is what byte ``0x80`` is to
  Hyperscan's byte mode. The text is scanned with every non-ASCII character replaced by that byte
  (one byte per character, so counted repeats stay aligned), and their verdict holds on any text.
  (Hyperscan's UTF-8 mode would read the text as it is, but compiled one of the rules for 2 s.)
- Other patterns (the personal-data ones, with Python's Unicode classes; ASCII source) are
  vouched for on ASCII text, where both readings agree, and on text whose non-ASCII characters
  are all *plain*: not ``\\w``, ``\\d`` or ``\\s`` in Python's Unicode reading and not a case
  variant of an ASCII letter (curly quotes, dashes, bullets, symbols, emoji). To an ASCII-only
  pattern such a character is, like the byte 0x80, in the negated classes and ``.`` only. On
  other text (accented letters, CJK, Unicode digits) they are reported as possible.
- Python's ``re`` and Hyperscan read the same syntax alike (no ``{,n}``, ``(?x)`` or ``\\u``:
  a pattern Hyperscan refuses is always reported as possible). ``tests/test_prefilter.py``
  checks the superset on every rule's own example secret and on real prompts.

What it leaves out: *where* a pattern matches (only whether), and texts it cannot vouch for.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

# characters a text must not hold to be vouched for: C0 controls but tab/newline/CR, and DEL
# (Python's Unicode \s counts \x1c-\x1f as whitespace; PCRE does not)
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_WORD_OR_SPACE = re.compile(r"[\w\s]")  # Unicode: letters, digits (\d is in \w), underscore, spaces
# a pattern that names a non-ASCII character, literally or by an escape (\x80-\xff, \u, \U, \N{},
# a three-digit octal escape or back-reference: read conservatively)
_NAMES_NON_ASCII = re.compile(r"[^\x00-\x7f]|\\(?:x[89a-fA-F]|[uUN]|[0-3][0-7][0-7])")


class RegexPrefilter:
    """``possible(text)``: the names of the patterns that can match in ``text`` (a superset of
    those that do), or None when it cannot vouch (see the module's assumptions).

    ``patterns`` maps a name to a compiled Python regex. Thread-safe: each thread gets its own
    Hyperscan scratch space."""

    def __init__(self, patterns: Mapping[str, re.Pattern[str]], *, enabled: bool = True) -> None:
        self.names = list(patterns)
        self._db: Any = None
        self._local = threading.local()
        # where a text is not ASCII: patterns naming a non-ASCII character are never vouched for,
        # and patterns with Unicode classes only when every non-ASCII character is plain
        self._names_non_ascii = frozenset(n for n, p in patterns.items() if _NAMES_NON_ASCII.search(p.pattern))
        self._unicode = frozenset(n for n, p in patterns.items() if not p.flags & re.ASCII) | self._names_non_ascii
        self._always: frozenset[str] = frozenset()
        if not enabled or not patterns:
            return
        try:
            import hyperscan
        except ImportError:
            return
        self._hs = hyperscan
        self._db, always = _database(tuple((p.pattern, p.flags) for p in patterns.values()))
        self._always = frozenset(self.names[i] for i in always)

    @property
    def active(self) -> bool:
        return self._db is not None

    def possible(self, text: str) -> frozenset[str] | None:
        if self._db is None or _UNSAFE.search(text) is not None:
            return None
        ascii_text = text.isascii()
        # byte mode: one byte per character, every non-ASCII one the byte 0x80 (see the module)
        data = (text if ascii_text else _NON_ASCII.sub("\x80", text)).encode("latin-1")
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = self._hs.Scratch(self._db)
        hits: set[int] = set()
        # one report per expression at most (HS_FLAG_SINGLEMATCH): a handful of Python calls
        self._db.scan(data, match_event_handler=lambda i, a, b, f, c: hits.add(i), scratch=scratch)
        names = self.names
        found = {names[i] for i in hits} | self._always
        if not ascii_text:
            plain = all(_plain(c) for c in set(_NON_ASCII.findall(text)))
            found |= self._names_non_ascii if plain else self._unicode
        return frozenset(found)


def _hs_flags(hs: Any, py_flags: int) -> int | None:
    """Hyperscan flags reading a pattern as Python's ``py_flags`` do, or None where they cannot
    (verbose patterns). Byte mode: classes are ASCII, as with ``re.ASCII``."""
    if py_flags & re.VERBOSE:
        return None
    flags = hs.HS_FLAG_PREFILTER | hs.HS_FLAG_SINGLEMATCH | hs.HS_FLAG_ALLOWEMPTY
    if py_flags & re.IGNORECASE:
        flags |= hs.HS_FLAG_CASELESS
    if py_flags & re.DOTALL:
        flags |= hs.HS_FLAG_DOTALL
    if py_flags & re.MULTILINE:
        flags |= hs.HS_FLAG_MULTILINE
    return flags


@functools.lru_cache(maxsize=4)
def _database(patterns: tuple[tuple[str, int], ...]) -> tuple[Any, frozenset[int]]:
    """(database, indices never vouched for) of (pattern, Python flags) pairs. Compiling the
    default rules takes ~0.8 s, so a process compiles each rule set once (a database is read-only
    and shared by threads; each thread scans with its own scratch)."""
    import hyperscan as hs

    always: set[int] = set()
    exprs: list[tuple[int, bytes, int]] = []
    for i, (pattern, py_flags) in enumerate(patterns):
        flags = _hs_flags(hs, py_flags)
        if flags is None:
            always.add(i)
        else:
            exprs.append((i, pattern.encode("utf-8"), flags))  # non-ASCII ones: vouched on ASCII text only
    return _compile(hs, exprs, always), frozenset(always)


def _compile(hs: Any, exprs: list[tuple[int, bytes, int]], always: set[int]) -> Any:
    """One database of ``exprs`` (id, pattern, flags); an expression Hyperscan refuses is moved
    to ``always`` (found by compiling the batch's members one by one, only when the batch fails)."""
    def build(items: list[tuple[int, bytes, int]]) -> Any:
        db = hs.Database()
        db.compile(expressions=[e for _, e, _ in items], ids=[i for i, _, _ in items],
                   elements=len(items), flags=[f for _, _, f in items])
        return db

    if not exprs:
        return None
    try:
        return build(exprs)
    except hs.error:
        pass
    kept = []
    for item in exprs:
        try:
            build([item])
            kept.append(item)
        except hs.error as exc:
            logger.info("prefilter: pattern %d is always scanned (Hyperscan refuses it: %s)", item[0], exc)
            always.add(item[0])
    return build(kept) if kept else None


@functools.lru_cache(maxsize=4096)
def _plain(c: str) -> bool:
    """A non-ASCII character that no ASCII-only pattern, Unicode classes or not, tells from the
    byte 0x80: not a word, digit or space character, and no case variant of it is ASCII (case
    variants are letters, so the second test is belt and braces)."""
    return _WORD_OR_SPACE.match(c) is None and not (c.lower().isascii() or c.upper().isascii())
