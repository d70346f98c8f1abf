"""Prompt normalisation, stable ids and the keys deduplication compares.

``normalize_prompt`` turns a source's prompt into the text a router would see: Unicode NFC, one
newline convention, no trailing spaces or surrounding blank lines, and, only where the *source's
evaluation harness* appended it, its scaffolding removed (the trailing ``Answer:`` cue of the MMLU
harness, the ``\\boxed{...}`` instruction LLMRouter adds to MGSM questions). The question and its
options are always kept: a user asking a multiple-choice question writes the options too.
``render_choices`` writes LLMRouter's separately stored options in the same ``A. ...`` layout as
RouteLLM's MMLU prompts, so the two copies of a question normalise to the same text.

Left out: no lower-casing or whitespace collapsing of the stored text (code indentation matters);
those happen only in ``dedup_key``, which is used for comparison and never stored.
"""

from __future__ import annotations

import ast
import hashlib
import re
import unicodedata

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MMLU_CUE = re.compile(r"\n?\s*Answer:\s*$")
_BOXED_CUE = re.compile(r"\s*After careful thought, put you(?:r)? final answer in \\boxed\{\.\.\.\}\.?\s*$")
_WS = re.compile(r"\s+")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def clean_text(text: str) -> str:
    """NFC, ``\\n`` newlines, no trailing spaces on lines, no surrounding blank space."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("\n", text)
    return text.strip()


def strip_mmlu_answer_cue(text: str) -> str:
    """Remove the ``Answer:`` line the MMLU harness appends after the options (options kept)."""
    return _MMLU_CUE.sub("", text)


def strip_boxed_instruction(text: str) -> str:
    """Remove LLMRouter's ``After careful thought, put you final answer in \\boxed{...}.``."""
    return _BOXED_CUE.sub("", text)


def normalize_prompt(text: str, scaffolding: str | None = None) -> str:
    """The stored prompt text. ``scaffolding`` names what the source appended: ``"mmlu"`` (the
    trailing ``Answer:`` cue) or ``"boxed"`` (the MGSM answer-format instruction); None keeps all."""
    text = clean_text(text)
    if scaffolding == "mmlu":
        text = strip_mmlu_answer_cue(text)
    elif scaffolding == "boxed":
        text = strip_boxed_instruction(text)
    elif scaffolding is not None:
        raise ValueError(f"unknown scaffolding kind {scaffolding!r}")
    return text.strip()


def parse_choices(raw: object) -> list[str] | None:
    """Options from LLMRouter's ``choices`` field: a Python-literal list of strings or a dict
    with ``text`` (and ``label``/``labels``). None when the field is absent or holds no options.
    Raises ``ValueError`` if the field is present but unreadable."""
    if raw is None or raw == "" or raw == "None":
        return None
    value = ast.literal_eval(raw) if isinstance(raw, str) else raw
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"choices is not a list of strings: {str(raw)[:80]!r}")
    return list(value) or None


def render_choices(question: str, choices: list[str]) -> str:
    """``question`` followed by ``A. opt`` lines, the layout of RouteLLM's MMLU prompts."""
    if len(choices) > len(_LETTERS):
        raise ValueError(f"{len(choices)} options is more than the {len(_LETTERS)} letters")
    lines = [question.rstrip()] + [f"{_LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices)]
    return "\n".join(lines)


def dedup_key(text: str) -> str:
    """Comparison key for exact duplicates: case-folded, whitespace collapsed."""
    return _WS.sub(" ", text.casefold()).strip()


def text_id(text: str) -> str:
    """Stable row id: first 16 hex digits of the sha256 of the stored (normalised) text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def estimate_tokens(text: str) -> int:
    """Token count estimate used for cost: one token per four characters (at least one).

    Close to BPE tokenisers on English prose and code; an estimate, documented in the card.
    """
    return max(1, round(len(text) / 4))
