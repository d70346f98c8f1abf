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
- The text holds no control characters other than tab, newline and carriage return (the
  detectors' canonical form removes them; Python's Unicode ``\\s`` counts some that PCRE's does not).
- Patterns compiled with ``re.ASCII`` (the gitleaks rules) whose source is ASCII with no escape
  of a non-ASCII character: for them a non-ASCII character is one character that is not ``\\w``,
  ``\\d`` or ``\\s`` and is in no class but the negated ones, which is what byte ``0x80`` is to
  Hyperscan's byte mode. The text is scanned with every non-ASCII character replaced by that byte
  (one byte per character, so counted repeats stay aligned), and their verdict holds on any text.
  (Hyperscan's UTF-8 mode would read the text as it is, but compiled one of the rules for 2 s.)
- Other patterns (the personal-data ones, with Python's Unicode classes; ASCII source): on ASCII
  text both readings agree. On other text each non-ASCII character ``c`` is replaced by a
  *stand-in*: an ASCII character (or the byte 0x80) that passes every character test of these
  patterns that ``c`` passes (each literal, class, ``.`` and, for word boundaries, ``\\w``, read
  with its pattern's flags, as Python reads them). Every match in the text then has a
  counterpart in the replaced text, so their verdict on it holds. ``é`` stands as ``_`` or a
  letter, a curly quote as 0x80, an Arabic-Indic digit as ``0``. A character no stand-in covers
  leaves these patterns unvouched on that text (reported as possible).
- Python's ``re`` and Hyperscan read the same syntax alike (no ``{,n}``, ``(?x)`` or ``\\u``:
  a pattern Hyperscan refuses is always reported as possible). ``tests/test_prefilter.py``
  checks the superset pattern by pattern, on sampled matches of every pattern in ASCII and
  non-ASCII contexts and on real prompts.

Compiling the shipped rules takes ~0.8 s: a process compiles a rule set once, and the compiled
database is kept on disk for the next one (``_disk_cache``). What it leaves out: *where* a
pattern matches (only whether), and texts it cannot vouch for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# characters a text must not hold to be vouched for: C0 controls but tab/newline/CR, and DEL
# (Python's Unicode \s counts \x1c-\x1f as whitespace; PCRE does not)
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# stand-in candidates, in order of preference: the byte 0x80 (passes the fewest tests), then ASCII
_CANDIDATES = "\x80_ 0aAzZ" + "".join(chr(c) for c in range(0x20, 0x7f)) + "\t\n\r"
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
        # where a text is not ASCII: patterns naming a non-ASCII character are never vouched for;
        # the others are read with 0x80 for every non-ASCII character (re.ASCII ones) or with
        # stand-ins (see the module)
        unvouched = {n for n, p in patterns.items() if _NAMES_NON_ASCII.search(p.pattern)}
        tests: dict[re.Pattern[str], None] = {}
        for n, p in patterns.items():
            if p.flags & re.ASCII or n in unvouched:
                continue
            got = _char_tests(p)
            if got is None:
                unvouched.add(n)
            else:
                tests.update(dict.fromkeys(got))
        self._names_non_ascii = frozenset(unvouched)
        self._unicode = frozenset(n for n, p in patterns.items() if not p.flags & re.ASCII and n not in unvouched)
        self._tests = list(tests)
        self._stand_ins: dict[str, str | None] = {}
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
        if text.isascii():
            return frozenset(self._scan(text.encode("ascii"))) | self._always
        # byte mode: one byte per character; for the re.ASCII patterns every non-ASCII character
        # is the byte 0x80, for the others its stand-in (see the module)
        found = self._scan(_NON_ASCII.sub("\x80", text).encode("latin-1"))
        stand = {c: self._stand_in(c) for c in set(_NON_ASCII.findall(text))}
        if None in stand.values():
            found |= self._unicode
        elif any(v != "\x80" for v in stand.values()):  # else the scan above read them the same way
            replaced = _NON_ASCII.sub(lambda m: stand[m.group()] or "", text)
            found = {n for n in found if n not in self._unicode} | (self._scan(replaced.encode("latin-1")) & self._unicode)
        return frozenset(found | self._names_non_ascii | self._always)

    def _scan(self, data: bytes) -> set[str]:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = self._hs.Scratch(self._db)
        hits: set[int] = set()
        # one report per expression at most (HS_FLAG_SINGLEMATCH): a handful of Python calls
        self._db.scan(data, match_event_handler=lambda i, a, b, f, c: hits.add(i), scratch=scratch)
        names = self.names
        return {names[i] for i in hits}

    def _stand_in(self, c: str) -> str | None:
        """The first candidate that passes every character test ``c`` passes (None: none does)."""
        got = self._stand_ins.get(c, "")
        if got != "":
            return got
        need = [t for t in self._tests if t.fullmatch(c)]
        got = next((s for s in _CANDIDATES if all(t.fullmatch(s) for t in need)), None)
        if len(self._stand_ins) < 65536:  # bounded: one entry per distinct character seen
            self._stand_ins[c] = got
        return got


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
    and shared by threads; each thread scans with its own scratch), and the compiled database is
    kept on disk for the next process (``_disk_cache``)."""
    import hyperscan as hs

    path = _disk_cache(hs, patterns)
    got = _load(hs, path) if path is not None else None
    if got is not None:
        return got
    always: set[int] = set()
    exprs: list[tuple[int, bytes, int]] = []
    for i, (pattern, py_flags) in enumerate(patterns):
        flags = _hs_flags(hs, py_flags)
        if flags is None:
            always.add(i)
        else:
            exprs.append((i, pattern.encode("utf-8"), flags))  # non-ASCII ones: vouched on ASCII text only
    db = _compile(hs, exprs, always)
    if path is not None and db is not None:
        _store(hs, path, db, always)
    return db, frozenset(always)


# -- the compiled database on disk --------------------------------------------------------------
# A file per rule set, named by the SHA-256 of everything the database depends on (patterns,
# flags, Hyperscan's version, the machine); its content is a header line (format, the indices
# never vouched for, the SHA-256 of the serialised database) and the serialised database. A file
# that does not check out, or that Hyperscan will not load (another CPU), is ignored and the rules
# are compiled; a directory that cannot be written is no error. TIERWISE_CACHE_DIR moves it
# (default: $XDG_CACHE_HOME/tierwise or ~/.cache/tierwise); TIERWISE_CACHE_DIR=off turns it off.
_CACHE_FORMAT = "tierwise-hyperscan-1"


def _disk_cache(hs: Any, patterns: tuple[tuple[str, int], ...]) -> Path | None:
    root = os.environ.get("TIERWISE_CACHE_DIR")
    if root == "off":
        return None
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tierwise")
    key = json.dumps([_CACHE_FORMAT, getattr(hs, "__version__", "?"), platform.machine(), patterns])
    return Path(root) / "hyperscan" / f"{hashlib.sha256(key.encode()).hexdigest()}.db"


def _load(hs: Any, path: Path) -> tuple[Any, frozenset[int]] | None:
    try:
        data = path.read_bytes()
        header, _, blob = data.partition(b"\n")
        head = json.loads(header)
        if head.get("format") != _CACHE_FORMAT or head.get("sha256") != hashlib.sha256(blob).hexdigest():
            return None
        return hs.loadb(blob, hs.HS_MODE_BLOCK), frozenset(int(i) for i in head["always"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, hs.error):
        return None


def _store(hs: Any, path: Path, db: Any, always: set[int]) -> None:
    try:
        blob = hs.dumpb(db)
        header = json.dumps({"format": _CACHE_FORMAT, "always": sorted(always),
                             "sha256": hashlib.sha256(blob).hexdigest()}).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(header + b"\n" + blob)
        os.replace(tmp, path)  # atomic: another process reads the old file or the new one
    except (OSError, hs.error) as exc:
        logger.debug("prefilter: compiled rules not cached at %s (%s)", path, exc)


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


_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
               "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W"}


def _char_tests(p: re.Pattern[str]) -> list[re.Pattern[str]] | None:
    """Every test ``p`` puts to one character, as a one-character regex with the flags in force
    there: literals, classes, ``.``, and ``\\w`` for a word boundary (look-around bodies too).
    Read from Python's own parse of the pattern. None where a construct is not understood here
    (or a case-insensitive back-reference, which compares two characters): never vouched for."""
    try:
        from re import _constants as C
        from re import _parser as sre_parse
    except ImportError:  # Python 3.10
        import sre_constants as C  # type: ignore[no-redef]
        import sre_parse  # type: ignore[no-redef]

    out: dict[tuple[str, int], None] = {}

    def cls(items: list) -> str:
        parts, neg = [], ""
        for op, av in items:
            if op is C.NEGATE:
                neg = "^"
            elif op is C.LITERAL:
                parts.append(re.escape(chr(av)))
            elif op is C.RANGE:
                parts.append(f"{re.escape(chr(av[0]))}-{re.escape(chr(av[1]))}")
            elif op is C.CATEGORY:
                parts.append(_CATEGORIES[str(av)])
            else:
                raise ValueError(op)
        return f"[{neg}{''.join(parts)}]"

    def walk(sub: Any, flags: int) -> None:
        for op, av in sub:
            if op is C.LITERAL:
                out[(re.escape(chr(av)), flags)] = None
            elif op is C.NOT_LITERAL:
                out[(f"[^{re.escape(chr(av))}]", flags)] = None
            elif op is C.ANY:
                out[(".", flags)] = None
            elif op is C.IN:
                out[(cls(av), flags)] = None
            elif op is C.AT and av in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY):
                out[(r"\w", flags)] = None
            elif op is C.SUBPATTERN:
                _, add, remove, body = av
                walk(body, (flags | add) & ~remove)
            elif op is C.BRANCH:
                for b in av[1]:
                    walk(b, flags)
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
                walk(av[2], flags)
            elif op in (C.ASSERT, C.ASSERT_NOT):
                walk(av[1], flags)
            elif op is getattr(C, "ATOMIC_GROUP", None):
                walk(av, flags)
            elif op is C.GROUPREF_EXISTS:
                walk(av[1], flags)
                if av[2] is not None:
                    walk(av[2], flags)
            elif op is C.GROUPREF and flags & re.IGNORECASE:
                raise ValueError("case-insensitive back-reference")
            elif op not in (C.AT, C.GROUPREF):
                raise ValueError(op)

    try:
        walk(sre_parse.parse(p.pattern, p.flags), p.flags)
    except (ValueError, KeyError):
        return None
    keep = re.IGNORECASE | re.DOTALL | re.ASCII
    return [re.compile(src, f & keep) for src, f in out]
