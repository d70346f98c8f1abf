"""``tierwise adapt --engine ray``: the feature extraction of ``adapt`` on a Ray cluster.

The expensive part of ``adapt`` is running the bundle's ONNX graph over every row
(``BundleFeaturizer.transform``: the frozen feature tensor and the base logits). Here the driver
tokenizes and forms the ONNX batches exactly as the in-process path does
(``BundleFeaturizer.plan``: sorted by length, ``batch_size`` rows each); each batch is then one
Ray Data row, mapped through an actor pool in which every actor loads the bundle once (a verified
``BundleFeaturizer``) and runs :meth:`BundleFeaturizer.run_batch`. Since every batch has the same
rows and padded shape as in process, the features are the same to the last bit (with the same
``--threads``), and so is the fitted head.

The results come back to the driver as arrays (``np.save`` bytes per batch), because the fit stays
there: the head's cross-validation, PCA and cluster prior need every row in one place. At adapt
sizes that fits: 10k rows x 384 float32 features are 15 MB, 1M rows 1.5 GB (plus the same again
as float64 inside the fit); the token ids sent out are 4 bytes a token (int32), at most
``max_length`` tokens a row.

What it leaves out: the fit, calibration, gate and bundle writing (``classifier.training.adapt``,
on the driver), and tokenizing on the cluster (fast next to the ONNX graph, and the batches must
be formed from every row's length at once).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _from_bytes(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


class FeatureActor:
    """One ``BundleFeaturizer`` for the life of the actor; called on one ONNX batch at a time."""

    def __init__(self, bundle: str, threads: int = 1) -> None:
        from classifier.training.adapt import BundleFeaturizer

        self.featurizer = BundleFeaturizer(bundle, threads=threads)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        out: dict[str, list[Any]] = {"batch": [], "features": [], "logits": []}
        for k, ids, lengths in zip(*(batch.column(c).to_pylist() for c in ("batch", "ids", "lengths")), strict=True):
            flat, sizes = np.frombuffer(ids, np.int32), np.frombuffer(lengths, np.int32)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            tokens = [flat[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            features, logits = self.featurizer.run_batch(tokens)
            out["batch"].append(k)
            out["features"].append(_to_bytes(features))
            out["logits"].append([_to_bytes(x) for x in logits])
        return pa.table({"batch": pa.array(out["batch"], pa.int64()), "features": pa.array(out["features"], pa.binary()),
                         "logits": pa.array(out["logits"], pa.list_(pa.binary()))})


def batch_items(tokens: list[list[list[int]]]) -> list[dict[str, Any]]:
    """One Ray Data row per ONNX batch: its number and its token rows (int32 ids and lengths)."""
    return [{"batch": k, "ids": np.concatenate([np.asarray(r, np.int32) for r in rows]).tobytes(),
             "lengths": np.asarray([len(r) for r in rows], np.int32).tobytes()} for k, rows in enumerate(tokens)]


def batch_results(table: Any) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
    """``FeatureActor`` output -> {batch number: (features, [logits of each head])}."""
    return {k: (_from_bytes(f), [_from_bytes(x) for x in logits]) for k, f, logits in
            zip(*(table.column(c).to_pylist() for c in ("batch", "features", "logits")), strict=True)}


def ray_feature_batches(bundle: str | Path, *, actors: int, threads: int = 1) -> Callable[..., Any]:
    """A ``run_batches`` for ``BundleFeaturizer.transform`` / ``adapt_bundle`` that runs the
    batches on the connected Ray cluster, ``actors`` actors of ``threads`` ONNX Runtime threads.
    The bundle path must be readable by every worker (a relative one is made absolute here)."""
    bundle = Path(bundle).resolve()

    def run(tokens: list[list[list[int]]], progress: bool) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        import ray.data

        items = batch_items(tokens)
        if not items:
            return []
        ray.data.DataContext.get_current().enable_progress_bars = progress
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors))
        done = ds.map_batches(FeatureActor, fn_constructor_kwargs={"bundle": str(bundle), "threads": threads},
                              batch_size=1, batch_format="pyarrow", num_cpus=threads,
                              compute=ray.data.ActorPoolStrategy(size=actors))
        results: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        for batch in done.iter_batches(batch_format="pyarrow", batch_size=None):
            results.update(batch_results(batch))
        return [results[k] for k in range(len(items))]

    return run
