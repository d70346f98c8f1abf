"""Drift and report statistics on a Ray cluster, as partial aggregates merged on the driver.

Every statistic here is a sum: a block of rows becomes a small partial (counts, histograms,
confusion counts, per-slice counts) on a worker, and the driver adds the partials up. The driver
therefore holds a few kilobytes per block, never the rows, whatever the size of the log.

- :func:`drift_side`: one side of ``tierwise drift --engine ray``: a decision log (JSONL/Parquet
  file or directory) or a prompt log routed by one ``Router`` per actor, normalised per block as
  ``drift._normalise`` does, summed into a ``drift.DriftSummary``; the threshold proposal's scores
  stay on the cluster (:class:`RayScores`: counts below a threshold and exact order statistics
  by histogram refinement).
- :func:`report_stats`: the report's aggregate statistics (see ``report_stats`` and
  ``classifier.evaluation.report_stats``) over a labelled prompt file or directory.

What it leaves out: the comparison and the report's wording (``classifier.evaluation``) and Ray
setup (``engine``).
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import DataError

logger = logging.getLogger(__name__)

SCORE_BINS = 1 << 14  # first pass of the order-statistic search; the chosen bin is then read exactly


# -- drift -----------------------------------------------------------------------------------------
def _first_record(path: str | Path, split: str | None) -> dict[str, Any] | None:
    """The first (non-blank, in-split) record of the first file: decides decisions vs prompts."""
    from classifier.scale.io import decode_record, input_files

    for f in input_files(path):
        if f.rsplit(".", 1)[-1].lower() in ("parquet", "pq"):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
                for rec in batch.to_pylist():
                    if split is None or rec.get("split") == split:
                        return decode_record(json.dumps(rec, default=str).encode())[0]
            continue
        with open(f, "rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                rec, _ = decode_record(raw)
                if rec is not None and (split is None or rec.get("split") == split):
                    return rec
    return None


def _normalised_columns(prob_columns: list[str]) -> list[str]:
    from classifier.evaluation.drift import FLAG_NAMES

    return ["tier", *[f"flag_{f}" for f in FLAG_NAMES], "length", *prob_columns]


def normalise_decision_block(batch: Any, *, source: str, columns: list[str]) -> pd.DataFrame:
    """Decision records (``raw`` JSON) -> drift's normalised frame with a fixed set of columns."""
    from classifier.evaluation.drift import _normalise
    from classifier.scale.io import decode_record

    records = []
    for line, raw in zip(batch.column("line").to_pylist(), batch.column("raw").to_pylist(), strict=True):
        rec, error = decode_record(raw)
        if rec is None:
            raise DataError(f"{source} line {line}: {error}; each line must be one JSON object (a decision)")
        records.append(rec)
    if not records:
        return pd.DataFrame({c: [] for c in columns})
    frame, thresholds = _normalise(records, source)
    frame = frame.reindex(columns=columns)
    frame["thresholds"] = json.dumps(thresholds) if thresholds else ""
    return frame


def normalise_routed_block(batch: Any, *, columns: list[str]) -> pd.DataFrame:
    """Decisions from ``route.RouteActor`` -> drift's normalised frame."""
    from classifier.evaluation.drift import BLOCKED, FLAG_NAMES

    blocked = np.asarray(batch.column("blocked").to_pylist(), dtype=bool)
    tiers = batch.column("tier").to_pylist()
    flags = batch.column("flags").to_pylist()
    out: dict[str, Any] = {"tier": [BLOCKED if b else t for b, t in zip(blocked, tiers, strict=True)]}
    for f in FLAG_NAMES:
        out[f"flag_{f}"] = [f in fl or (f == BLOCKED and b) for fl, b in zip(flags, blocked, strict=True)]
    out["length"] = batch.column("length").to_pylist()
    for c in columns:
        if c.startswith("p::"):
            out[c] = batch.column(c).to_numpy(zero_copy_only=False).astype(float)
    frame = pd.DataFrame(out).reindex(columns=columns)
    thresholds = batch.column("thresholds").to_pylist()
    frame["thresholds"] = thresholds[0] if thresholds else ""
    return frame


def summarise_block(frame: pd.DataFrame, *, source: str, kind: str) -> pd.DataFrame:
    """One pickled ``DriftSummary`` of a normalised block (a one-row frame)."""
    from classifier.evaluation.drift import DriftSummary

    thresholds = {}
    if "thresholds" in frame.columns and len(frame) and frame["thresholds"].iloc[0]:
        thresholds = json.loads(frame["thresholds"].iloc[0])
    summary = DriftSummary.from_frame(frame.drop(columns=["thresholds"], errors="ignore"), source, kind, thresholds)
    return pd.DataFrame({"summary": [pickle.dumps(summary)]})


def _merge_summaries(ds: Any, source: str, kind: str) -> Any:
    from classifier.evaluation.drift import DriftSummary

    total = DriftSummary(source=source, kind=kind)
    parts = ds.map_batches(summarise_block, batch_format="pandas", batch_size=None,
                           fn_kwargs={"source": source, "kind": kind})
    for part in unpickled(parts, "summary"):
        total.merge(part)
    return total


def unpickled(parts: Any, column: str) -> Iterator[Any]:
    """The pickled per-block results in ``column`` of ``parts``, one row at a time: a block's
    summary can hold megabytes (2^16-bin histograms), and reading them 64 to a batch took the
    report driver to 896 MB over 1M prompts."""
    for batch in parts.iter_batches(batch_format="pandas", batch_size=1):
        for blob in batch[column]:
            yield pickle.loads(blob)  # noqa: S301 - our own workers' output


class RayScores:
    """One score column of a materialised Ray Dataset, read by aggregation (see ``drift.ArrayScores``)."""

    def __init__(self, ds: Any, column: str) -> None:
        self.ds, self.column = ds, column
        self.size = int(self._sum(_count_finite, {}))

    def _sum(self, fn: Any, kwargs: dict[str, Any]) -> np.ndarray:
        parts = self.ds.map_batches(fn, batch_format="pandas", batch_size=None,
                                    fn_kwargs={"column": self.column, **kwargs})
        total: np.ndarray | int = 0
        for value in unpickled(parts, "value"):
            total = total + value
        return np.asarray(total)

    def _collect(self, b: int) -> np.ndarray:
        parts = self.ds.map_batches(_bin_values, batch_format="pandas", batch_size=None,
                                    fn_kwargs={"column": self.column, "b": b})
        chunks = list(unpickled(parts, "value"))
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def share_below(self, t: float) -> float:
        return float(self._sum(_count_below, {"t": float(t)})) / self.size if self.size else float("nan")

    def kth(self, k: int) -> float:
        """The exact k-th smallest finite score (0-based): bin counts, then the one bin's values."""
        if not 0 <= k < self.size:
            raise IndexError(f"k={k} outside 0..{self.size - 1}")
        counts = self._sum(_bin_counts, {})
        cum = np.cumsum(counts)
        b = int(np.searchsorted(cum, k, side="right"))
        before = int(cum[b - 1]) if b else 0
        values = np.sort(self._collect(b))
        return float(values[k - before])


def _finite(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.zeros(0)
    v = frame[column].to_numpy(dtype=float)
    return v[np.isfinite(v)]


def _one(value: Any) -> pd.DataFrame:
    return pd.DataFrame({"value": [pickle.dumps(value)]})


def _bins(v: np.ndarray) -> np.ndarray:
    return np.minimum((np.clip(v, 0.0, 1.0) * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)


def _count_finite(frame: pd.DataFrame, *, column: str) -> pd.DataFrame:
    return _one(int(_finite(frame, column).size))


def _count_below(frame: pd.DataFrame, *, column: str, t: float) -> pd.DataFrame:
    return _one(int((_finite(frame, column) < t).sum()))


def _bin_counts(frame: pd.DataFrame, *, column: str) -> pd.DataFrame:
    return _one(np.bincount(_bins(_finite(frame, column)), minlength=SCORE_BINS))


def _bin_values(frame: pd.DataFrame, *, column: str, b: int) -> pd.DataFrame:
    v = _finite(frame, column)
    return _one(np.sort(v[_bins(v) == b]))


def drift_side(path: str | Path, *, split: str | None = None, bundle: str | None = None, policy: Any = None,
               threads: int = 1, actors: int | None = None) -> Any:
    """One side of the drift comparison as a ``DriftSummary`` aggregated on the cluster."""
    import ray

    from classifier.evaluation.drift import _is_decision
    from classifier.scale.engine import actor_count
    from classifier.scale.io import IO_CONCURRENCY, read_records
    from classifier.scale.route import DRIFT_CHUNK, route_dataset

    source = str(path)
    first = _first_record(path, split)
    if first is None:
        raise DataError(f"{path}: no records" + (f" with split == {split!r}" if split else ""))
    records = read_records([path], align=DRIFT_CHUNK, block_records=DRIFT_CHUNK * 16, split=split, skip_blank=True)
    if _is_decision(first):
        kind = "decisions"
        probs = first.get("probabilities") or {}
        columns = _normalised_columns([f"p::{h}::{c}" for h, dist in probs.items() if isinstance(dist, dict)
                                       for c in dist])
        norm = records.map_batches(normalise_decision_block, batch_format="pyarrow", batch_size=None,
                                   fn_kwargs={"source": source, "columns": columns})
    else:
        if bundle is None:
            from classifier.errors import ConfigError

            raise ConfigError(f"{path} holds prompts, not decisions: pass --bundle to route them")
        from classifier.serving.runtime import Router

        kind = "prompts"
        with Router.load(bundle, threads=threads, policy=policy) as router:
            columns = _normalised_columns([f"p::{h}::{c}" for h in router.head_names
                                           for c in router.schema.head(h).classes])
        routed = route_dataset(records, bundle, actors=actor_count(ray, threads, actors), threads=threads,
                               policy=None if policy is None else str(policy), mode="prompts",
                               group_size=DRIFT_CHUNK)
        # 0 CPUs, as in report.py: the routing actors hold every CPU
        norm = routed.map_batches(normalise_routed_block, batch_format="pyarrow", batch_size=None,
                                  num_cpus=0, concurrency=IO_CONCURRENCY, fn_kwargs={"columns": columns})
    norm = norm.materialize()  # in the object store (spilled to disk when large), not on the driver
    summary = _merge_summaries(norm, source, kind)
    if summary.n == 0:
        raise DataError(f"{path}: no records" + (f" with split == {split!r}" if split else ""))
    summary.score_source = lambda column: RayScores(norm, column)
    return summary
