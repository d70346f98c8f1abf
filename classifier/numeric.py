"""Numbers over arrays that every layer needs, serving included (numpy only): the one softmax.

Left out: anything model- or metric-specific (``classifier.evaluation.metrics``, ``calibration``).
"""

from __future__ import annotations

import numpy as np


def softmax(logits, temperature: float = 1.0, bias: np.ndarray | None = None) -> np.ndarray:
    """``softmax(logits / temperature + bias)`` over the last axis, in float64; the input is left alone."""
    z = np.array(logits, dtype=np.float64)  # a copy: the steps below work in place
    if temperature != 1.0:
        z /= temperature
    if bias is not None:
        z += bias  # [C] broadcast over rows
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z
