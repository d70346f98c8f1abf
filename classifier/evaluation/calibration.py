"""Probability calibration of the classifier heads: temperature scaling, calibration metrics, plots.

What is here:
- ``TemperatureScaler``: one temperature per head, fitted by minimising the negative
  log-likelihood over ``log T`` (so T stays positive); sklearn-shaped (``fit`` returns self,
  learned ``temperature_``). ``VectorScaler``: a per-class scale and bias (more flexible, needs
  more data), with a small ridge pull towards the identity.
- ``ece`` (expected calibration error, 15 equal-width bins on the top-class confidence),
  ``ece_positive`` (the same on a binary head's positive-class probability), ``brier``, ``nll``
  and ``reliability_bins`` (the data behind a reliability diagram).
- ``BiasedTemperatureScaler``: ``softmax(z / T + b)``, one temperature plus a per-class bias
  (for a binary head this is Platt scaling of the logit difference); the bias is centred (sums to
  0; softmax ignores a common shift).
- ``calibrate_heads(schema, logits, labels)``: fit a temperature per head and, where it pays, a
  per-class bias, and report ECE / Brier / NLL before and after, as a ``CalibrationReport`` that
  writes the bundle's ``calibration.json`` payload and before/after reliability diagrams (PNG,
  matplotlib Agg).

**When a head gets a bias.** Temperature-only is the default; the ``T + b`` fit (``C - 1`` extra
parameters) replaces it only when the drop in calibration NLL is statistically meaningful: a
likelihood-ratio test of the nested models, ``2 n (NLL_T - NLL_T+b) > chi2_{C-1}(1 - BIAS_LEVEL)``
(``BIAS_LEVEL = 0.01``, i.e. a drop of more than about ``3.3 / n`` nats per row for a binary
head). That keeps bias-free bundles for heads whose only miscalibration is over/under-confidence
and adds a bias where the model is shifted towards one class (e.g. a prior shift between training
and calibration data). Unlike a temperature, a bias can change argmax predictions.

What is left out: choosing decision thresholds (``thresholds.py``), running the model
(``classifier.serving.runtime``), and the CLI (``calibrate_cmd.py``). numpy + scipy (+ matplotlib
for plots, imported only when plotting).

Conventions: ``logits[head]`` is ``[n, C]`` (raw, uncalibrated, classes in schema order);
``labels[head]`` is ``[n]`` int class indices, where a negative value means "no label for this
row" (such rows are ignored for that head).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax
from scipy.stats import chi2

from classifier.errors import ConfigError
from classifier.numeric import softmax

logger = logging.getLogger(__name__)

N_BINS = 15
# log-temperature search range: T in [0.02, 50] covers any sane model; beyond it something is off
_LOG_T_BOUNDS = (float(np.log(0.02)), float(np.log(50.0)))
# fewer labelled rows than this and a head keeps T = 1 (a temperature fitted on a handful of rows
# is noise, and a wrong temperature hurts more than none)
MIN_ROWS = 20
# level of the likelihood-ratio test that decides whether a head gets per-class biases
BIAS_LEVEL = 0.01

__all__ = [
    "BIAS_LEVEL",
    "BiasedTemperatureScaler",
    "CalibrationReport",
    "HeadCalibration",
    "TemperatureScaler",
    "VectorScaler",
    "brier",
    "calibrate_heads",
    "ece",
    "ece_positive",
    "nll",
    "plot_reliability",
    "reliability_bins",
]


# -- basics ----------------------------------------------------------------------------------
def _check(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim != 2 or y.ndim != 1 or probs.shape[0] != y.shape[0]:
        raise ValueError(f"expected probs [n, C] and labels [n], got {probs.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1]}), got {y.min()}..{y.max()}")
    return probs, y.astype(np.int64)


def _fit_checks(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [n, C] with C >= 2, got {logits.shape}")
    if y.shape != (logits.shape[0],):
        raise ValueError(f"labels must be [n] = [{logits.shape[0]}], got {y.shape}")
    if logits.shape[0] == 0:
        raise ValueError("cannot fit on zero rows")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]})")
    return logits, y.astype(np.int64)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    probs, y = _check(probs, y)
    if not y.size:
        return float("nan")
    return float(-np.mean(np.log(np.clip(probs[np.arange(y.size), y], 1e-12, None))))


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of sum over classes of (p - onehot)^2."""
    probs, y = _check(probs, y)
    if not y.size:
        return float("nan")
    onehot = np.zeros_like(probs)
    onehot[np.arange(y.size), y] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # equal-width bins on [0, 1]; bin b holds (b/n, (b+1)/n], the first also holds 0
    idx = np.ceil(np.clip(conf, 0.0, 1.0) * n_bins).astype(np.int64) - 1
    return np.clip(idx, 0, n_bins - 1)


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per bin: count, mean confidence and observed frequency (NaN where a bin is empty)."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        freq = np.bincount(idx, weights=correct, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"edges": edges, "count": count, "confidence": mean_conf, "frequency": freq}


def _ece_from(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    if conf.size == 0:
        return float("nan")
    b = reliability_bins(conf, correct, n_bins)
    filled = b["count"] > 0
    gaps = np.abs(b["confidence"][filled] - b["frequency"][filled])
    return float(np.sum(b["count"][filled] * gaps) / conf.size)


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error on the top-class confidence (fixed equal-width bins)."""
    probs, y = _check(probs, y)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    return _ece_from(conf, correct, n_bins)


def ece_positive(p_positive: np.ndarray, is_positive: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of a binary head's positive-class probability: |P(pos | p in bin) - mean p| averaged.

    This is the one that matters for a threshold on p(frontier): top-class ECE folds p and 1 - p
    together and can hide miscalibration on the side the threshold sits on.
    """
    p = np.asarray(p_positive, dtype=np.float64)
    t = np.asarray(is_positive, dtype=np.float64)
    return _ece_from(p, t, n_bins)


def metrics(probs: np.ndarray, y: np.ndarray, *, positive: int | None = None,
            n_bins: int = N_BINS) -> dict[str, float]:
    """ECE, Brier and NLL (plus ``ece_positive`` when ``positive`` names a class index)."""
    out = {"n": float(len(y)), "ece": ece(probs, y, n_bins), "brier": brier(probs, y), "nll": nll(probs, y)}
    if positive is not None:
        out["ece_positive"] = ece_positive(np.asarray(probs)[:, positive], np.asarray(y) == positive, n_bins)
    return out


# -- scalers ---------------------------------------------------------------------------------
class TemperatureScaler:
    """Divide logits by one temperature ``T`` fitted to minimise NLL (Guo et al., 2017).

    ``T > 1`` softens an over-confident model; argmax predictions never change.
    """

    def __init__(self, *, bounds: tuple[float, float] = _LOG_T_BOUNDS) -> None:
        self.bounds = bounds

    def fit(self, logits: np.ndarray, y: np.ndarray) -> TemperatureScaler:
        logits, y = _fit_checks(logits, y)
        rows = np.arange(y.size)

        def objective(log_t: float) -> float:
            return float(-np.mean(log_softmax(logits / np.exp(log_t), axis=1)[rows, y]))

        # NLL is convex in 1/T for a softmax, hence unimodal in log T: a bounded scalar search
        # finds the optimum without a starting point or gradients
        res = minimize_scalar(objective, bounds=self.bounds, method="bounded", options={"xatol": 1e-5})
        self.temperature_ = float(np.exp(res.x))
        self.nll_before_ = objective(0.0)
        self.nll_after_ = float(res.fun)
        if self.nll_after_ > self.nll_before_:  # numerical corner: never make it worse than T=1
            self.temperature_, self.nll_after_ = 1.0, self.nll_before_
        return self

    def _fitted(self) -> float:
        if not hasattr(self, "temperature_"):
            raise RuntimeError("TemperatureScaler is not fitted; call fit(logits, y) first")
        return self.temperature_

    def transform(self, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits, dtype=np.float64) / self._fitted()

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self._fitted())


class BiasedTemperatureScaler:
    """``softmax(z / T + b)``: one temperature and a per-class bias, fitted jointly by NLL.

    For two classes it is Platt scaling of the logit difference. ``bias_`` is centred (sums to 0):
    softmax ignores a common shift, so only ``C - 1`` of the biases are free. ``l2`` is a tiny ridge
    on ``b`` that keeps the fit finite when a class never occurs.
    """

    def __init__(self, *, l2: float = 1e-6, max_iter: int = 500, bounds: tuple[float, float] = _LOG_T_BOUNDS) -> None:
        if l2 < 0:
            raise ConfigError(f"BiasedTemperatureScaler.l2 must be >= 0, got {l2}")
        self.l2 = l2
        self.max_iter = max_iter
        self.bounds = bounds

    def fit(self, logits: np.ndarray, y: np.ndarray) -> BiasedTemperatureScaler:
        logits, y = _fit_checks(logits, y)
        n, c = logits.shape
        rows = np.arange(n)
        onehot = np.zeros((n, c))
        onehot[rows, y] = 1.0
        # start from the temperature-only optimum: the joint fit can then only improve on it
        start = TemperatureScaler(bounds=self.bounds).fit(logits, y)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            inv_t = np.exp(-theta[0])
            b = theta[1:]
            logp = log_softmax(logits * inv_t + b, axis=1)
            loss = -np.sum(logp * onehot) / n + self.l2 * np.sum(b**2)
            g = (np.exp(logp) - onehot) / n  # dL/dz'
            grad_log_t = -inv_t * np.sum(g * logits)
            grad_b = np.sum(g, axis=0) + 2 * self.l2 * b
            return float(loss), np.concatenate([[grad_log_t], grad_b])

        theta0 = np.concatenate([[np.log(start.temperature_)], np.zeros(c)])
        res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                       bounds=[self.bounds] + [(None, None)] * c, options={"maxiter": self.max_iter})
        theta = res.x if res.fun <= objective(theta0)[0] else theta0
        self.temperature_ = float(np.exp(theta[0]))
        self.bias_ = theta[1:] - theta[1:].mean()
        self.temperature_only_ = start.temperature_  # the T-only fit, for comparison
        self.nll_temperature_ = start.nll_after_
        self.nll_after_ = float(-np.mean(log_softmax(self.transform(logits), axis=1)[rows, y]))
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        if not hasattr(self, "bias_"):
            raise RuntimeError("BiasedTemperatureScaler is not fitted; call fit(logits, y) first")
        return np.asarray(logits, dtype=np.float64) / self.temperature_ + self.bias_

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(self.transform(logits), axis=1))


class VectorScaler:
    """Per-class affine calibration ``softmax(w * z + b)`` (vector scaling, Guo et al., 2017).

    ``l2`` pulls ``w`` towards 1 and ``b`` towards 0 so that rare classes do not overfit.
    Unlike temperature scaling it can change argmax predictions.
    """

    def __init__(self, *, l2: float = 1e-3, max_iter: int = 500) -> None:
        if l2 < 0:
            raise ConfigError(f"VectorScaler.l2 must be >= 0, got {l2}")
        self.l2 = l2
        self.max_iter = max_iter

    def fit(self, logits: np.ndarray, y: np.ndarray) -> VectorScaler:
        logits, y = _fit_checks(logits, y)
        n, c = logits.shape
        onehot = np.zeros((n, c))
        onehot[np.arange(n), y] = 1.0

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:c], theta[c:]
            z = logits * w + b
            logp = log_softmax(z, axis=1)
            loss = -np.sum(logp * onehot) / n + self.l2 * (np.sum((w - 1) ** 2) + np.sum(b**2))
            g = (np.exp(logp) - onehot) / n  # dL/dz
            grad_w = np.sum(g * logits, axis=0) + 2 * self.l2 * (w - 1)
            grad_b = np.sum(g, axis=0) + 2 * self.l2 * b
            return float(loss), np.concatenate([grad_w, grad_b])

        theta0 = np.concatenate([np.ones(c), np.zeros(c)])
        res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter})
        self.scale_ = res.x[:c].copy()
        self.bias_ = res.x[c:].copy()
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        if not hasattr(self, "scale_"):
            raise RuntimeError("VectorScaler is not fitted; call fit(logits, y) first")
        return np.asarray(logits, dtype=np.float64) * self.scale_ + self.bias_

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(self.transform(logits), axis=1))


# -- per-head calibration --------------------------------------------------------------------
@dataclass
class HeadCalibration:
    """One head's fitted temperature (and per-class bias, None when not adopted) and metrics
    before / after on the fitting rows. ``bias_test``: the likelihood-ratio test that decided
    about the bias (NLL with T only, with T + b, statistic, critical value), when it ran."""

    head: str
    n: int
    temperature: float
    before: dict[str, float]
    after: dict[str, float]
    note: str = ""
    bias: tuple[float, ...] | None = None
    bias_test: dict[str, float] | None = None

    def transform(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        return z + np.asarray(self.bias) if self.bias is not None else z

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return np.exp(log_softmax(self.transform(logits), axis=-1))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "temperature": self.temperature, "before": self.before, "after": self.after}
        if self.bias is not None:
            out["bias"] = list(self.bias)
        if self.bias_test is not None:
            out["bias_test"] = self.bias_test
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class CalibrationReport:
    """Temperatures per head and their effect. ``heads`` keeps schema order."""

    heads: dict[str, HeadCalibration]
    positive: dict[str, int] = field(default_factory=dict)  # head -> positive class index (binary)
    n_bins: int = N_BINS
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def temperatures(self) -> dict[str, float]:
        return {name: hc.temperature for name, hc in self.heads.items()}

    @property
    def biases(self) -> dict[str, list[float]]:
        """Per-class biases of the heads that have them (empty: temperatures only)."""
        return {name: list(hc.bias) for name, hc in self.heads.items() if hc.bias is not None}

    def predict_proba(self, logits: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated probabilities per head (a head without a fit gets the plain softmax)."""
        return {h: self.heads[h].predict_proba(z) if h in self.heads else softmax(z) for h, z in logits.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "heads": {name: hc.to_dict() for name, hc in self.heads.items()}}

    def calibration_json(self, fitted_on: str, extra_metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The bundle's ``calibration.json`` payload (see docs/design.md)."""
        metrics_out: dict[str, Any] = {name: {"before": hc.before, "after": hc.after}
                                       for name, hc in self.heads.items()}
        if extra_metrics:
            metrics_out.update(extra_metrics)
        out: dict[str, Any] = {"temperatures": self.temperatures, "fitted_on": fitted_on,
                               "method": "temperature_scaling", "metrics": metrics_out}
        if self.biases:  # absent key = no biases: bundles without them load exactly as before
            out["biases"] = self.biases
            out["method"] = "temperature_scaling+bias"
        return out

    def evaluate(self, logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
        """Metrics before / after with this calibration on other rows (e.g. the test split)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, hc in self.heads.items():
            if name not in logits or name not in labels:
                continue
            z, y = _labelled(logits[name], labels[name])
            if not y.size:
                continue
            pos = self.positive.get(name)
            out[name] = {
                "before": metrics(softmax(z), y, positive=pos, n_bins=self.n_bins),
                "after": metrics(hc.predict_proba(z), y, positive=pos, n_bins=self.n_bins),
            }
        return out


def _labelled(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    if z.shape[0] != y.shape[0]:
        raise ValueError(f"logits have {z.shape[0]} rows, labels {y.shape[0]}")
    mask = y >= 0
    return z[mask], y[mask].astype(np.int64)


def _positive_index(head: Any) -> int | None:
    if head.num_classes != 2:
        return None
    return head.classes.index(head.positive_class) if head.positive_class else 1


def calibrate_heads(schema: Any, logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                    *, n_bins: int = N_BINS, min_rows: int = MIN_ROWS, biases: bool = True,
                    bias_level: float = BIAS_LEVEL) -> CalibrationReport:
    """Fit a temperature per schema head present in both ``logits`` and ``labels``, plus a
    per-class bias where the likelihood-ratio test at ``bias_level`` says it pays (module
    docstring; ``biases=False``: temperatures only).

    A head with fewer than ``min_rows`` labelled rows keeps T = 1 (noted in the report).
    """
    if not 0.0 < bias_level < 1.0:
        raise ConfigError(f"bias_level must be strictly between 0 and 1, got {bias_level}")
    heads: dict[str, HeadCalibration] = {}
    positive: dict[str, int] = {}
    for head in schema.heads:
        if head.name not in logits or head.name not in labels:
            continue
        z, y = _labelled(logits[head.name], labels[head.name])
        if z.ndim != 2 or z.shape[1] != head.num_classes:
            raise ValueError(f"head {head.name!r}: logits must be [n, {head.num_classes}], got {z.shape}")
        pos = _positive_index(head)
        if pos is not None:
            positive[head.name] = pos
        before = metrics(softmax(z), y, positive=pos, n_bins=n_bins) if y.size else {"n": 0.0}
        if y.size < min_rows:
            note = f"only {y.size} labelled rows (< {min_rows}): temperature left at 1.0"
            logger.warning("head %r: %s", head.name, note)
            heads[head.name] = HeadCalibration(head.name, int(y.size), 1.0, before, dict(before), note)
            continue
        biased = BiasedTemperatureScaler().fit(z, y) if biases else None
        t_only = biased.temperature_only_ if biased is not None else TemperatureScaler().fit(z, y).temperature_
        hc = HeadCalibration(head.name, int(y.size), t_only, before, {})
        if biased is not None:
            stat = 2.0 * y.size * (biased.nll_temperature_ - biased.nll_after_)
            critical = float(chi2.ppf(1.0 - bias_level, head.num_classes - 1))
            hc.bias_test = {"nll_temperature": biased.nll_temperature_, "nll_temperature_bias": biased.nll_after_,
                            "lr_statistic": stat, "critical_value": critical, "level": bias_level}
            if stat > critical:
                hc.temperature, hc.bias = biased.temperature_, tuple(float(v) for v in biased.bias_)
        hc.after = metrics(hc.predict_proba(z), y, positive=pos, n_bins=n_bins)
        heads[head.name] = hc
        logger.info("head %r: T=%.3f, bias %s, ECE %.4f -> %.4f (n=%d)", head.name, hc.temperature,
                    "none" if hc.bias is None else np.round(hc.bias, 3).tolist(), before["ece"], hc.after["ece"], y.size)
    return CalibrationReport(heads=heads, positive=positive, n_bins=n_bins,
                             class_names={h.name: tuple(h.classes) for h in schema.heads})


# -- plots -----------------------------------------------------------------------------------
def plot_reliability(report: CalibrationReport, logits: Mapping[str, np.ndarray],
                     labels: Mapping[str, np.ndarray], out_dir: str | Path, *,
                     split: str = "calibration") -> list[Path]:
    """One PNG per head: reliability diagrams before (T=1) and after calibration.

    Binary heads plot the positive-class probability (the one thresholds act on), other heads the
    top-class confidence. Bar width shows the bin, the diagonal is perfect calibration, and the
    bottom strip shows how many rows each bin holds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, hc in report.heads.items():
        if name not in logits or name not in labels:
            continue
        z, y = _labelled(logits[name], labels[name])
        if not y.size:
            continue
        pos = report.positive.get(name)
        fig, axes = plt.subplots(2, 2, figsize=(9, 5.5), sharex=True,
                                 gridspec_kw={"height_ratios": [4, 1]})
        after_title = f"after (T={hc.temperature:.2f}" + (", bias" if hc.bias is not None else "") + ")"
        for col, (title, probs) in enumerate((("before (T=1)", softmax(z)), (after_title, hc.predict_proba(z)))):
            if pos is not None:
                conf, hit = probs[:, pos], (y == pos).astype(float)
                err = ece_positive(conf, hit, report.n_bins)
                xlabel, ylabel = f"predicted p({_class_name(name, pos, report)})", "observed frequency"
            else:
                conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
                err = ece(probs, y, report.n_bins)
                xlabel, ylabel = "top-class confidence", "accuracy"
            b = reliability_bins(conf, hit, report.n_bins)
            width = 1.0 / report.n_bins
            centers = b["edges"][:-1] + width / 2
            filled = b["count"] > 0
            ax = axes[0, col]
            ax.bar(centers[filled], b["frequency"][filled], width=width * 0.9, color="#4c72b0",
                   edgecolor="white", label="observed")
            ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
            ax.plot(b["confidence"][filled], b["frequency"][filled], "o", color="#dd8452", ms=4,
                    label="bin mean confidence")
            ax.set_title(f"{name}: {title}, ECE={err:.3f}")
            ax.set_ylabel(ylabel)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.legend(loc="upper left", fontsize=7)
            axes[1, col].bar(centers, b["count"], width=width * 0.9, color="#8c8c8c")
            axes[1, col].set_xlabel(xlabel)
            axes[1, col].set_ylabel("rows")
        fig.suptitle(f"Reliability of head '{name}' on the {split} split (n={y.size})")
        fig.tight_layout()
        path = out / f"reliability_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _class_name(head: str, index: int, report: CalibrationReport) -> str:
    names = report.class_names.get(head)
    return names[index] if names else f"class {index}"
