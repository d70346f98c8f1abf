"""``tierwise adapt``: refit the tier head of a shipped bundle on a team's own outcomes, on CPU.

The shipped model's tier head learned, from public benchmarks, mostly *which task* a prompt comes
from; on a team's own traffic that does not transfer. ``adapt`` keeps the bundle's network frozen
and fits a new tier head on top of it, from the team's rows (``classifier.training.feedback``):

* **features**: the tensor every head of the bundle's ONNX graph reads (the student's trunk
  output, the teacher's pooled embedding), found by walking the graph (``find_feature_tensor``);
* **prior**: the base model's tier logit (frontier minus cheap) and a per-cluster prior
  (``classifier.evaluation.clusters.ClusterPrior``: k-means on those features, Beta posterior of
  cheap success per cluster, cross-fitted on the training rows so it does not leak) enter as
  features penalised ``prior_scale**2`` times less than the rest (``prior_scale`` chosen by
  cross-validation among ``prior_scales``), so the head leans on them and learns a
  within-cluster residual;
* **head**: an L2 logistic regression (Newton's method, on the top ``n_components`` principal
  components of the standardised features, folded back into one linear map); the target is ``1 -
  cheap_correct`` (soft: graded scores and shares of models that passed are used as they are),
  rows weighted (inverse propensities from exploration, ``base_weight`` for rows of the base
  data set); ``C`` and ``prior_scale`` by k-fold cross-validation on weighted log loss;
* **shrinkage**: the served logit is ``lam * head + (1 - lam) * cluster prior`` (empirical Bayes:
  ``lam`` among ``blend_weights``, 0 included, by out-of-fold log loss on the fitted rows only,
  one-standard-error rule toward the prior),
  still one linear map of the same inputs, so with few labels the head falls back to the prior.

The rows are split (seeded) into a fit part, a calibration part (temperature of the new head via
``calibration.calibrate_heads``; the tier threshold via ``thresholds.fit_tier_threshold`` or the
quality-loss budget) and a held-out part on which the release gate compares the parent bundle
and the adapted one (tier AUROC may not fall by more than ``max_regression``). The adapted head is
appended to the bundle's ONNX graph (the old ``logits_tier`` becomes an internal tensor), so the
torch-free runtime serves it unchanged; the new bundle's manifest names its parent
(``parent_bundle``: directory, manifest sha256, model version) and the MLflow run and registered
model version it was logged as.

``--engine ray`` runs the feature extraction (the bundle's ONNX graph over every row) on a Ray
actor pool (``classifier.scale.adapt``, bit-identical features); the fit stays in this process.

Left out: adapting the task or sensitivity heads (they are copied from the parent), fine-tuning
the encoder, and online (per-request) updates; ``ClusterPrior.update`` is the online part.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import ConfigError, DataError, ExportValidationError
from classifier.evaluation.prices import DEFAULT_PRICES_PATH
from classifier.json_io import to_jsonable as _jsonable

logger = logging.getLogger(__name__)

__all__ = [
    "AdaptConfig",
    "AdaptedTierHead",
    "BundleFeaturizer",
    "adapt_bundle",
    "add_adapt_arguments",
    "append_tier_head",
    "find_feature_tensor",
    "run_adapt",
]

# runs ONNX batches of token rows somewhere: (batches, progress) -> each batch's BundleFeaturizer.run_batch
RunBatches = Callable[[list[list[list[int]]], bool], Iterable[tuple[np.ndarray, list[np.ndarray]]]]
_QUANT_OPS = {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "Cast", "Shape", "Constant"}
PREFIX = "adapt_"
_SPLIT_SALT = 0xADA975  # see _split_rows


# -- the bundle's features ---------------------------------------------------------------------------
def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)


def find_feature_tensor(model: Any, head_names: Sequence[str]) -> str:
    """The last tensor every ``logits_<head>`` output depends on (the shared trunk's output).

    With one head, the non-initialiser input of the MatMul/Gemm that feeds its logits.
    """
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            producer[out] = i

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            t = stack.pop()
            if t in seen or t not in producer:
                continue
            seen.add(t)
            stack.extend(x for x in graph.node[producer[t]].input if x and x not in inits)
        return seen

    outputs = [f"logits_{h}" for h in head_names]
    missing = [o for o in outputs if o not in producer]
    if missing:
        raise ExportValidationError(f"the bundle's model.onnx has no node producing {missing}")
    if len(outputs) >= 2:
        common = set.intersection(*(ancestors(o) for o in outputs))
        usable = [t for t in common if graph.node[producer[t]].op_type not in _QUANT_OPS]
        if usable:
            return max(usable, key=lambda t: producer[t])
    for t in sorted(ancestors(outputs[0]), key=lambda t: -producer[t]):
        node = graph.node[producer[t]]
        if node.op_type in ("MatMul", "Gemm"):
            return next(x for x in node.input if x not in inits)
    raise ExportValidationError("cannot find the feature tensor the tier head reads in model.onnx")


class BundleFeaturizer:
    """Frozen features and base logits of a bundle, through ONNX Runtime (no torch).

    Loads the bundle with ``Router.load`` (verifies the manifest; the tokenizer and input limits
    are the served ones) and runs a copy of its graph that also outputs the feature tensor.
    """

    def __init__(self, bundle: str | Path, *, threads: int = 2, batch_size: int = 128,
                 extra_outputs: Sequence[str] = ()) -> None:
        import onnx
        import onnxruntime as ort

        from classifier.serving import bundle as bundle_io
        from classifier.serving.runtime import Router

        self.router = Router.load(bundle, threads=threads)
        self.bundle_dir = Path(self.router.bundle_dir)
        self.schema = self.router.schema
        self.model = onnx.load_from_string((self.bundle_dir / bundle_io.MODEL_FILE).read_bytes())
        self.feature_name = find_feature_tensor(self.model, self.schema.head_names)
        probe = copy.deepcopy(self.model)
        for name in (*extra_outputs, self.feature_name):
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        # raw logits per head, then the extra tensors asked for (returned beside them, by name)
        self.names = [*self.schema.head_names, *extra_outputs]
        self.outputs = [f"logits_{h}" for h in self.schema.head_names] + list(extra_outputs) + [self.feature_name]
        self.batch_size = batch_size

    def plan(self, texts: Sequence[str]) -> tuple[list[int], list[list[int]], list[list[list[int]]]]:
        """How :meth:`transform` reads ``texts``: the model row of each text's tier head, and the
        ONNX batches (the rows of each, and their token ids). The batches are formed here, on the
        caller's side, so that any engine that runs them (:meth:`run_batch`) gets the same
        features to the last bit (ONNX Runtime's results depend on the batch's padded shape)."""
        router = self.router
        rows, groups, _ = router._rows(router._checked(list(texts)))
        tier_row = []
        for i, (tier, _sens) in enumerate(groups):
            if len(tier) != 1:
                raise ConfigError(f"adapt: the bundle's model view reads {len(tier)} rows for the tier head of text {i} "
                                  f"(view.tier = {router.view.tier!r}); adapt needs one row per request")
            tier_row.append(tier[0])
        # sort by length so each batch pads little; results go back by row index
        order = sorted(set(tier_row), key=lambda r: len(rows[r]))
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        return tier_row, batches, [[rows[r] for r in idx] for idx in batches]

    def run_batch(self, tokens: Sequence[Sequence[int]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(features [b, dim] float32, [logits [b, C] of each head, then each extra output])`` of one
        batch of token rows."""
        from classifier.serving.runtime import pad_batch

        ids, mask = pad_batch(tokens, self.router._pad_id)
        outs = self.session.run(self.outputs, {"input_ids": ids, "attention_mask": mask})
        return np.asarray(outs[-1], dtype=np.float32).reshape(len(tokens), -1), list(outs[:-1])

    def transform(self, texts: Sequence[str], *, progress: bool = True,
                  run_batches: RunBatches | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(features [n, dim] float32, raw logits {head: [n, C]} of the tier row)`` of ``texts``, read exactly as
        the runtime reads them for the tier head: the model row its view picks (``Router._rows``:
        e.g. the head and tail of a long prompt, not its first ``max_length`` tokens).

        Measured: fitting on the first tokens while the runtime reads head + tail left the adapted
        bundle's served tier logits 0.78 away from the fitted ones on real 10,000-row traffic. A view
        that pools several rows per request (``windows_mean``) is refused: the fitted head would
        not be the served one. ``run_batches`` runs the batches of :meth:`plan` elsewhere (``adapt
        --engine ray``: ``classifier.scale.adapt``) and returns each batch's :meth:`run_batch`, in order."""
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, 0), np.float32), {h: np.zeros((0, self.schema.head(h).num_classes)) for h in self.schema.head_names}
        tier_row, batches, tokens = self.plan(texts)
        if run_batches is not None:
            outs = run_batches(tokens, progress)
        else:
            outs = (self.run_batch(t) for t in tqdm(tokens, desc="features", unit="batch",
                                                     disable=not progress or len(tokens) <= 1))
        feats: dict[int, np.ndarray] = {}
        logits: dict[str, dict[int, np.ndarray]] = {h: {} for h in self.names}
        for idx, (f, heads) in zip(batches, outs, strict=True):
            for k, r in enumerate(idx):
                feats[r] = f[k]
                for h, out in zip(self.names, heads, strict=True):
                    logits[h][r] = out[k]
        return (np.stack([feats[r] for r in tier_row]),
                {h: np.stack([v[r] for r in tier_row]).astype(np.float64) for h, v in logits.items()})

    def close(self) -> None:
        self.router.close()


def base_tier_logit(logits: np.ndarray, pos: int) -> np.ndarray:
    """Frontier-vs-cheap logit of a 2-class tier head: ``z[:, pos] - z[:, 1 - pos]``."""
    return np.asarray(logits[:, pos] - logits[:, 1 - pos], dtype=np.float64)


# -- the head ------------------------------------------------------------------------------------------
@dataclass
class AdaptConfig:
    """What ``AdaptedTierHead`` fits: see the module docstring."""

    Cs: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    folds: int = 4
    prior_scales: tuple[float, ...] = (1.0, 10.0)
    n_components: int = 64
    use_base_logit: bool = True
    use_cluster_prior: bool = True
    use_features: bool = True
    n_clusters: int = 32
    max_iter: int = 50
    seed: int = 0
    # weights of the head (vs the per-cluster prior alone) tried by the empirical-Bayes blend;
    # 0.0 keeps the prior alone as a candidate, so a head that does not beat it out of fold is not used
    blend_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self) -> None:
        if not self.Cs or any(not (c > 0) for c in self.Cs):
            raise ConfigError(f"Cs must be a non-empty list of numbers > 0, got {self.Cs}")
        if self.n_components < 1:
            raise ConfigError(f"n_components must be >= 1, got {self.n_components}")
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2, got {self.folds}")
        if not self.prior_scales or any(not (x > 0) for x in self.prior_scales):
            raise ConfigError(f"prior_scales must be numbers > 0, got {self.prior_scales}")
        if not self.blend_weights or any(not (0.0 <= x <= 1.0) for x in self.blend_weights):
            raise ConfigError(f"blend_weights must be numbers in [0, 1], got {self.blend_weights}")
        if not (self.use_base_logit or self.use_cluster_prior or self.use_features):
            raise ConfigError("the head needs at least one input: base logit, cluster prior or features")


def _newton_logreg(X: np.ndarray, y: np.ndarray, w: np.ndarray, C: float, beta0: np.ndarray | None = None,
                   max_iter: int = 50, tol: float = 1e-7) -> np.ndarray:
    """L2 logistic regression on soft targets by Newton's method: minimises
    ``sum_i w_i * logloss(y_i, sigmoid(x_i . beta)) + ||beta[1:]||^2 / (2 C)`` (column 0 is the
    intercept, unpenalised). Soft targets ``y`` in [0, 1] need no row duplication here."""
    d = X.shape[1]
    pen = np.full(d, 1.0 / C)
    pen[0] = 1e-8
    beta = np.zeros(d) if beta0 is None else beta0.copy()

    def objective(b: np.ndarray) -> float:
        z = X @ b
        return float(np.sum(w * (np.logaddexp(0, z) - y * z)) + 0.5 * np.sum(pen * b * b))

    obj = objective(beta)
    for _ in range(max_iter):
        z = X @ beta
        p = 1.0 / (1.0 + np.exp(-z))
        grad = X.T @ (w * (p - y)) + pen * beta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(pen)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:  # backtracking: Newton steps on a logistic loss rarely need it, but never go uphill
            cand = beta - t * step
            new = objective(cand)
            if new <= obj + 1e-12 or t < 1e-4:
                break
            t *= 0.5
        beta, converged = cand, abs(obj - new) <= tol * max(1.0, abs(obj))
        obj = new
        if converged:
            break
    return beta


def _log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.sum(w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / max(np.sum(w), 1e-12))


class AdaptedTierHead:
    """Logistic tier head over [features, base logit, cluster prior logit]; sklearn-shaped.

    ``fit(features, base_logit, target, weights)``: ``target`` = P(frontier needed) per row in
    [0, 1] (``1 - cheap_correct``). ``decision_function`` gives the frontier logit; the folded
    linear map (``w_``, ``a_``, ``g_``, ``b_``) is what ``append_tier_head`` writes to ONNX.
    """

    def __init__(self, config: AdaptConfig | None = None) -> None:
        self.config = config or AdaptConfig()

    def _design(self, f: np.ndarray, d: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
        cols = []
        if self.config.use_features:
            cols.append(f)
        if self.config.use_base_logit:
            cols.append(d.reshape(-1, 1))
        if self.config.use_cluster_prior:
            cols.append(np.asarray(prior).reshape(-1, 1))
        return np.concatenate(cols, axis=1).astype(np.float64)

    def fit(self, features: np.ndarray, base_logit: np.ndarray, target: np.ndarray,
            weights: np.ndarray | None = None, *, texts: Sequence[str] | None = None,
            tasks: Sequence[Any] | None = None) -> AdaptedTierHead:
        from threadpoolctl import threadpool_limits

        # one BLAS thread: the matrices are small, and on a shared 2-core machine more threads
        # oversubscribe (measured: 10,000 x 256 rows fitted in 6 s with one thread, 45 s with two)
        with threadpool_limits(limits=1):
            return self._fit(features, base_logit, target, weights, texts=texts, tasks=tasks)

    def _fit(self, features: np.ndarray, base_logit: np.ndarray, target: np.ndarray,
             weights: np.ndarray | None = None, *, texts: Sequence[str] | None = None,
             tasks: Sequence[Any] | None = None) -> AdaptedTierHead:
        from sklearn.model_selection import KFold

        from classifier.evaluation.clusters import ClusterPrior, ClusterPriorConfig

        cfg = self.config
        f = np.asarray(features, dtype=np.float64)
        d = np.asarray(base_logit, dtype=np.float64).reshape(-1)
        y = np.asarray(target, dtype=np.float64).reshape(-1)
        w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        n = len(y)
        if not (f.shape[0] == d.size == n == w.size):
            raise DataError(f"adapt: {f.shape[0]} feature rows, {d.size} base logits, {n} targets, {w.size} weights")
        if n < 2 * cfg.folds:
            raise DataError(f"adapt: {n} rows are too few to fit and cross-validate a head (need >= {2 * cfg.folds})")
        if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(y)):
            raise DataError("adapt: targets must lie in [0, 1] (P(frontier needed) = 1 - cheap success)")
        if np.all(y == y[0]) and y[0] in (0.0, 1.0):
            raise DataError("the adaptation rows have one outcome only (every prompt succeeded, or none did): "
                            "nothing to learn a tier head from")
        folds = list(KFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed).split(f))
        prior_col = None
        self.prior_ = None
        if cfg.use_cluster_prior:
            self.prior_ = ClusterPrior(ClusterPriorConfig(n_clusters=cfg.n_clusters, seed=cfg.seed)).fit(
                f, 1.0 - y, weights=w, texts=texts, tasks=tasks)
            prior_col = self._cross_fitted_prior(f, y, w, folds)
        X = self._design(f, d, prior_col)
        k = f.shape[1] if cfg.use_features else 0
        # standardise; project the features on their top principal components (the head is heavily
        # regularised, so little is lost, and Newton steps on ~70 columns take milliseconds)
        self.mu_ = X.mean(axis=0)
        self.sd_ = np.maximum(X.std(axis=0), 1e-6)
        Z = (X - self.mu_) / self.sd_
        n_comp = min(cfg.n_components, k, max(1, n - 1)) if k else 0
        if n_comp:
            # eigenvectors of the [k, k] covariance: cheaper than an SVD of the [n, k] matrix
            evals, evecs = np.linalg.eigh(Z[:, :k].T @ Z[:, :k])
            self.proj_ = evecs[:, np.argsort(evals)[::-1][:n_comp]]  # [k, n_comp]
        else:
            self.proj_ = np.zeros((k, 0))
        n_prior = int(cfg.use_base_logit) + int(cfg.use_cluster_prior)
        base_cols = [np.ones((n, 1)), Z[:, :k] @ self.proj_]

        def design(scale: float) -> np.ndarray:
            # prior columns scaled up: penalised scale**2 times less than the features
            return np.concatenate(base_cols + ([Z[:, k:] * scale] if n_prior else []), axis=1)

        scales = sorted(set(cfg.prior_scales)) if n_prior else [1.0]
        scores: dict[tuple[float, float], float] = {}
        oof: dict[tuple[float, float], np.ndarray] = {}
        for scale in scales:
            A = design(scale)
            for C in sorted(cfg.Cs):
                losses = []
                z_oof = np.zeros(n)
                for tr, te in folds:
                    beta = _newton_logreg(A[tr], y[tr], w[tr], C, max_iter=cfg.max_iter)
                    z_oof[te] = A[te] @ beta
                    losses.append(_log_loss(1.0 / (1.0 + np.exp(-z_oof[te])), y[te], w[te]))
                scores[(scale, C)] = float(np.mean(losses))
                oof[(scale, C)] = z_oof
        self.cv_ = {f"prior_scale_{sc:g}_C_{c:g}": v for (sc, c), v in scores.items()}
        self.prior_scale_, self.C_ = min(scores, key=scores.get)
        self.blend_, self.blend_cv_ = self._choose_blend(oof[(self.prior_scale_, self.C_)], prior_col, y, w)
        beta = _newton_logreg(design(self.prior_scale_), y, w, self.C_, max_iter=cfg.max_iter)
        # fold standardisation and projection back into one linear map of the raw inputs
        coef_z = np.zeros(X.shape[1])
        coef_z[:k] = self.proj_ @ beta[1:1 + n_comp]
        if n_prior:
            coef_z[k:] = beta[1 + n_comp:] * self.prior_scale_
        coef = coef_z / self.sd_
        b = float(beta[0] - np.sum(coef * self.mu_))
        # the blend lam * head + (1 - lam) * cluster-prior logit is one more linear map of the same inputs
        lam = self.blend_
        self.w_ = lam * coef[:k].astype(np.float64)
        self.a_ = lam * float(coef[k]) if cfg.use_base_logit else 0.0
        self.g_ = lam * float(coef[-1]) + (1.0 - lam) if cfg.use_cluster_prior else 0.0
        self.b_ = lam * b
        self.n_features_ = f.shape[1]
        logger.info("adapted head: C=%g (cv log loss %s), base-logit weight %.3f, cluster-prior weight %.3f",
                    self.C_, {k: round(v, 4) for k, v in self.cv_.items()}, self.a_, self.g_)
        return self

    def _choose_blend(self, z_head: np.ndarray, z_prior: np.ndarray | None, y: np.ndarray,
                      w: np.ndarray) -> tuple[float, dict[str, float]]:
        """Empirical-Bayes shrinkage of the head toward the per-cluster prior: the weight ``lam``
        of ``lam * head + (1 - lam) * prior`` (frontier logits), on the fitted rows only, from
        out-of-fold logits (the head refitted without the fold, the prior cross-fitted): the
        smallest ``lam`` whose weighted log loss is within one standard error (paired, per row) of
        the best one's (the one-standard-error rule: with few rows the noise is large and the
        prior, with fewer parameters, is kept; with many the head's gain is significant).

        Measured on the ood learning curve (benchmarks/adapt_curve.py, both quick bundles, 3
        seeds): taking the best out-of-fold AUROC, or the best log loss, picked the head too
        often at N = 100 (mean tier AUROC below the cluster prior's by 0.003 with the teacher);
        the one-SE rule did not. That choice was made on those evaluation numbers."""
        grid = sorted(set(self.config.blend_weights))
        if z_prior is None or grid == [1.0]:
            return 1.0, {}
        n = len(y)
        losses = {}
        for lam in grid:
            p = np.clip(1.0 / (1.0 + np.exp(-(lam * z_head + (1.0 - lam) * z_prior))), 1e-7, 1 - 1e-7)
            losses[lam] = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        mean = {lam: float(np.average(v, weights=w)) for lam, v in losses.items()}
        best = min(grid, key=lambda lam: mean[lam])
        cv = {f"{lam:g}": mean[lam] for lam in grid}
        for lam in grid:
            diff = losses[lam] - losses[best]
            m = float(np.average(diff, weights=w))
            se = float(np.sqrt(np.average((diff - m) ** 2, weights=w) * n / max(n - 1, 1) / n))
            if m <= se + 1e-12:
                cv["se"] = se
                return lam, cv
        return best, cv  # unreachable: best itself is within 0 of itself

    def _cross_fitted_prior(self, f: np.ndarray, y: np.ndarray, w: np.ndarray,
                            folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Each row's cluster-prior logit from the other folds' outcomes (no target leak)."""
        prior = self.prior_
        assert prior is not None
        c = prior.assign(f)
        k = len(prior.a_)
        m = prior.config.prior_strength
        out = np.zeros(len(y))
        for tr, te in folds:
            a = m * prior.global_rate_ + np.bincount(c[tr], weights=w[tr] * (1 - y[tr]), minlength=k)
            b = m * (1 - prior.global_rate_) + np.bincount(c[tr], weights=w[tr] * y[tr], minlength=k)
            rate = np.clip(a / (a + b), 1e-6, 1 - 1e-6)
            out[te] = np.log((1 - rate) / rate)[c[te]]
        return out

    def decision_function(self, features: np.ndarray, base_logit: np.ndarray) -> np.ndarray:
        """Frontier logit per row (the folded linear map, exactly what the ONNX graph computes)."""
        f = np.asarray(features, dtype=np.float64)
        z = np.full(f.shape[0], self.b_)
        if self.config.use_features:
            z += f @ self.w_
        if self.config.use_base_logit:
            z += self.a_ * np.asarray(base_logit, dtype=np.float64).reshape(-1)
        if self.config.use_cluster_prior and self.prior_ is not None:
            z += self.g_ * self.prior_.frontier_logit(f)
        return z

    def predict_proba(self, features: np.ndarray, base_logit: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision_function(features, base_logit)))

    def summary(self) -> dict[str, Any]:
        return {"C": self.C_, "prior_scale": self.prior_scale_, "cv_log_loss": self.cv_, "blend": self.blend_,
                "blend_cv_log_loss": self.blend_cv_,
                "base_logit_weight": self.a_, "cluster_prior_weight": self.g_,
                "intercept": self.b_, "n_features": self.n_features_, "feature_weight_norm": float(np.linalg.norm(self.w_)),
                "config": asdict(self.config)}


def append_tier_head(model: Any, head: AdaptedTierHead, feature: str, tier_name: str, pos: int) -> Any:
    """A copy of ``model`` whose ``logits_<tier>`` output is the adapted head's.

    The old output becomes the internal tensor ``base_logits_<tier>`` (the base logit input);
    the new logits are ``[-z/2, z/2]`` in class order, so softmax gives ``sigmoid(z)``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = copy.deepcopy(model)
    g = out.graph
    old, base = f"logits_{tier_name}", f"base_logits_{tier_name}"
    for node in g.node:
        node.output[:] = [base if o == old else o for o in node.output]
        node.input[:] = [base if i == old else i for i in node.input]
    position = next(i for i, o in enumerate(g.output) if o.name == old)
    n_classes = 2
    f32 = np.float32
    dvec = np.zeros((n_classes, 1), dtype=f32)
    dvec[pos, 0], dvec[1 - pos, 0] = 1.0, -1.0
    vvec = np.zeros((1, n_classes), dtype=f32)
    vvec[0, pos], vvec[0, 1 - pos] = 0.5, -0.5
    p = PREFIX
    inits = [
        numpy_helper.from_array(dvec, f"{p}D"), numpy_helper.from_array(vvec, f"{p}V"),
        numpy_helper.from_array(np.array([head.b_], dtype=f32), f"{p}b"),
        numpy_helper.from_array(np.array([head.a_], dtype=f32), f"{p}a"),
        numpy_helper.from_array(np.array([head.g_], dtype=f32), f"{p}g"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}ax1"),
        numpy_helper.from_array(head.w_.reshape(-1, 1).astype(f32), f"{p}W"),
    ]
    nodes = [
        helper.make_node("MatMul", [base, f"{p}D"], [f"{p}d"]),
        helper.make_node("Mul", [f"{p}d", f"{p}a"], [f"{p}da"]),
        helper.make_node("MatMul", [feature, f"{p}W"], [f"{p}fw"]),
    ]
    terms = [f"{p}da", f"{p}fw", f"{p}b"]
    if head.config.use_cluster_prior and head.prior_ is not None:
        pn, pi = head.prior_.onnx_nodes(feature, f"{p}prior", prefix=f"{p}cp_", opset=_opset(model))
        nodes += pn
        inits += pi
        unsq = (helper.make_node("Unsqueeze", [f"{p}prior", f"{p}ax1"], [f"{p}prior2"]) if _opset(model) >= 13
                else helper.make_node("Unsqueeze", [f"{p}prior"], [f"{p}prior2"], axes=[1]))
        nodes += [unsq, helper.make_node("Mul", [f"{p}prior2", f"{p}g"], [f"{p}pg"])]
        terms.append(f"{p}pg")
    nodes += [
        helper.make_node("Sum", terms, [f"{p}z"]),
        helper.make_node("MatMul", [f"{p}z", f"{p}V"], [old]),
    ]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    new_out = helper.make_tensor_value_info(old, TensorProto.FLOAT, ["batch", n_classes])
    del g.output[position]
    g.output.insert(position, new_out)
    onnx.checker.check_model(out)
    return out


# -- the whole command ---------------------------------------------------------------------------
@dataclass
class AdaptResult:
    out: Path
    gate: dict[str, Any]
    metrics: dict[str, Any]
    head: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    model_version: str | None = None


def _split_rows(n: int, cal_share: float, holdout_share: float, seed: int,
                groups: np.ndarray | None = None) -> np.ndarray:
    """'fit' / 'calibration' / 'holdout' per row, by group when ``groups`` is given.

    The generator is salted: with a bare ``default_rng(seed)`` the split's draws are exactly the
    first draws of any other ``default_rng(seed)`` stream, so rows sampled or labelled with the
    same seed (a benchmark's draw, a simulation) lined up with the split (measured: the test rows
    put every hard prompt in calibration/holdout and none in fit)."""
    rng = np.random.default_rng([seed, _SPLIT_SALT])
    keys = groups if groups is not None else np.arange(n)
    uniq = np.unique(keys)
    u = rng.random(len(uniq))
    part = np.where(u < holdout_share, "holdout", np.where(u < holdout_share + cal_share, "calibration", "fit"))
    lookup = dict(zip(uniq.tolist(), part.tolist(), strict=True))
    return np.array([lookup[k] for k in keys.tolist()], dtype=object)


def _needs_frontier(rows: pd.DataFrame) -> np.ndarray:
    if "tier" in rows.columns and rows["tier"].notna().all():
        return (rows["tier"].astype(str) == "frontier").to_numpy()
    return (rows["cheap_correct"].to_numpy(dtype=np.float64) < 0.5)


def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=bool)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else None


def evaluate_scores(rows: pd.DataFrame, p_frontier: np.ndarray, prices: Any | None = None,
                    quality_ratio: float = 0.95) -> dict[str, Any]:
    """Tier AUROC on ``rows`` and, where both outcomes and prices are known, APGR and the saving at
    ``quality_ratio`` of all-frontier quality."""
    from classifier.evaluation.costs import (
        RoutingOutcomes,
        apgr_defined,
        quality_gap,
        summarize_router,
    )

    out: dict[str, Any] = {"n": int(len(rows)), "auroc": _auroc(_needs_frontier(rows), p_frontier)}
    if prices is not None and {"frontier_correct", "input_tokens", "cheap_model"} <= set(rows.columns):
        frame = rows.reset_index(drop=True)
        o = RoutingOutcomes.from_frame(frame, prices)
        if len(o):
            r = summarize_router(o, np.asarray(p_frontier)[o.rows], quality_ratio=quality_ratio)
            cq = r["cost_at_quality"]
            gap, se = quality_gap(o)
            defined = apgr_defined(o)
            # APGR divides by the tiers' quality gap: within sampling error it is noise (None here,
            # with the gap, so a reader sees why)
            out.update({"quality_gap": gap, "quality_gap_se": se, "apgr_defined": defined,
                        "apgr": r["apgr"] if defined else None, "saving_at_quality": cq.get("saving") if cq.get("reachable") else None,
                        "cheap_share_at_quality": cq.get("cheap_share") if cq.get("reachable") else None})
    return out


def _targets(rows: pd.DataFrame, hard: bool) -> np.ndarray:
    y = 1.0 - rows["cheap_correct"].to_numpy(dtype=np.float64)
    return (y > 0.5).astype(np.float64) if hard else y


def adapt_bundle(  # noqa: C901 - one linear recipe
    bundle: str | Path,
    rows: pd.DataFrame,
    out: str | Path,
    *,
    config: AdaptConfig | None = None,
    base_rows: pd.DataFrame | None = None,
    base_weight: float = 0.0,
    calibration_share: float = 0.2,
    holdout_share: float = 0.2,
    budget: str = "misroute",
    alpha: float = 0.05,
    delta: float = 0.05,
    max_regression: float = 0.0,
    hard_targets: bool = False,
    prices: Any | None = None,
    threads: int = 2,
    mlflow: bool = True,
    registered_name: str = "tierwise-adapted",
    experiment: str = "tierwise-adapt",
    force: bool = False,
    progress: bool = True,
    run_batches: RunBatches | None = None,
) -> AdaptResult:
    """Fit, calibrate, gate and write an adapted bundle (module docstring). Returns what happened.

    ``rows``: ``text``, ``cheap_correct`` in [0, 1] (graded ok), optional ``frontier_correct``,
    ``weight`` (e.g. inverse propensity), ``tier``, ``task``, ``group`` and cost columns.
    The bundle is written only when the gate passes (or ``force``). ``run_batches``: where the
    feature extraction's ONNX batches run (``BundleFeaturizer.transform``; default: here).
    """

    from classifier.evaluation import calibration as cal
    from classifier.evaluation import thresholds as th
    from classifier.evaluation.quality_budget import (
        evaluate_loss_threshold,
        fit_loss_threshold,
        quality_loss,
    )
    from classifier.serving import bundle as bundle_io
    from classifier.serving.runtime import Router

    cfg = config or AdaptConfig()
    if budget not in ("misroute", "quality-loss"):
        raise ConfigError(f"budget must be 'misroute' or 'quality-loss', got {budget!r}")
    if not (0 < calibration_share < 1 and 0 < holdout_share < 1 and calibration_share + holdout_share < 0.9):
        raise ConfigError("calibration and holdout shares must be in (0, 1) and leave >= 10% of rows to fit")
    if base_weight < 0:
        raise ConfigError(f"base_weight must be >= 0, got {base_weight}")
    bundle, out = Path(bundle), Path(out)
    if out.resolve() == bundle.resolve():
        raise ConfigError("--out must differ from --bundle: adapt writes a new bundle version next to its parent")
    rows = rows.reset_index(drop=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    feat = BundleFeaturizer(bundle, threads=threads)
    try:
        schema, tier_name = feat.schema, feat.router.policy.tier_head
        tier = schema.head(tier_name)
        if tier.num_classes != 2:
            raise ConfigError(f"adapt needs a 2-class tier head; {tier_name!r} has {tier.num_classes} classes")
        pos = tier.index(tier.positive_class or tier.classes[1])
        t0 = time.perf_counter()
        texts = rows["text"].astype(str).tolist()
        f_all, logits_all = feat.transform(texts, progress=progress, run_batches=run_batches)
        base_f = base_logits = None
        if base_rows is not None and base_weight > 0 and len(base_rows):
            base_rows = base_rows.reset_index(drop=True)
            base_f, base_logits = feat.transform(base_rows["text"].astype(str).tolist(), progress=progress,
                                                 run_batches=run_batches)
        timings["features_s"] = time.perf_counter() - t0
        parent_temp = feat.router.temperatures[tier_name]
        parent_bias = feat.router.biases.get(tier_name)
        parent_manifest = feat.router.manifest
        model = feat.model
        feature_name = feat.feature_name
    finally:
        feat.close()

    d_all = base_tier_logit(logits_all[tier_name], pos)
    groups = rows["group"].astype(str).to_numpy() if "group" in rows.columns else None
    part = _split_rows(len(rows), calibration_share, holdout_share, cfg.seed, groups)
    fit_m, cal_m, hold_m = part == "fit", part == "calibration", part == "holdout"
    if min(fit_m.sum(), cal_m.sum(), hold_m.sum()) < 2:
        raise DataError(f"adapt: {len(rows)} rows give too few fit/calibration/holdout rows "
                        f"({fit_m.sum()}/{cal_m.sum()}/{hold_m.sum()})")
    y_all = _targets(rows, hard_targets)
    w_all = rows["weight"].to_numpy(dtype=np.float64) if "weight" in rows.columns else np.ones(len(rows))
    F, D, Y, W = f_all[fit_m], d_all[fit_m], y_all[fit_m], w_all[fit_m]
    fit_texts = [texts[i] for i in np.flatnonzero(fit_m)]
    fit_tasks = rows["task"].to_numpy()[fit_m] if "task" in rows.columns else None
    if base_f is not None:
        assert base_rows is not None and base_logits is not None
        F = np.concatenate([F, base_f])
        D = np.concatenate([D, base_tier_logit(base_logits[tier_name], pos)])
        Y = np.concatenate([Y, _targets(base_rows, hard_targets)])
        W = np.concatenate([W, np.full(len(base_rows), base_weight)])
        fit_texts += base_rows["text"].astype(str).tolist()
        if fit_tasks is not None and "task" in base_rows.columns:
            fit_tasks = np.concatenate([fit_tasks, base_rows["task"].to_numpy()])
        else:
            fit_tasks = None
    t0 = time.perf_counter()
    head = AdaptedTierHead(cfg).fit(F, D, Y, W, texts=fit_texts, tasks=fit_tasks)
    timings["fit_s"] = time.perf_counter() - t0

    # recalibrate the new head on the calibration rows ------------------------------------------
    z_all = head.decision_function(f_all, d_all)
    new_logits = np.zeros((len(rows), 2))
    new_logits[:, pos], new_logits[:, 1 - pos] = z_all / 2, -z_all / 2
    need = _needs_frontier(rows)
    labels = np.where(need, pos, 1 - pos).astype(np.int64)
    report = cal.calibrate_heads(schema, {tier_name: new_logits[cal_m]}, {tier_name: labels[cal_m]})
    hc = report.heads[tier_name]
    p_new = hc.predict_proba(new_logits)[:, pos]
    base_cal = cal.HeadCalibration(tier_name, 0, parent_temp, {}, {},
                                   bias=None if parent_bias is None else tuple(parent_bias))
    p_base = base_cal.predict_proba(logits_all[tier_name])[:, pos]

    cc = cf = None
    if prices is not None and {"input_tokens", "cheap_model", "frontier_model"} <= set(rows.columns):
        from classifier.evaluation.prices import row_costs

        cc, cf = row_costs(rows, prices)
    has_both = "frontier_correct" in rows.columns and rows["frontier_correct"].notna().all()
    loss = quality_loss(rows["cheap_correct"], rows["frontier_correct"]) if has_both else None

    def sub(a: np.ndarray | None, m: np.ndarray) -> np.ndarray | None:
        return None if a is None else a[m]

    if budget == "quality-loss":
        if loss is None:
            raise DataError("--budget quality-loss needs frontier_correct on every row")
        lt = fit_loss_threshold(p_new[cal_m], loss[cal_m], alpha=alpha, delta=delta, needs_frontier=need[cal_m],
                                cost_cheap=sub(cc, cal_m), cost_frontier=sub(cf, cal_m))
        threshold, thr_info = lt.threshold, lt.to_dict()
    else:
        tt = th.fit_tier_threshold(p_new[cal_m], need[cal_m], alpha=alpha, delta=delta,
                                   cost_cheap=sub(cc, cal_m), cost_frontier=sub(cf, cal_m))
        threshold, thr_info = tt.threshold, tt.to_dict()

    # the release gate on the held-out rows ------------------------------------------------------
    hold = rows[hold_m]
    metrics = {"parent": evaluate_scores(hold, p_base[hold_m], prices),
               "adapted": evaluate_scores(hold, p_new[hold_m], prices)}
    held = th.evaluate_tier_threshold(threshold, p_new[hold_m], need[hold_m], cost_cheap=sub(cc, hold_m),
                                      cost_frontier=sub(cf, hold_m), delta=delta)
    if loss is not None:
        held["quality_loss"] = evaluate_loss_threshold(threshold, p_new[hold_m], loss[hold_m])["quality_loss"]
    metrics["holdout_threshold"] = held
    metrics["threshold"] = thr_info
    metrics["rows"] = {"fit": int(fit_m.sum()), "calibration": int(cal_m.sum()), "holdout": int(hold_m.sum()),
                       "base": 0 if base_f is None else int(len(base_f))}
    old, new = metrics["parent"]["auroc"], metrics["adapted"]["auroc"]
    if old is None or new is None:
        gate = {"metric": "tier_auroc", "old": old, "new": new, "passed": bool(force),
                "message": "release gate cannot be evaluated: the held-out rows have one outcome only"}
    else:
        from classifier.evaluation.report import check_gate

        gate = check_gate([{"metric": "tier_auroc", "old": old, "new": new, "direction": "higher",
                            "delta": new - old, "worse_by": old - new}], "tier_auroc", max_regression)
    logger.info(gate["message"])
    result = AdaptResult(out=out, gate=gate, metrics=metrics, head=head.summary(), timings=timings)
    if not gate["passed"] and not force:
        timings["total_s"] = time.perf_counter() - t_start
        return result

    # write the new bundle version ---------------------------------------------------------------
    t0 = time.perf_counter()
    new_model = append_tier_head(model, head, feature_name, tier_name, pos)
    cal_doc = json.loads((bundle / bundle_io.CALIBRATION_FILE).read_text(encoding="utf-8")) \
        if (bundle / bundle_io.CALIBRATION_FILE).is_file() else {"temperatures": {}}
    cal_doc.setdefault("temperatures", {})[tier_name] = float(hc.temperature)
    biases = dict(cal_doc.get("biases") or {})
    biases.pop(tier_name, None)
    if hc.bias is not None:
        biases[tier_name] = [float(b) for b in hc.bias]
    cal_doc["biases"] = biases
    if not biases:
        cal_doc.pop("biases")
    cal_doc["fitted_on"] = f"tierwise adapt: {int(cal_m.sum())} calibration rows of the user's data (tier head)"
    cal_doc.setdefault("metrics", {})["adapt_tier"] = {"before": hc.before, "after": hc.after}
    from classifier.serving.policy import Policy

    policy = Policy.from_yaml(bundle / bundle_io.POLICY_FILE)
    provenance = {"tier": {"method": f"adapt+{budget}", "alpha": alpha, "delta": delta, "n": int(cal_m.sum()),
                           "split": "adapt-calibration", "budget": budget,
                           "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    new_policy = policy.with_thresholds(tier=min(max(threshold, 1e-6), 1.0), provenance=provenance,
                                        version=f"{policy.version}+adapt.{time.strftime('%Y%m%d%H%M%S', time.gmtime())}")
    files: dict[str, Any] = {name: bundle / name for name in parent_manifest.files}
    files[bundle_io.MODEL_FILE] = new_model.SerializeToString()
    files[bundle_io.CALIBRATION_FILE] = json.dumps(_jsonable(cal_doc), indent=2, sort_keys=True) + "\n"
    files[bundle_io.POLICY_FILE] = new_policy.to_yaml(header=f"Routing policy adapted by 'tierwise adapt' from {bundle}")
    parent = {"path": str(bundle), "manifest_sha256": bundle_io.sha256_file(bundle / bundle_io.MANIFEST_FILE),
              "mlflow_model_version": parent_manifest.mlflow_model_version,
              "training_run_id": parent_manifest.training_run_id}
    # what `tierwise report` shows of this adaptation (report's adapt section): numbers only, no prompt text
    clusters = [{k: c[k] for k in ("cluster", "n", "cheap_rate", "interval", "task")}
                for c in head.prior_.summary()[:15]] if head.prior_ is not None else None
    holdout = {"parent": metrics["parent"], "adapted": metrics["adapted"], "threshold": held}
    adapt_meta = {"rows": metrics["rows"], "budget": budget, "alpha": alpha, "gate": gate, "head": head.summary(),
                  "feature_tensor": feature_name, "holdout": holdout, "clusters": clusters}
    if out.exists() and out.is_dir() and not (out / bundle_io.MANIFEST_FILE).exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty and not a bundle")
    bundle_io.write_bundle_files(out, files, kind=parent_manifest.kind, input_limits=parent_manifest.input_limits,
                                 quantization=parent_manifest.quantization, library_versions=bundle_io.library_versions(),
                                 parent_bundle=parent, adapt=_jsonable(adapt_meta))

    # served == fitted, on held-out rows ----------------------------------------------------------
    # (1) the written graph computes the fitted head: its served logits against the numpy head on
    # the features and base logits of the same run (exact up to float32);
    # (2) the runtime reads the rows the head was fitted on: served logits against the fitted
    # ones. An int8 bundle quantises activations per batch (dynamic quantisation), so a row's
    # features move with the other rows of its batch: measured 0.11 logit on the v8 int8 teacher
    # against 5.6e-7 for an fp32 bundle. (2) is exact for fp32 bundles and reported for int8 ones.
    check = np.flatnonzero(hold_m)[:256]
    check_texts = [texts[i] for i in check]
    served_fz = BundleFeaturizer(out, threads=threads, extra_outputs=[f"base_logits_{tier_name}"])
    try:
        f_chk, lg_chk = served_fz.transform(check_texts, progress=False)
    finally:
        served_fz.close()
    z_chk = head.decision_function(f_chk, base_tier_logit(lg_chk[f"base_logits_{tier_name}"], pos))
    graph_diff = float(np.max(np.abs(lg_chk[tier_name][:, pos] - z_chk / 2))) if check.size else 0.0
    if graph_diff > 1e-3:
        raise ExportValidationError(f"adapted bundle parity failed: the graph's tier logits differ from the "
                                    f"fitted head's by {graph_diff:.2e} on the same features")
    with Router.load(out, threads=threads) as router:
        served = router.logits(check_texts)[tier_name]
    diff = float(np.max(np.abs(served - new_logits[check]))) if check.size else 0.0
    if diff > 1e-3 and parent_manifest.quantization is None:
        raise ExportValidationError(f"adapted bundle parity failed: served tier logits differ by {diff:.2e}")
    if diff > 1e-3:
        logger.info("served vs fitted tier logits: max %.3g apart (%s bundle: activations are quantised "
                    "per batch); the graph itself matches the fitted head within %.1e", diff,
                    parent_manifest.quantization, graph_diff)
    metrics["parity_max_abs_diff"] = diff
    metrics["parity_graph_max_abs_diff"] = graph_diff
    timings["write_s"] = time.perf_counter() - t0

    if mlflow:
        result.run_id, result.model_version = _log_mlflow(out, result, experiment, registered_name, parent)
        if result.run_id:
            bundle_io.update_manifest(out, training_run_id=result.run_id, mlflow_model_version=result.model_version)
    timings["total_s"] = time.perf_counter() - t_start
    return result


def _log_mlflow(out: Path, result: AdaptResult, experiment: str, registered_name: str,
                parent: Mapping[str, Any]) -> tuple[str | None, str | None]:
    from classifier import tracking

    with tracking.TrackedRun(experiment, run_name=f"adapt-{out.name}",
                             tags={"tierwise.command": "adapt", "tierwise.parent_bundle": parent["path"]}) as run:
        run.log_params({"head": {k: v for k, v in result.head.items() if k != "cv_log_loss"},
                        "rows": result.metrics["rows"], "parent": dict(parent)})
        flat = {}
        for who in ("parent", "adapted"):
            for k, v in result.metrics[who].items():
                if isinstance(v, (int, float)) and v is not None:
                    flat[f"holdout_{who}_{k}"] = float(v)
        for k, v in result.metrics["holdout_threshold"].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                flat[f"holdout_threshold_{k}"] = float(v)
        run.log_metrics(flat)
        run.log_dict(_jsonable({"gate": result.gate, "metrics": result.metrics}), "adapt_report.json")
        _, version = run.register_model_dir(out, registered_name, params={"parent": parent["path"]},
                                            tags={"kind": "adapted-bundle"})
        return run.run_id, version


# -- CLI ---------------------------------------------------------------------------------------------
def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="the shipped (parent) bundle directory")
    parser.add_argument("--rows", required=True,
                        help="the team's training rows (.parquet/.jsonl/.csv): text, cheap_correct (0..1), "
                        "optional frontier_correct, weight, tier, task, group; 'tierwise feedback join' writes them")
    parser.add_argument("--out", required=True, help="directory of the new bundle version")
    parser.add_argument("--base-data", default=None,
                        help="mix in rows of this data set's train split (parquet or folder with dataset.parquet)")
    parser.add_argument("--base-weight", type=float, default=0.0,
                        help="weight of each base row relative to a user row (default 0: user rows only)")
    parser.add_argument("--base-rows", type=int, default=5000, help="at most this many base rows (seeded sample)")
    parser.add_argument("--budget", choices=("misroute", "quality-loss"), default="misroute",
                        help="what --alpha bounds on the calibration rows (default misroute)")
    parser.add_argument("--alpha", type=float, default=0.05, help="risk budget (default 0.05)")
    parser.add_argument("--delta", type=float, default=0.05, help="1 - confidence of the bound (default 0.05)")
    parser.add_argument("--calibration-share", type=float, default=0.2, help="share of rows for calibration (0.2)")
    parser.add_argument("--holdout-share", type=float, default=0.2, help="share of rows for the release gate (0.2)")
    parser.add_argument("--max-regression", type=float, default=0.0,
                        help="release gate: largest allowed fall of held-out tier AUROC vs the parent (default 0)")
    parser.add_argument("--no-cluster-prior", action="store_true", help="leave the per-cluster prior out of the head")
    parser.add_argument("--no-base-logit", action="store_true", help="leave the parent's tier logit out of the head")
    parser.add_argument("--clusters", type=int, default=32, help="clusters of the per-cluster prior (default 32)")
    parser.add_argument("--hard-targets", action="store_true",
                        help="binarise graded outcomes (cheap_correct < 0.5 -> frontier) instead of soft targets")
    parser.add_argument("--prices", default=str(DEFAULT_PRICES_PATH), help="prices for the saving figures (default: the shipped table)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row split and cross-validation")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run or register the bundle")
    parser.add_argument("--registered-name", default="tierwise-adapted", help="MLflow registered model name")
    parser.add_argument("--force", action="store_true", help="write the bundle even when the release gate fails")
    from classifier.scale.engine import add_engine_arguments  # options only: Ray is not imported

    add_engine_arguments(parser)  # --engine ray: feature extraction on the cluster (classifier/scale/adapt.py)


def run_adapt(args: argparse.Namespace) -> int:
    from classifier.evaluation.prices import Prices
    from classifier.training.feedback import load_training_rows

    rows = load_training_rows(args.rows)
    base = None
    if args.base_data and args.base_weight > 0:
        path = Path(args.base_data)
        path = path / "dataset.parquet" if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"--base-data {path} does not exist")
        frame = pd.read_parquet(path)
        base = frame[(frame["split"] == "train") & frame["cheap_correct"].notna() & frame["tier"].notna()]
        if len(base) > args.base_rows:
            base = base.sample(n=args.base_rows, random_state=args.seed)
    prices = Prices.from_yaml(args.prices) if args.prices and Path(args.prices).is_file() else None
    cfg = AdaptConfig(use_cluster_prior=not args.no_cluster_prior, use_base_logit=not args.no_base_logit,
                      n_clusters=args.clusters, seed=args.seed)
    options = {"config": cfg, "base_rows": base, "base_weight": args.base_weight,
               "calibration_share": args.calibration_share, "holdout_share": args.holdout_share,
               "budget": args.budget, "alpha": args.alpha, "delta": args.delta, "max_regression": args.max_regression,
               "hard_targets": args.hard_targets, "prices": prices, "threads": args.threads,
               "mlflow": not args.no_mlflow, "registered_name": args.registered_name, "force": args.force}
    if getattr(args, "engine", "local") == "ray":
        from classifier.scale.adapt import ray_feature_batches
        from classifier.scale.engine import actor_count, check_engine_args, ray_session

        check_engine_args(args)
        with ray_session(args.address, args.ray_cpus) as ray:
            runner = ray_feature_batches(args.bundle, actors=actor_count(ray, args.threads, args.actors),
                                         threads=args.threads)
            result = adapt_bundle(args.bundle, rows, args.out, run_batches=runner, **options)
    else:
        result = adapt_bundle(args.bundle, rows, args.out, **options)
    m = result.metrics

    def f(x: Any) -> str:
        return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))

    lines = [f"rows: {m['rows']}",
             f"head: C={result.head['C']}, base-logit weight {result.head['base_logit_weight']:.3f}, "
             f"cluster-prior weight {result.head['cluster_prior_weight']:.3f}, blend toward the prior "
             f"{result.head['blend']:g} (1 = head alone, 0 = cluster prior alone)",
             f"held-out tier AUROC: parent {f(m['parent']['auroc'])} -> adapted {f(m['adapted']['auroc'])}; "
             f"APGR {f(m['parent'].get('apgr'))} -> {f(m['adapted'].get('apgr'))}",
             f"threshold ({args.budget}, alpha {args.alpha:g}) {m['threshold']['threshold']:.4f}: held-out misroute "
             f"{f(m['holdout_threshold']['misroute_rate'])}, quality loss {f(m['holdout_threshold'].get('quality_loss'))}, "
             f"cheap share {f(m['holdout_threshold']['cheap_share'])}, saving {f(m['holdout_threshold'].get('saving'))}",
             result.gate["message"],
             "timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())]
    if result.gate["passed"] or args.force:
        lines.append(f"wrote {result.out} (parent {args.bundle}; MLflow run {result.run_id}, "
                     f"version {result.model_version})")
    else:
        lines.append("no bundle written (pass --force to write it anyway)")
    report_path = Path(args.out).with_name(Path(args.out).name + ".adapt.json")
    report_path.write_text(json.dumps(_jsonable(asdict(result)), indent=2, default=str) + "\n", encoding="utf-8")
    lines.append(f"report: {report_path}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if (result.gate["passed"] or args.force) else 1
