"""Turning report and metric structures into plain JSON: numpy to Python, NaN/inf to null.

Shared by the baseline, calibration, report and drift outputs. It converts; it never writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data: mappings (keys as str), lists for tuples and arrays, Python numbers for
    numpy scalars, ``None`` for NaN and infinities (strict parsers reject them). Anything else is
    returned as it is."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
