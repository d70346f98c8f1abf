"""A readable prior per kind of request: clusters of prompts with a cheap-success Beta posterior.

``ClusterPrior`` groups prompts by k-means on L2-normalised feature vectors (the student's or
teacher's pooled features, or TF-IDF + SVD for the text-only baseline) and keeps, per cluster, the
cheap tier's success rate as a Beta posterior ``Beta(a0 + successes, b0 + failures)``, where
``(a0, b0)`` put ``prior_strength`` pseudo-prompts at the global rate. ``update`` adds outcomes
(weights allowed: inverse propensities, graded scores as fractional successes), so the prior
learns from a team's feedback without refitting the clusters. Clusters are named by their most
typical prompts (closest to the centroid) and their majority task class, so policy owners read
"cheap succeeds 85% on <examples>, n = 1,240".

``frontier_logit(features)`` is ``log((1 - m) / m)`` with ``m`` the posterior mean of the
prompt's cluster: the prior that ``classifier.training.adapt`` combines with a learned
within-cluster residual. ``onnx_nodes`` writes the same lookup (normalise, nearest centroid by
cosine, gather) as ONNX nodes for the served graph.

Left out: choosing the number of clusters automatically, and any text featurisation (callers pass
features).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from classifier.errors import DataError, TypedConfig

logger = logging.getLogger(__name__)

__all__ = ["ClusterPrior", "ClusterPriorConfig", "describe_cluster"]

_EPS = 1e-6


class ClusterPriorConfig(TypedConfig):
    """``n_clusters`` (capped at rows / ``min_cluster_rows``), Beta pseudo-count ``prior_strength``."""

    n_clusters: int = Field(32, ge=1)
    prior_strength: float = Field(4.0, gt=0.0)
    min_cluster_rows: int = Field(10, ge=1)
    n_examples: int = 3
    seed: int = 0


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"cluster features must be a [n, dim] matrix, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_cluster(entry: dict[str, Any]) -> str:
    """One line for policy owners: ``cheap succeeds 85% on <name>, n = 1,240``."""
    name = entry.get("task") or "mixed"
    examples = "; ".join(f'"{e}"' for e in entry.get("examples", [])[:2])
    return (f"cheap succeeds {100 * entry['cheap_rate']:.0f}% on {name} prompts like {examples}, "
            f"n = {entry['n']:,.0f}")


class ClusterPrior:
    """k-means clusters of prompts with a Beta posterior of cheap success each (module docstring)."""

    def __init__(self, config: ClusterPriorConfig | None = None) -> None:
        self.config = config or ClusterPriorConfig()

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, features: np.ndarray, cheap_success: Sequence[float], *, weights: Sequence[float] | None = None,
            texts: Sequence[str] | None = None, tasks: Sequence[Any] | None = None) -> ClusterPrior:
        """Cluster ``features`` and set each cluster's posterior from ``cheap_success`` (0..1, graded ok)."""
        from sklearn.cluster import KMeans

        x = _normalise(features)
        s = np.asarray(cheap_success, dtype=np.float64).reshape(-1)
        if s.size != x.shape[0]:
            raise DataError(f"{s.size} outcomes for {x.shape[0]} feature rows")
        if x.shape[0] == 0:
            raise DataError("no rows to fit the cluster prior on")
        if not np.all(np.isfinite(s)) or np.any((s < 0) | (s > 1)):
            raise DataError("cheap_success must lie in [0, 1] (1 = the cheap tier answered well)")
        w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        k = max(1, min(self.config.n_clusters, x.shape[0] // self.config.min_cluster_rows))
        km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=self.config.seed).fit(x)
        self.centroids_ = _normalise(km.cluster_centers_)
        self.global_rate_ = float(np.clip(np.sum(w * s) / max(np.sum(w), _EPS), 0.01, 0.99))
        m = self.config.prior_strength
        self.a_ = np.full(k, m * self.global_rate_)
        self.b_ = np.full(k, m * (1.0 - self.global_rate_))
        self.n_ = np.zeros(k)
        labels = self.assign(x, normalised=True)
        self.update(labels, s, weights=w)
        self._name(x, labels, texts, tasks)
        return self

    def _name(self, x: np.ndarray, labels: np.ndarray, texts: Sequence[str] | None,
              tasks: Sequence[Any] | None) -> None:
        k = len(self.centroids_)
        self.examples_: list[list[str]] = [[] for _ in range(k)]
        self.tasks_: list[str | None] = [None] * k
        sim = x @ self.centroids_.T
        for c in range(k):
            rows = np.flatnonzero(labels == c)
            if rows.size == 0:
                continue
            if texts is not None:
                best = rows[np.argsort(-sim[rows, c])[: self.config.n_examples]]
                self.examples_[c] = [_short(texts[i]) for i in best]
            if tasks is not None:
                vals = [tasks[i] for i in rows if tasks[i] is not None and not (isinstance(tasks[i], float)
                                                                                  and math.isnan(tasks[i]))]
                if vals:
                    uniq, counts = np.unique(np.asarray(vals, dtype=object).astype(str), return_counts=True)
                    share = counts.max() / counts.sum()
                    top = str(uniq[counts.argmax()])
                    self.tasks_[c] = top if share >= 0.6 else f"mostly {top}"

    def update(self, clusters: Sequence[int], cheap_success: Sequence[float], *,
               weights: Sequence[float] | None = None) -> ClusterPrior:
        """Add outcomes to the posteriors: ``a += w * s``, ``b += w * (1 - s)`` per cluster."""
        c = np.asarray(clusters, dtype=np.int64).reshape(-1)
        s = np.asarray(cheap_success, dtype=np.float64).reshape(-1)
        w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if not (c.size == s.size == w.size):
            raise DataError(f"update: {c.size} clusters, {s.size} outcomes and {w.size} weights must match")
        if c.size and (c.min() < 0 or c.max() >= len(self.a_)):
            raise DataError(f"update: cluster ids must lie in [0, {len(self.a_) - 1}]")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise DataError("update: weights must be finite and >= 0")
        k = len(self.a_)
        self.a_ = self.a_ + np.bincount(c, weights=w * s, minlength=k)
        self.b_ = self.b_ + np.bincount(c, weights=w * (1.0 - s), minlength=k)
        self.n_ = self.n_ + np.bincount(c, minlength=k)
        return self

    # -- prediction ----------------------------------------------------------------------------
    def assign(self, features: np.ndarray, *, normalised: bool = False) -> np.ndarray:
        """Nearest centroid by cosine similarity."""
        x = features if normalised else _normalise(features)
        return np.asarray(np.argmax(x @ self.centroids_.T, axis=1), dtype=np.int64)

    @property
    def cheap_rate_(self) -> np.ndarray:
        return self.a_ / (self.a_ + self.b_)

    @property
    def frontier_logits_(self) -> np.ndarray:
        m = np.clip(self.cheap_rate_, _EPS, 1 - _EPS)
        return np.log((1.0 - m) / m)

    def cheap_rate(self, features: np.ndarray) -> np.ndarray:
        return self.cheap_rate_[self.assign(features)]

    def frontier_logit(self, features: np.ndarray) -> np.ndarray:
        return self.frontier_logits_[self.assign(features)]

    # -- reading -------------------------------------------------------------------------------
    def summary(self, level: float = 0.9) -> list[dict[str, Any]]:
        """Per cluster (largest first): n, posterior mean, central ``level`` interval, task, examples."""
        from scipy.stats import beta

        lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
        rows = []
        for c in range(len(self.a_)):
            rows.append({
                "cluster": c, "n": float(self.n_[c]), "cheap_rate": float(self.cheap_rate_[c]),
                "interval": [float(beta.ppf(lo_q, self.a_[c], self.b_[c])), float(beta.ppf(hi_q, self.a_[c], self.b_[c]))],
                "task": getattr(self, "tasks_", [None] * len(self.a_))[c],
                "examples": getattr(self, "examples_", [[] for _ in self.a_])[c],
            })
        rows.sort(key=lambda r: -r["n"])
        for r in rows:
            r["description"] = describe_cluster(r)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(), "global_rate": self.global_rate_, "clusters": self.summary()}

    # -- ONNX --------------------------------------------------------------------------------------
    def onnx_nodes(self, features: str, output: str, prefix: str = "cp_",
                   opset: int = 18) -> tuple[list[Any], list[Any]]:
        """Nodes and initialisers computing the prior frontier logit ``[batch]`` from ``features``."""
        from onnx import helper, numpy_helper

        if opset >= 18:  # ReduceL2 takes its axes as an input from opset 18 on
            reduce = helper.make_node("ReduceL2", [features, f"{prefix}ax"], [f"{prefix}norm"], keepdims=1)
        else:
            reduce = helper.make_node("ReduceL2", [features], [f"{prefix}norm"], axes=[1], keepdims=1)

        inits = [
            numpy_helper.from_array(self.centroids_.T.astype(np.float32), f"{prefix}C"),
            numpy_helper.from_array(self.frontier_logits_.astype(np.float32), f"{prefix}L"),
            numpy_helper.from_array(np.array([1e-12], dtype=np.float32), f"{prefix}eps"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), f"{prefix}ax"),
        ]
        nodes = [
            reduce,
            helper.make_node("Max", [f"{prefix}norm", f"{prefix}eps"], [f"{prefix}normc"]),
            helper.make_node("Div", [features, f"{prefix}normc"], [f"{prefix}x"]),
            helper.make_node("MatMul", [f"{prefix}x", f"{prefix}C"], [f"{prefix}sim"]),
            helper.make_node("ArgMax", [f"{prefix}sim"], [f"{prefix}idx"], axis=1, keepdims=0),
            helper.make_node("Gather", [f"{prefix}L", f"{prefix}idx"], [output], axis=0),
        ]
        return nodes, inits
