"""Row-level validation of labelled data against a label schema.

This module decides whether one record (already decoded, parsed and renamed to our column names)
can train the classifier, and if not, says why and how to fix it. It defines the record of a bad
row (``RejectedRow``), the kinds of problem (``REJECT_KINDS``), writing the rejects file, and the
counts a summary needs.

It leaves out everything about files: formats, byte decoding, JSON/CSV parsing, column mapping and
row numbering live in ``classifier.data.loading``, which turns decode and parse failures into
``Problem``s with the helpers here so that every bad row is reported the same way. It does not
derive labels (the builder's job) or split data.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from classifier.data.schema import Head, LabelSchema

# Stable problem codes (the ``kind`` of a RejectedRow) -> the default hint on how to fix it.
REJECT_KINDS: dict[str, str] = {
    "malformed_json": "make the line one JSON object, e.g. {\"text\": \"...\", \"tier\": \"cheap\"}",
    "malformed_csv": "quote fields that contain commas, quotes or newlines (RFC 4180) so every "
    "record has as many fields as the header",
    "invalid_utf8": "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix the bytes "
    "on that row",
    "missing_text": "give the row a non-empty 'text' string, or map your prompt column with "
    "--columns text=<column>",
    "empty_text": "drop the row or fill in the prompt text",
    "text_too_long": "shorten the prompt or raise max_chars (--max-chars)",
    "wrong_type": "use a string for text and a class-name string (or null) for each label",
    "unknown_label": "use one of the head's classes, or null if the row has no label for that head",
    "bad_soft_target": "give one probability per class, in class order, each in [0, 1], summing "
    "to 1 (or null for no soft target)",
    "no_labels": "give the row a label for at least one head; a row with no labels trains nothing",
}

# Soft targets are often stored as float32; allow rounding but catch real mistakes.
SOFT_SUM_TOLERANCE = 1e-3

ROW_UNITS: dict[str, str] = {
    "line": "1-based line number",
    "record": "1-based data record number, header excluded",
    "index": "0-based row index",
}


@dataclass(frozen=True)
class Problem:
    """What is wrong with one row: a kind from ``REJECT_KINDS``, the field at fault, a message."""

    kind: str
    field: str | None
    reason: str
    hint: str = ""

    def __post_init__(self) -> None:
        if self.kind not in REJECT_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")  # programming error
        if not self.hint:
            object.__setattr__(self, "hint", REJECT_KINDS[self.kind])


@dataclass(frozen=True)
class RejectedRow:
    """One row that was not loaded.

    ``row`` is a 1-based line number for JSON lines, the 1-based data record number for CSV
    (header excluded, blank lines not counted; the reason names the physical line), and the
    0-based row index for Parquet and Hugging Face datasets; ``unit`` says which. ``raw`` is the
    row as read (the parsed object, the CSV record as a dict, or the undecodable line as text).
    """

    file: str
    row: int
    field: str | None
    reason: str
    raw: Any
    kind: str = ""
    hint: str = ""
    unit: str = "line"

    def __str__(self) -> str:
        hint = f" Fix: {self.hint}." if self.hint else ""
        return f"{self.file}:{self.row}: {self.reason}.{hint}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_problem(
        cls, problem: Problem, *, file: str, row: int, raw: Any, unit: str,
        others: Sequence[Problem] = (),
    ) -> RejectedRow:
        reason = problem.reason
        if others:
            reason += "; also: " + "; ".join(p.reason for p in others)
        return cls(
            file=file, row=row, field=problem.field, reason=reason, raw=raw,
            kind=problem.kind, hint=problem.hint, unit=unit,
        )


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _close_class(head: Head, label: str) -> str | None:
    wanted = label.strip().lower()
    for c in head.classes:
        if c.lower() == wanted:
            return c
    return None


class RowValidator:
    """Checks records against a schema and returns the clean row or the problems found.

    ``check(record)`` expects a mapping keyed by our column names (``text``, each ``Head.column``,
    optional ``<column>_soft``, anything else is passed through unchanged). A key that is absent
    and a null value both mean "no value". ``empty_label_is_null`` treats ``""`` as a null label
    (CSV cannot tell an empty field from a missing one).
    """

    def __init__(
        self, schema: LabelSchema, *, max_chars: int, empty_label_is_null: bool = False
    ) -> None:
        self.schema = schema
        self.max_chars = max_chars
        self.empty_label_is_null = empty_label_is_null

    def check(self, record: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[Problem]]:
        problems: list[Problem] = []
        text_problem = self._check_text(record.get("text"), "text" in record)
        if text_problem is not None:
            problems.append(text_problem)
        n_labels = n_bad_labels = 0
        out: dict[str, Any] = dict(record)
        for head in self.schema.heads:
            label, problem = self._check_label(head, record.get(head.column))
            out[head.column] = label
            if problem is not None:
                problems.append(problem)
                n_bad_labels += 1
            elif label is not None:
                n_labels += 1
            soft_col = f"{head.column}_soft"
            if soft_col in record:
                soft, problem = self._check_soft(head, soft_col, record[soft_col])
                out[soft_col] = soft
                if problem is not None:
                    problems.append(problem)
        # A bad label is already reported; "no labels" is for rows whose labels are all null.
        if n_labels == 0 and n_bad_labels == 0:
            columns = [h.column for h in self.schema.heads]
            problems.append(Problem(
                "no_labels", None, f"row has no label for any head (all of {columns} are null)"
            ))
        if problems:
            return None, problems
        return out, []

    def _check_text(self, text: Any, present: bool) -> Problem | None:
        if not present:
            return Problem("missing_text", "text", "missing 'text' field")
        if _is_null(text):
            return Problem("missing_text", "text", "'text' is null")
        if not isinstance(text, str):
            return Problem(
                "wrong_type", "text", f"'text' must be a string, got {_type_name(text)}",
                hint="store the prompt as a string",
            )
        if not text.strip():
            return Problem("empty_text", "text", "'text' is empty or whitespace only")
        if len(text) > self.max_chars:
            return Problem(
                "text_too_long", "text",
                f"'text' has {len(text)} characters, over max_chars={self.max_chars}",
            )
        return None

    def _check_label(self, head: Head, value: Any) -> tuple[str | None, Problem | None]:
        if _is_null(value):
            return None, None
        col = head.column
        if isinstance(value, str):
            if value == "" and self.empty_label_is_null:
                return None, None
            if value in head.classes:
                return value, None
            close = _close_class(head, value)
            hint = (
                f"did you mean {close!r}? labels are case- and space-sensitive"
                if close else f"use one of {list(head.classes)}, or null for no label"
            )
            return None, Problem(
                "unknown_label", col,
                f"unknown label {value!r} for head {head.name!r} (column {col!r}); "
                f"allowed: {list(head.classes)}",
                hint=hint,
            )
        return None, Problem(
            "wrong_type", col,
            f"label in column {col!r} (head {head.name!r}) must be a class name string, got "
            f"{_type_name(value)} {value!r}",
            hint=f"write the class name, one of {list(head.classes)}, or null for no label",
        )

    def _check_soft(
        self, head: Head, col: str, value: Any
    ) -> tuple[list[float] | None, Problem | None]:
        if _is_null(value):
            return None, None
        n = head.num_classes
        if isinstance(value, str):
            # CSV has no list type: soft targets are written as a JSON list, "[0.2, 0.8]".
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, RecursionError):
                return None, Problem(
                    "bad_soft_target", col,
                    f"soft target in {col!r} is not a JSON list of {n} numbers: {value!r}",
                )
        if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
            value = value.tolist()  # numpy / arrow arrays
        if not isinstance(value, (list, tuple)):
            return None, Problem(
                "bad_soft_target", col,
                f"soft target in {col!r} must be a list of {n} numbers, got {_type_name(value)}",
            )
        if len(value) != n:
            return None, Problem(
                "bad_soft_target", col,
                f"soft target in {col!r} has {len(value)} values; head {head.name!r} has {n} "
                f"classes {list(head.classes)}",
            )
        probs: list[float] = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 0.0 <= v <= 1.0:
                return None, Problem(
                    "bad_soft_target", col,
                    f"soft target in {col!r} holds {v!r}; each value must be a number in [0, 1]",
                )
            probs.append(float(v))
        total = math.fsum(probs)
        if abs(total - 1.0) > SOFT_SUM_TOLERANCE:
            return None, Problem(
                "bad_soft_target", col,
                f"soft target in {col!r} sums to {total:.6g}, not 1",
            )
        return probs, None


def reject_counts(rejects: Iterable[RejectedRow]) -> dict[str, int]:
    """Number of rejected rows per problem kind, most frequent first."""
    return dict(Counter(r.kind for r in rejects).most_common())


def label_counts(frame: Any, schema: LabelSchema) -> dict[str, dict[str, int]]:
    """Per head: count of each class (in schema order) and of nulls (key ``None``) in ``frame``."""
    out: dict[str, dict[str, int]] = {}
    for head in schema.heads:
        counts: dict[str, int] = dict.fromkeys(head.classes, 0)
        n_null = 0
        if head.column in frame.columns:
            for value in frame[head.column]:
                if _is_null(value):
                    n_null += 1
                else:
                    counts[value] = counts.get(value, 0) + 1
        else:
            n_null = len(frame)
        counts_with_null: dict[Any, int] = dict(counts)
        counts_with_null[None] = n_null
        out[head.name] = counts_with_null
    return out


def write_rejects(path: str | Path, rejects: Sequence[RejectedRow]) -> Path:
    """Write one JSON object per rejected row; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # backslashreplace: a raw value may still hold undecodable bytes; the file stays valid UTF-8.
    with tmp.open("w", encoding="utf-8", errors="backslashreplace") as fh:
        for rej in rejects:
            fh.write(json.dumps(rej.to_dict(), ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
    return path
