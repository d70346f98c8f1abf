"""The one reader of the built data set, and the one sampling rule of ``--limit --seed``.

``read_dataset`` loads ``dataset.parquet`` (a build directory or the file; columns per
docs/design.md) and ``select_split`` takes one split, optionally a seeded subsample. Every command
that reads the built data set (train, distil, tune, baseline, calibrate, cascade, report, drift)
goes through these two, so the same ``--limit``/``--seed`` (``max_*_rows``/``seed``) picks the
same rows in every command. Left out: building and validating the data (``builder``,
``validation``) and anything torch needs (``classifier.training.dataset``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.errors import DataError

REQUIRED_COLUMNS = ("text", "split")


def dataset_file(path: str | Path) -> Path:
    """The parquet file of ``path`` (a build directory or the file); DataError when it is missing."""
    path = Path(path)
    file = path / "dataset.parquet" if path.suffix != ".parquet" else path
    if not file.is_file():
        raise DataError(f"data set {file} does not exist; build it with 'tierwise data build' or pass --data")
    return file


def read_dataset(path: str | Path, *, require_text: bool = False):
    """The data set as a DataFrame. ``require_text`` refuses rows whose ``text`` is not a string
    (training needs every prompt; the evaluation commands leave such rows out themselves)."""
    import pandas as pd

    file = dataset_file(path)
    try:
        frame = pd.read_parquet(file)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {file} as parquet: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{file}: missing required columns {missing} (see docs/design.md, data set)")
    if require_text:
        bad = frame["text"].isna() | ~frame["text"].map(lambda t: isinstance(t, str))
        if bad.any():
            row = frame.loc[bad].index[0]
            row_id = frame.loc[row, "id"] if "id" in frame.columns else row
            raise DataError(f"{file}: {int(bad.sum())} rows have no text (first: row {row_id!r}); drop or fix them")
    return frame


def select_split(frame, split: str | None, limit: int | None = None, seed: int = 0):
    """Rows of ``split`` (all rows when None; index reset), a seeded subsample of ``limit`` when given.

    The rule: draw ``limit`` row positions without replacement from ``numpy.random.default_rng(seed)``
    and keep them in the data set's order, so a given (split, limit, seed) is the same rows in
    the same order for every command.
    """
    part = frame if split is None else frame[frame["split"] == split]
    if limit is not None and len(part) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(part), size=limit, replace=False))
        part = part.iloc[keep]
    return part.reset_index(drop=True)
