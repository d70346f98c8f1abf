"""Small helpers shared by the report (``report.py``), its renderer (``report_render.py``) and
drift monitoring (``drift.py``): the one number formatter every sentence and table uses, and the
prompt-length buckets both reports slice by.

They live here, below all three, so that none of them imports another's private helpers. Nothing
here knows about bundles, policies or the report's layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["LENGTH_EDGES", "LENGTH_LABELS", "finite", "length_bucket", "pct"]

# prompt length buckets, in characters (what every router sees, whatever its tokenizer)
LENGTH_EDGES = (200, 1000, 4000)
LENGTH_LABELS = ("<200 chars", "200-999 chars", "1000-3999 chars", ">=4000 chars")


def length_bucket(texts: Sequence[Any]) -> list[str]:
    """The length bucket label of each text (``LENGTH_LABELS``; ``"unknown"`` for non-strings)."""
    out = []
    for t in texts:
        if not isinstance(t, str):
            out.append("unknown")
            continue
        out.append(LENGTH_LABELS[int(np.searchsorted(LENGTH_EDGES, len(t), side="right"))])
    return out


def finite(x: Any) -> float | None:
    """A finite float or None (booleans are not numbers here)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def pct(x: Any, digits: int = 1) -> str:
    """``0.041 -> "4.1%"``; ``-`` for missing values. The one formatter every sentence uses."""
    v = finite(x)
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def template_environment(autoescape: bool) -> Any:
    """The Jinja environment of the report's package templates (``classifier/evaluation/templates``):
    strict about undefined names, blocks trimmed; callers add their own filters."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("classifier.evaluation", "templates"),
                              autoescape=autoescape, trim_blocks=True, lstrip_blocks=True,
                              undefined=jinja2.StrictUndefined)
