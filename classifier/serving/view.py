"""The model view: which tokens of a request each head of the model reads.

A request is tokenised once (``full_text``, no special tokens, no truncation); the rows the model
runs on are cut from those ids as lists of ``(lo, hi)`` token slices, each row then wrapped in
``[CLS] ... [SEP]`` and at most ``window = max_length - 2`` tokens long. Two views:

- **tier and task** (``ModelView.tier``) read the request:

  - ``head``: the first window of ``full_text`` (tierwise before whole requests);
  - ``head_tail``: the first ``head_tokens`` and the last ``window - head_tokens`` tokens of
    ``full_text``;
  - ``last_user``: the head of the last user turn;
  - ``last_user_tail``: the last user turn whole when it fits a window, else its first
    ``head_tokens`` and its last ``window - head_tokens`` tokens (k-shot prompts flattened into one
    user message end with the question);
  - ``last_user_para``: as ``last_user_tail``, but the end read is the longest run of whole
    paragraphs (text after a blank line) that fits ``window - head_tokens`` tokens: a request
    pasted after examples or context in the same message (``...\n\nNow my question: ...``) is then
    read from its first word, not from the middle of the text before it. Where the last paragraph
    alone is longer, its end is read as in ``last_user_tail``. Applies to tokenizers that split at
    whitespace first (BERT's WordPiece; the runtime checks it), where a paragraph's tokens are the
    same read alone or in context;
  - ``windows_mean``: every sensitivity window of ``full_text``, probabilities mean-pooled;

- **sensitivity** (``ModelView.sensitivity``) reads everything that will be sent:

  - ``windows_max``: sliding windows over all of ``full_text`` (``stride = window - overlap``, the
    last one aligned to the end), each sensitive class's probability max-pooled over windows;
  - ``head``: the first window only (what tierwise did before; text past it is unread).

``ModelView.max_windows`` caps the sensitivity windows: past the cap the first
``max_windows - 1`` windows and the last one are read, and the request is flagged ``truncated``
(text that will be sent was not read). ``ModelView.max_chars`` cuts ``full_text`` before
tokenising (it bounds the tokenizer's work); a cut also flags ``truncated``.

What this module leaves out: tokenising, running the model and pooling (``runtime.py``), and the
policy's reaction to the flags (``policy.py``, section ``input``). It imports pydantic and the
standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from classifier.errors import ConfigError, TypedConfig

TIER_VIEWS = ("head", "head_tail", "last_user", "last_user_tail", "last_user_para", "windows_mean")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
PARAGRAPH_SCAN_CHARS_PER_TOKEN = 64  # a tail of N tokens is looked for in the last 64 N characters
SENSITIVITY_VIEWS = ("windows_max", "head")

Segments = tuple[tuple[int, int], ...]  # one model row: token slices of the request's ids


class ModelView(TypedConfig):
    """Which text each head reads (see the module docstring). The defaults are the measured choice
    (``docs/design.md``, "Model view")."""

    model_config = ConfigDict(frozen=True, strict=True)
    _path: ClassVar[str] = "view"

    tier: Literal[TIER_VIEWS] = "last_user_para"
    sensitivity: Literal[SENSITIVITY_VIEWS] = "windows_max"
    head_tokens: int = Field(32, ge=0)
    overlap: int = Field(16, ge=0)
    max_windows: int = Field(160, ge=1)
    max_chars: int = Field(65536, ge=1)

    @classmethod
    def from_dict(cls, data: Any) -> ModelView:
        if data is None or isinstance(data, ModelView):
            return data or cls()
        if not isinstance(data, dict):
            raise ConfigError(f"view must be a mapping of ModelView fields, got {type(data).__name__}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def fitted(self, window: int) -> ModelView:
        """This view for a model window of ``window`` tokens: ``head_tokens`` at most half of it and
        ``overlap`` at most a quarter (tiny test models have windows of a few dozen tokens)."""
        if window < 4:
            raise ConfigError(f"a model window of {window} tokens is too small for the model view (max_length >= 6)")
        return self.model_copy(update={"head_tokens": min(self.head_tokens, window // 2),
                                       "overlap": min(self.overlap, window // 4)})


def sensitivity_windows(n: int, window: int, view: ModelView) -> tuple[list[Segments], bool]:
    """The sensitivity rows of a request of ``n`` tokens, and whether some tokens are unread."""
    if n <= window or view.sensitivity == "head":
        return [((0, min(n, window)),)], n > window
    stride = window - view.overlap
    starts = list(range(0, n - window, stride)) + [n - window]
    unread = False
    if len(starts) > view.max_windows:
        # read the head and the end (where the request is); the middle past the cap is unread
        starts = starts[:view.max_windows - 1] + [n - window]
        unread = True
    return [((s, s + window),) for s in starts], unread


def head_tail(lo: int, hi: int, window: int, head_tokens: int, tail: int | None = None) -> Segments:
    """Tokens ``lo:hi`` whole when they fit, else their first ``head_tokens`` and their last
    ``tail`` (default: the rest of the window)."""
    if hi - lo <= window:
        return ((lo, hi),)
    if tail is None or not 0 < tail <= window - head_tokens:
        tail = window - head_tokens
    return ((lo, lo + head_tokens), (hi - tail, hi))


def paragraph_tail(text: str, count: Callable[[str], int], budget: int) -> int | None:
    """Tokens of the longest suffix of ``text`` that starts a paragraph (follows a blank line) and
    has at most ``budget`` tokens; None when there is none (the last paragraph alone is longer, or
    no blank line in the last ``PARAGRAPH_SCAN_CHARS_PER_TOKEN * budget`` characters).

    ``count`` gives a text's token count; the suffix's count is the sum of its paragraphs' (exact
    for tokenizers that split at whitespace first)."""
    if budget <= 0:
        return None
    start = max(0, len(text) - PARAGRAPH_SCAN_CHARS_PER_TOKEN * budget)
    starts = [m.end() for m in _PARAGRAPH.finditer(text, start)]
    best, total, end = None, 0, len(text)
    for s in reversed(starts):
        total += count(text[s:end])
        if total > budget:
            break
        if total > 0:
            best = total
        end = s
    return best


def tier_rows(view: ModelView, n: int, request: tuple[int, int], window: int,
              windows: list[Segments], para_tail: int | None = None) -> list[Segments]:
    """The tier/task rows of a request of ``n`` tokens whose request turn is tokens ``request``
    (``para_tail``: the ``paragraph_tail`` of the request turn, read by ``last_user_para``)."""
    kind = view.tier
    if kind == "windows_mean":
        return windows
    if kind == "head":
        return [((0, min(n, window)),)]
    if kind == "head_tail":
        return [head_tail(0, n, window, view.head_tokens)]
    a, b = request
    if b <= a:  # the request turn holds no tokens (e.g. cut away): read the end of the text
        a, b = max(0, n - window), n
    if kind == "last_user":
        return [((a, min(b, a + window)),)]
    return [head_tail(a, b, window, view.head_tokens, para_tail if kind == "last_user_para" else None)]
