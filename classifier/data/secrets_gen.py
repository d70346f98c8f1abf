"""Seeded sampling of strings that match a secret-detection regex (gitleaks rules).

The sensitivity examples need realistic credentials for each of gitleaks' rules. Rather than
hand-writing one per rule, this module walks the parse tree Python's regex parser (``sre_parse``)
builds for the rule's regex and draws one string from it: literals are copied, character classes
sampled uniformly, alternatives chosen at random, repeats given a length within their bounds
(lazy and unbounded repeats are kept short so the prefix/suffix noise of gitleaks' "semi-generic"
rules stays small). The capture group that holds the secret is returned separately, so callers can
put the bare secret into their own context (``API_KEY="..."``) and check that line against the rule.

gitleaks writes its rules in Go's RE2 dialect; ``go_to_python_regex`` (``classifier.regex_go``,
shared with the serving detectors) translates the three
constructs Python lacks (mid-pattern ``(?i)``, ``\\z``, POSIX ``[[:alnum:]]``).

Left out: look-arounds are not enforced (they are skipped), back-references copy the group, the
``(?i)`` flag does not randomise letter case (the written case always matches), and nothing here
checks gitleaks' entropy thresholds or allow-lists: callers validate samples with ``re`` where
they need a guarantee.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

import numpy as np

try:  # Python >= 3.11 keeps the parser private; the public alias is deprecated
    from re import _constants as sre_c  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as sre_c  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

from classifier.errors import DataError
from classifier.regex_go import go_to_python_regex

_PRINTABLE = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
_WORD = string.ascii_letters + string.digits + "_"
_FILLER = string.ascii_lowercase + string.digits
_NOISE = string.ascii_lowercase + "  "  # filler for ".*"-style context, with some spaces
_CATEGORY_CHARS: dict[object, str] = {
    sre_c.CATEGORY_DIGIT: string.digits,
    sre_c.CATEGORY_NOT_DIGIT: string.ascii_letters,
    sre_c.CATEGORY_SPACE: " ",
    sre_c.CATEGORY_NOT_SPACE: _WORD,
    sre_c.CATEGORY_WORD: _WORD,
    sre_c.CATEGORY_NOT_WORD: " .-:/",
}
@dataclass
class Sample:
    """One drawn string and the text of each capture group (group number -> text)."""

    text: str
    groups: dict[int, str] = field(default_factory=dict)

    def secret(self, group: int | None = None) -> str:
        """The secret part: ``group`` if given and present, else group 1, else the whole text."""
        for g in ([group] if group else []) + [1]:
            if g in self.groups and self.groups[g]:
                return self.groups[g]
        return self.text


class RegexSampler:
    """Draws strings matching one regex. ``sample(rng)`` is deterministic given the generator.

    ``max_extra`` bounds how far a greedy repeat goes beyond its minimum (unbounded repeats such as
    ``{250,}`` would otherwise be unbounded); ``noise_extra`` is the smaller bound used for repeats
    of "any character"/whitespace classes, which in gitleaks rules are context noise.
    """

    def __init__(self, pattern: str, *, max_extra: int = 16, noise_extra: int = 2) -> None:
        self.source_pattern = pattern
        self.pattern = go_to_python_regex(pattern)
        try:
            self._parsed = sre_parse.parse(self.pattern)
        except (re.error, OverflowError, RecursionError) as exc:
            raise DataError(f"cannot parse regex {pattern!r}: {exc}") from exc
        self.max_extra = max_extra
        self.noise_extra = noise_extra
        self._ignorecase = bool(self._parsed.state.flags & re.IGNORECASE)

    def compiled(self) -> re.Pattern[str] | None:
        """The translated regex compiled by Python's ``re``, or None if ``re`` rejects it."""
        try:
            return re.compile(self.pattern)
        except re.error:
            return None

    def sample_valid(self, rng: np.random.Generator, tries: int = 50) -> Sample | None:
        """A sample that Python's ``re`` confirms matches (searches) the rule's regex.

        Look-arounds and word boundaries are not modelled by the walk, so a draw can miss; this
        retries up to ``tries`` times and returns None if none matched or ``re`` cannot compile
        the regex (the caller decides whether an unvalidated ``sample`` is good enough).
        """
        compiled = self.compiled()
        if compiled is None:
            return None
        for _ in range(tries):
            drawn = self.sample(rng)
            if compiled.search(drawn.text):
                return drawn
        return None

    def sample(self, rng: np.random.Generator) -> Sample:
        out: list[str] = []
        groups: dict[int, str] = {}
        self._emit(self._parsed, rng, out, groups, self._ignorecase)
        return Sample("".join(out), groups)

    # -- tree walk -------------------------------------------------------------------------
    def _emit(
        self, items, rng, out: list[str], groups: dict[int, str], icase: bool, noise: bool = False
    ) -> None:
        for op, av in items:
            if op is sre_c.LITERAL:
                out.append(chr(av))
            elif op is sre_c.NOT_LITERAL:
                out.append(self._pick([c for c in _FILLER if ord(c) != av], rng))
            elif op is sre_c.ANY:
                # a lone unescaped '.' in a secret rule almost always means a literal dot
                out.append("." if not noise else self._pick(_NOISE, rng))
            elif op is sre_c.IN:
                out.append(self._class_char(av, rng, icase, noise))
            elif op is sre_c.BRANCH:
                alternatives = av[1]
                self._emit(alternatives[int(rng.integers(len(alternatives)))], rng, out, groups, icase)
            elif op is sre_c.SUBPATTERN:
                group, add_flags, del_flags, sub = av
                sub_icase = (icase or bool(add_flags & re.IGNORECASE)) and not (del_flags & re.IGNORECASE)
                start = len(out)
                self._emit(sub, rng, out, groups, sub_icase)
                if group is not None:
                    groups[group] = "".join(out[start:])
            elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, getattr(sre_c, "POSSESSIVE_REPEAT", None)):
                lo, hi, sub = av
                sub_noise = self._is_noise(sub)
                for _ in range(self._count(op, lo, hi, sub_noise, rng)):
                    self._emit(sub, rng, out, groups, icase, sub_noise)
            elif op is sre_c.GROUPREF:
                out.append(groups.get(av, ""))
            elif op is getattr(sre_c, "ATOMIC_GROUP", None):
                self._emit(av, rng, out, groups, icase)
            elif op is sre_c.GROUPREF_EXISTS:
                group, yes, no = av
                branch = yes if groups.get(group) else no
                if branch is not None:
                    self._emit(branch, rng, out, groups, icase)
            elif op in (sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT):
                continue  # anchors and look-arounds produce no text
            elif op is sre_c.CATEGORY:  # pragma: no cover - only appears inside IN
                out.append(self._pick(_CATEGORY_CHARS.get(av, _FILLER), rng))
            else:  # pragma: no cover - an opcode added by a future Python
                raise DataError(f"regex {self.source_pattern!r}: unsupported construct {op}")

    def _count(self, op, lo: int, hi: int, noise: bool, rng: np.random.Generator) -> int:
        if op is sre_c.MIN_REPEAT:
            # lazy: the shortest is the most natural; noise may get one character so that word
            # boundaries around it can be satisfied
            extra = 1 if noise else 0
        else:
            extra = self.noise_extra if noise else self.max_extra
        top = lo + extra if hi == sre_c.MAXREPEAT else min(hi, lo + extra)
        return int(rng.integers(lo, top + 1))

    @staticmethod
    def _is_noise(sub) -> bool:
        if len(sub) != 1:
            return False
        op, av = sub[0]
        if op is sre_c.ANY:
            return True
        if op is sre_c.IN:
            return any(o is sre_c.CATEGORY and a is sre_c.CATEGORY_SPACE for o, a in av) or any(
                o is sre_c.LITERAL and chr(a) in " \t'\"`" for o, a in av
            )
        return False

    @staticmethod
    def _pick(chars, rng: np.random.Generator) -> str:
        return chars[int(rng.integers(len(chars)))]

    def _class_char(self, items, rng: np.random.Generator, icase: bool, noise: bool = False) -> str:
        negate = bool(items) and items[0][0] is sre_c.NEGATE
        members: list[str] = []
        for op, av in items[1:] if negate else items:
            if op is sre_c.LITERAL:
                members.append(chr(av))
            elif op is sre_c.RANGE:
                lo, hi = av
                if negate:
                    lo, hi = max(lo, 32), min(hi, 126)
                # keep wide (unicode) ranges cheap: sample from their first 256 code points
                members.extend(chr(c) for c in range(lo, min(hi, lo + 255) + 1))
            elif op is sre_c.CATEGORY:
                members.extend(_CATEGORY_CHARS.get(av, _FILLER))
        if negate:
            banned = set(members)
            if icase:
                banned |= {c.swapcase() for c in members}
            allowed = [c for c in _PRINTABLE if c not in banned and c.isalnum()] or [
                c for c in _PRINTABLE if c not in banned
            ]
            if not allowed:
                raise DataError(f"regex {self.source_pattern!r}: a negated class excludes every character")
            return self._pick(allowed, rng)
        if noise and " " in members and rng.random() < 0.5:
            return " "  # separators read naturally as spaces
        # prefer printable members (\s -> space, never a tab or newline)
        printable = [c for c in members if c in _PRINTABLE or ord(c) > 127]
        return self._pick(printable or members, rng)


def sample_secrets(pattern: str, n: int, seed: int) -> list[Sample]:
    """``n`` seeded samples of ``pattern`` (a gitleaks/Go regex)."""
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}")
    sampler = RegexSampler(pattern)
    rng = np.random.default_rng(seed)
    return [sampler.sample(rng) for _ in range(n)]
