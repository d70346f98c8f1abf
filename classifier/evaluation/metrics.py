"""Classification metrics per head, shared by the trainer, the baselines and the reports.

What is here: ``evaluate_heads`` (accuracy, macro-F1, per-class recall/precision, AUROC) and
``confusion`` on the rows that carry a label for each head; ``recall_at_precision`` for gate
heads (how much personal data / how many credentials are caught at a precision floor);
``wilson_interval`` and ``bootstrap_ci`` for the uncertainty of a rate or of any metric;
``flatten_metrics`` to turn the nested result into MLflow-style ``head/metric`` keys.

What is left out: calibration metrics (ECE, reliability) live with calibration; cost and routing
quality live in ``classifier.evaluation.costs``. Probabilities are taken as given (already
softmaxed, temperature-scaled or not); predictions are their arg-max, not a policy threshold.

Conventions:
- ``probs[head.name]`` is an ``[len(frame), n_classes]`` array aligned with ``frame``'s rows,
  columns in schema class order. Rows whose label (``frame[head.column]``) is null are skipped.
- A metric that is undefined on the rows at hand is *omitted*, never NaN and never an error:
  ``recall_<c>`` needs a true row of class ``c``, ``precision_<c>`` a row predicted ``c``,
  ``auroc`` both a positive and a negative row. A head with no labelled rows gets ``{"n": 0}``.
- ``macro_f1`` averages F1 over the classes that occur in the labels or the predictions
  (scikit-learn's default), so a class absent from a split does not count as a zero.
- ``auroc``: binary heads score ``P(positive_class)`` (else class index 1); gate heads (with a
  ``negative_class``) score ``1 - P(negative_class)``, i.e. one-vs-rest "flagged at all".
- ``recall_at_p95_<c>``: gate heads only, for each class ``c`` but the negative one: the highest
  one-vs-rest recall of ``P(c)`` at precision >= ``GATE_MIN_PRECISION`` (0.95), the number a
  policy owner asks of a gate ("how much do we catch without crying wolf?").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from classifier.data.labels import label_indices
from classifier.data.schema import Head, LabelSchema
from classifier.errors import SchemaError

GATE_MIN_PRECISION = 0.95

__all__ = [
    "GATE_MIN_PRECISION",
    "bootstrap_ci",
    "confusion",
    "evaluate_head",
    "evaluate_heads",
    "flatten_metrics",
    "head_score",
    "recall_at_precision",
    "wilson_interval",
]


# -- labels and scores ---------------------------------------------------------------------------
def head_score(head: Head, probs: np.ndarray) -> np.ndarray | None:
    """The one-dimensional score AUROC is computed on, or ``None`` for a plain multi-class head.

    Binary heads: ``P(positive_class)`` (class index 1 when none is named). Gate heads (with a
    ``negative_class``): ``1 - P(negative_class)``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if head.negative_class is not None and head.num_classes > 2:
        return 1.0 - probs[:, head.index(head.negative_class)]
    if head.num_classes == 2:
        if head.positive_class is not None:
            return probs[:, head.index(head.positive_class)]
        if head.negative_class is not None:
            return 1.0 - probs[:, head.index(head.negative_class)]
        return probs[:, 1]
    return None


def _score_target(head: Head, y: np.ndarray) -> np.ndarray:
    """Binary target matching ``head_score``: positive class, or "not the negative class"."""
    if head.negative_class is not None and head.num_classes > 2:
        return (y != head.index(head.negative_class)).astype(np.int64)
    if head.num_classes == 2:
        if head.positive_class is not None:
            return (y == head.index(head.positive_class)).astype(np.int64)
        if head.negative_class is not None:
            return (y != head.index(head.negative_class)).astype(np.int64)
        return (y == 1).astype(np.int64)
    raise SchemaError(f"head {head.name!r} has no binary score (not binary, no negative_class)")


def _check_probs(head: Head, probs: np.ndarray, n_rows: int) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape != (n_rows, head.num_classes):
        raise SchemaError(
            f"probabilities for head {head.name!r} have shape {arr.shape}; expected "
            f"({n_rows}, {head.num_classes}) = (rows in the frame, classes {list(head.classes)})"
        )
    return arr


# -- per-head metrics ----------------------------------------------------------------------------
def evaluate_head(head: Head, y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Metrics of one head on labelled rows only (``y`` class indices, ``probs`` ``[n, C]``)."""
    y = np.asarray(y, dtype=np.int64)
    probs = _check_probs(head, probs, len(y))
    out: dict[str, float] = {"n": float(len(y))}
    if len(y) == 0:
        return out
    pred = probs.argmax(axis=1)
    out["accuracy"] = float(np.mean(pred == y))
    out["macro_f1"] = float(f1_score(y, pred, average="macro", zero_division=0))
    for i, cls in enumerate(head.classes):
        true_i = y == i
        pred_i = pred == i
        if true_i.any():
            out[f"recall_{cls}"] = float(np.mean(pred_i[true_i]))
        if pred_i.any():
            out[f"precision_{cls}"] = float(np.mean(true_i[pred_i]))
    score = head_score(head, probs)
    if score is not None:
        target = _score_target(head, y)
        if 0 < target.sum() < len(target):
            out["auroc"] = float(roc_auc_score(target, score))
    if head.negative_class is not None:
        for i, cls in enumerate(head.classes):
            if cls != head.negative_class and (y == i).any():
                out[f"recall_at_p95_{cls}"] = recall_at_precision(y == i, probs[:, i], GATE_MIN_PRECISION)[0]
    return out


def evaluate_heads(
    schema: LabelSchema, frame: pd.DataFrame, probs: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Metrics for every schema head that has probabilities in ``probs``.

    Each head is scored on the rows of ``frame`` whose ``head.column`` is not null. Returns
    ``{head: {"n", "accuracy", "macro_f1", "recall_<c>", "precision_<c>", "auroc"?}}``; ``n`` is a
    float so the dict can be logged as metrics as is. Heads absent from ``probs`` are skipped.
    """
    results: dict[str, dict[str, float]] = {}
    for head in schema.heads:
        if head.name not in probs:
            continue
        p = _check_probs(head, probs[head.name], len(frame))
        mask, y = label_indices(head, frame)
        results[head.name] = evaluate_head(head, y, p[mask])
    return results


def confusion(
    schema: LabelSchema, frame: pd.DataFrame, probs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Confusion matrices ``[C, C]`` (rows: true class, columns: arg-max prediction) per head."""
    out: dict[str, np.ndarray] = {}
    for head in schema.heads:
        if head.name not in probs:
            continue
        p = _check_probs(head, probs[head.name], len(frame))
        mask, y = label_indices(head, frame)
        pred = p[mask].argmax(axis=1)
        matrix = np.zeros((head.num_classes, head.num_classes), dtype=np.int64)
        np.add.at(matrix, (y, pred), 1)
        out[head.name] = matrix
    return out


# -- operating points ----------------------------------------------------------------------------
def recall_at_precision(
    y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, min_precision: float
) -> tuple[float, float]:
    """Highest recall reachable with precision >= ``min_precision``, and the score threshold.

    A row is flagged when ``score >= threshold``. ``y_true`` is binary (1 = positive). When no
    threshold reaches the precision floor the answer is ``(0.0, inf)`` (flag nothing); when there
    is no positive row, recall is undefined: ``(nan, nan)``.
    """
    if not 0.0 <= min_precision <= 1.0:
        raise ValueError(f"min_precision must be in [0, 1], got {min_precision}")
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and scores {s.shape} differ in shape")
    if y.sum() == 0:
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(y, s)
    # the last (precision=1, recall=0) point has no threshold: drop it
    precision, recall = precision[:-1], recall[:-1]
    ok = precision >= min_precision - 1e-12
    if not ok.any():
        return 0.0, float("inf")
    best = np.flatnonzero(ok)
    # highest recall; among ties the highest threshold (fewest false alarms)
    i = best[np.lexsort((thresholds[best], recall[best]))[-1]]
    return float(recall[i]), float(thresholds[i])


# -- uncertainty ---------------------------------------------------------------------------------
def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate ``k / n``; ``(0, 1)`` when ``n == 0``.

    Preferred over the normal approximation because it stays inside [0, 1] and behaves at
    rates near 0 or 1 (e.g. a misroute rate of 2 in 300).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + conf / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k == 0 (k == n) the bound is exactly 0 (1); avoid a 1e-17 rounding residue
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: Sequence[Any] | np.ndarray,
    n_boot: int = 1000,
    conf: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap: ``(point, low, high)`` of ``metric(*arrays)`` over row resamples.

    All ``arrays`` are resampled with the same row indices. Resamples on which the metric is
    undefined (raises ``ValueError`` or returns NaN, e.g. AUROC on a one-class resample) are
    dropped; if all are, the interval is ``(nan, nan)``.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf}")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError("all arrays passed to bootstrap_ci must have the same length")
    point = float(metric(*arrs))
    if n == 0:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        try:
            with warnings.catch_warnings():
                # e.g. sklearn's "only one class present": such a resample is dropped below
                warnings.simplefilter("ignore")
                v = float(metric(*(a[idx] for a in arrs)))
        except ValueError:
            continue
        if not math.isnan(v):
            values.append(v)
    if not values:
        return point, float("nan"), float("nan")
    alpha = (1.0 - conf) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def flatten_metrics(metrics: Mapping[str, Mapping[str, float]], prefix: str = "") -> dict[str, float]:
    """``{"tier": {"accuracy": .9}}`` -> ``{"<prefix>tier/accuracy": .9}`` (MLflow metric keys)."""
    return {
        f"{prefix}{head}/{name}": float(value)
        for head, values in metrics.items()
        for name, value in values.items()
    }
