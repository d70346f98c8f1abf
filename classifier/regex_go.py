"""Go/RE2 regex syntax -> Python ``re`` syntax, for gitleaks rules.

Shared by the data builder (``classifier.data.secrets_gen`` samples secrets from the rules) and the
serving detectors (``classifier.serving.detectors`` matches them), so both read a rule the same way.
Standard library only.

Left out: RE2 constructs Python reads the same way need nothing; constructs Python lacks other than
the three handled here (mid-pattern inline flags, ``\\z``, POSIX classes) are left as they are and
make ``re.compile`` fail, which callers report.
"""

from __future__ import annotations

import re

from classifier.errors import DataError

_POSIX = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "digit": "0-9", "lower": "a-z", "upper": "A-Z",
    "xdigit": "0-9A-Fa-f", "space": r"\s", "word": r"\w", "punct": r"!-/:-@\[-`{-~",
}
_INLINE_FLAGS = re.compile(r"\(\?([a-zA-Z]*(?:-[a-zA-Z]+)?)\)")


def go_to_python_regex(pattern: str) -> str:
    """Translate a Go/RE2 regex into one Python's ``re`` accepts with the same meaning.

    - ``(?i)`` (or any inline flag group) after the start applies to the rest of its enclosing
      group in Go; Python only accepts global flags at the very start, so it becomes a scoped
      group ``(?i:...)`` closed where the enclosing group closes.
    - ``\\z`` (end of text) is ``\\Z`` in Python.
    - POSIX classes inside brackets (``[[:alnum:]]``) become explicit ranges.
    """
    for name, ranges in _POSIX.items():
        pattern = pattern.replace(f"[:{name}:]", ranges)
    pattern = pattern.replace(r"\z", r"\Z")
    out: list[str] = []
    # stack of open groups; each entry counts scoped-flag groups opened inside it
    stack: list[int] = [0]
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
            else:
                out.append("[")
                i += 1
            if i < n and pattern[i] == "]":  # a literal ']' first in a class
                out.append("]")
                i += 1
            continue
        m = _INLINE_FLAGS.match(pattern, i)
        if m and c == "(":
            if not out and len(stack) == 1:
                out.append(m.group(0))  # a global flag at the very start is fine
            else:
                out.append(f"(?{m.group(1)}:")
                stack[-1] += 1
            i = m.end()
            continue
        if c == "(":
            stack.append(0)
            out.append(c)
        elif c == ")":
            out.append(")" * stack.pop())
            out.append(")")
            if not stack:
                raise DataError(f"unbalanced ')' in regex {pattern!r}")
        else:
            out.append(c)
        i += 1
    out.append(")" * stack.pop())
    return "".join(out)
