"""Label encoding: a head's label column -> class indices, one encoder for every command.

The trainer, the baselines, calibration and the reports all turn ``frame[head.column]`` into class
indices through ``label_indices``, so an unknown label fails the same way everywhere. It lives
with the schema because it needs nothing but the schema's class order. What it leaves out: soft
targets (``<column>_soft``, read by the training dataset) and metrics (``classifier.evaluation``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from classifier.data.schema import Head
from classifier.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["label_indices"]


def label_indices(head: Head, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, y)``: which rows of ``frame`` carry a label for ``head``, and their class indices.

    ``mask`` is a boolean array over all rows; ``y`` (int64) has one entry per ``True`` in it.
    A missing column means no row is labelled. An unknown label raises ``SchemaError`` naming
    the head, the row and the expected classes.
    """
    if head.column not in frame.columns:
        return np.zeros(len(frame), dtype=bool), np.zeros(0, dtype=np.int64)
    col = frame[head.column]
    mask = col.notna().to_numpy()
    lookup = {c: i for i, c in enumerate(head.classes)}
    labels = col[mask]
    y = labels.map(lookup)
    if y.isna().any():
        bad_pos = int(np.flatnonzero(y.isna().to_numpy())[0])
        row = labels.index[bad_pos]
        row_id = frame.loc[row, "id"] if "id" in frame.columns else row
        bad = sorted({str(v) for v in labels[y.isna()].unique()})
        raise SchemaError(
            f"column {head.column!r} (head {head.name!r}) has labels {bad} that are not in the "
            f"schema classes {list(head.classes)} (first at row {row_id!r}); fix the data or the schema"
        )
    return mask, y.to_numpy(dtype=np.int64)
