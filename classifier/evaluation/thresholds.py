"""Decision thresholds with finite-sample guarantees: the tier threshold and the sensitivity gates.

**Tier threshold (risk control).** A prompt whose calibrated ``p_frontier`` is below the threshold
``t`` goes to the cheap tier. The *misroute loss* of a prompt is 1 when it needs the frontier tier
(its tier label is ``frontier``) but is sent cheap: ``L_i(t) = y_i * 1[s_i < t]``. The budget
``alpha`` bounds the misroute *risk* ``R(t) = P(y = 1, s < t)``, the share of ALL prompts that
need frontier but are kept on cheap; the rate conditional on frontier prompts,
``P(s < t | y = 1)``, is reported too.

``fit_tier_threshold(method="ltt")`` picks the largest ``t`` whose one-sided Clopper-Pearson
(exact binomial) upper bound at level ``1 - delta`` on the calibration misroute count is
``<= alpha``. This is Learn-then-Test with fixed-sequence testing (Angelopoulos, Bates et al.,
2021): candidate thresholds are tested in order from conservative (``t = 0``: nothing cheap, zero
risk) to permissive, each with the null ``H_t: R(t) > alpha`` and the exact binomial p-value
``P(Binom(n, alpha) <= k(t))``; the scan stops at the first null it cannot reject. Why the
guarantee ``P(R(t_hat) > alpha) <= delta`` holds for the data-dependent, continuous grid used
here: ``k(t)`` is non-decreasing in ``t``, so a threshold passes iff ``k(t) <= c``, where
``c = max{k : P(Binom(n, alpha) <= k) <= delta}`` depends on ``(n, alpha, delta)`` only. Let
``t* = sup{t : R(t) <= alpha}``. ``R(t_hat) > alpha`` needs ``t_hat > t*`` and therefore
``k(t*+) <= c``, where ``k(t*+)`` counts ``y = 1, s <= t*`` and is ``Binom(n, q)`` with
``q = lim R(t), t -> t*+ >= alpha``. So ``P(R(t_hat) > alpha) <= P(Binom(n, alpha) <= c) <= delta``.
With the passing set a prefix of the ordered candidates, "largest passing t" and "fixed-sequence
scan" give the same threshold: ``t_hat`` is the ``(c+1)``-th smallest score among frontier
prompts (all prompts cheap when there are at most ``c`` of them).

``method="crc"`` is conformal risk control (Angelopoulos et al., 2022): the largest ``t`` with
``n/(n+1) * risk_hat(t) + B/(n+1) <= alpha`` (``B = 1``, the loss bound), which guarantees
``E[R(t_hat)] <= alpha`` (in expectation over calibration sets, not with probability
``1 - delta``) and is less conservative.

Both assume the calibration and future prompts are exchangeable (i.i.d.): under drift the bound
does not hold, which is what ``tierwise drift`` watches for. ``threshold_for_cheap_share`` is the
budget-first mode: the score quantile that sends a target share cheap, with the resulting
misroute bound *reported* (approximate there: the threshold is chosen from the same scores).

**Sensitivity gates.** Per class ``c`` (one-vs-rest on ``p_c``), ``fit_recall_threshold`` picks the
largest threshold whose recall on calibration positives has a Clopper-Pearson lower bound
``>= target`` at level ``1 - delta`` (the same argument with "missed positive" as the loss,
conditional on the positives). Tuned separately from cost: a gate trades benign prompts sent to
a restricted tier for caught sensitive ones, never for money.

**Precision floor.** Policy owners state a gate as "recall >= R at precision >= P": a gate that
flags a large share of benign traffic blocks ordinary work. With ``min_precision = P > 0`` the
threshold is never below ``t_P``, the smallest threshold (so the largest recall) whose precision on
the calibration split (class ``c`` vs every other labelled row) meets ``P``, judged by the point
estimate of precision (a Clopper-Pearson lower bound proved far too conservative on the
template-disjoint default data); ``precision_bound`` records ``point_estimate``. The floor stops
the "catch every calibration positive" fallback from flagging a large share of benign prompts. When the floor is above the recall threshold the floor wins, the result says
``recall_target_met = False`` and reports the recall actually reached, with a logged warning.
When no threshold reaches ``P`` even by point estimate, the recall threshold is kept and
``precision_floor_met = False``. ``min_precision = 0`` disables the floor (the recall bound alone).
The floor is a calibration-split statement, not a finite-sample guarantee like the recall bound.

What is left out: fitting probabilities (``calibration.py``), routing (the policy engine) and the
CLI (``calibrate_cmd.py``). numpy + scipy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from classifier.errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("ltt", "crc")
# thresholds live in (0, 1]; "1.0 + tiny" would be "everything cheap", which the policy's
# validated range does not allow, so everything-cheap is expressed as 1.0 and p = 1.0 exactly
# stays frontier (a calibrated probability of exactly 1 does not occur in practice)
_MAX_T = 1.0
_MIN_GATE_T = 1e-6
# policy owners' goal: a sensitivity gate must be right at least this often when it flags a prompt
# 0.8, not 0.95: a missed pii prompt leaks data, a flagged benign one only goes to a safer tier.
# With 0.95 the floor lifted the pii gate from ~0.85 to 0.98 and 36% of test pii prompts leaked;
# the floor's job is to stop the "catch every positive" fallback flagging 15% of benign traffic.
# 95% confidence: at 90%, one calibration draw in ten may give a threshold over budget
DEFAULT_DELTA = 0.05
DEFAULT_MIN_PRECISION = 0.8

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_MIN_PRECISION",
    "RecallThreshold",
    "TierThreshold",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "evaluate_recall_threshold",
    "evaluate_tier_threshold",
    "fit_recall_threshold",
    "fit_tier_threshold",
    "max_passing_count",
    "threshold_for_cheap_share",
]


# -- exact binomial bounds -----------------------------------------------------------------------
def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided upper bound on a binomial rate after ``k`` events in ``n`` trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return float(beta_dist.ppf(confidence, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided lower bound on a binomial rate after ``k`` events in ``n`` trials."""
    if n <= 0 or k <= 0:
        return 0.0
    return float(beta_dist.ppf(1.0 - confidence, k, n - k + 1))


def max_passing_count(n: int, alpha: float, delta: float) -> int:
    """Largest ``k`` with ``P(Binom(n, alpha) <= k) <= delta`` (i.e. CP upper bound <= alpha);
    -1 when even ``k = 0`` does not pass (``n`` too small for this ``alpha`` and ``delta``)."""
    if n <= 0:
        return -1
    ks = np.arange(n + 1)
    ok = binom.cdf(ks, n, alpha) <= delta
    return int(ks[ok].max()) if ok.any() else -1


def _crc_count(n: int, alpha: float, bound: float = 1.0) -> int:
    """Largest misroute count ``k`` with ``n/(n+1) * k/n + B/(n+1) <= alpha``; -1 if none."""
    return int(math.floor(alpha * (n + 1) - bound + 1e-9))


def _check_rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < value < 1.0):
        raise ConfigError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ConfigError(f"scores ({s.size}) and labels ({y.size}) must have the same length")
    if s.size == 0:
        raise ConfigError("no calibration rows: the threshold needs labelled calibration prompts")
    if not np.isfinite(s).all():
        raise ConfigError("scores contain NaN or inf")
    return s, y


# -- the tier threshold --------------------------------------------------------------------------
@dataclass
class TierThreshold:
    """A fitted tier threshold and what it does on the rows it was fitted on.

    ``misroute_rate``: share of all prompts needing frontier but sent cheap (the controlled risk);
    ``misroute_rate_frontier``: the same among frontier prompts only; ``misroute_upper``: the
    Clopper-Pearson upper bound at ``1 - delta`` on ``misroute_rate``; ``feasible`` is False when
    no permissive threshold passes (then ``threshold`` is 0: everything goes frontier).
    Costs are mean USD per prompt (None without cost arrays).
    """

    threshold: float
    method: str
    alpha: float | None
    delta: float | None
    n: int
    n_frontier: int
    misroutes: int
    misroute_rate: float
    misroute_rate_frontier: float | None
    misroute_upper: float
    cheap_share: float
    feasible: bool = True
    cost_per_prompt: float | None = None
    all_frontier_cost_per_prompt: float | None = None
    saving: float | None = None
    target_cheap_share: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cost_summary(cheap_mask: np.ndarray, cost_cheap: Any, cost_frontier: Any) -> dict[str, float | None]:
    if cost_cheap is None or cost_frontier is None:
        return {"cost_per_prompt": None, "all_frontier_cost_per_prompt": None, "saving": None}
    cc = np.asarray(cost_cheap, dtype=np.float64).reshape(-1)
    cf = np.asarray(cost_frontier, dtype=np.float64).reshape(-1)
    if cc.shape != cheap_mask.shape or cf.shape != cheap_mask.shape:
        raise ConfigError(f"cost arrays must have one entry per row ({cheap_mask.size}), got {cc.size} and {cf.size}")
    ok = np.isfinite(cc) & np.isfinite(cf)  # rows without prices/tokens are left out of the costs
    if not ok.any():
        return {"cost_per_prompt": None, "all_frontier_cost_per_prompt": None, "saving": None}
    routed = np.where(cheap_mask[ok], cc[ok], cf[ok])
    cost, all_frontier = float(routed.mean()), float(cf[ok].mean())
    saving = 1.0 - cost / all_frontier if all_frontier > 0 else None
    return {"cost_per_prompt": cost, "all_frontier_cost_per_prompt": all_frontier, "saving": saving}


def _summarise(t: float, s: np.ndarray, y: np.ndarray, *, method: str, alpha: float | None,
               delta: float | None, cost_cheap: Any, cost_frontier: Any, feasible: bool = True,
               target: float | None = None, notes: list[str] | None = None) -> TierThreshold:
    cheap = s < t
    k = int(np.sum(cheap & y))
    n, m = int(s.size), int(y.sum())
    conf = 1.0 - (delta if delta is not None else 0.1)
    return TierThreshold(
        threshold=float(t), method=method, alpha=alpha, delta=delta, n=n, n_frontier=m, misroutes=k,
        misroute_rate=k / n, misroute_rate_frontier=(k / m) if m else None,
        misroute_upper=clopper_pearson_upper(k, n, conf), cheap_share=float(cheap.mean()),
        feasible=feasible, target_cheap_share=target, notes=list(notes or []),
        **_cost_summary(cheap, cost_cheap, cost_frontier),
    )


def _threshold_at_count(s: np.ndarray, y: np.ndarray, c: int) -> float:
    """Largest t with at most ``c`` frontier prompts scored below it (0 when ``c < 0``)."""
    if c < 0:
        return 0.0
    pos = np.sort(s[y])
    if c >= pos.size:
        return _MAX_T
    # every t <= pos[c] keeps at most c frontier prompts (those strictly below pos[c]) cheap
    return float(min(pos[c], _MAX_T))


def fit_tier_threshold(scores: Any, needs_frontier: Any, *, alpha: float = 0.05, delta: float = DEFAULT_DELTA,
                       method: str = "ltt", cost_cheap: Any = None, cost_frontier: Any = None) -> TierThreshold:
    """Largest threshold whose misroute risk is controlled at ``alpha`` (see the module docstring).

    ``scores``: calibrated ``p_frontier`` of calibration prompts; ``needs_frontier``: their tier
    label is frontier. ``cost_cheap`` / ``cost_frontier``: optional per-row USD costs.
    """
    alpha = _check_rate("alpha", alpha)
    delta = _check_rate("delta", delta)
    if method not in METHODS:
        raise ConfigError(f"method must be one of {list(METHODS)}, got {method!r}")
    s, y = _scores_labels(scores, needs_frontier)
    n = s.size
    c = max_passing_count(n, alpha, delta) if method == "ltt" else _crc_count(n, alpha)
    notes: list[str] = []
    feasible = c >= 0
    if not feasible:
        need = math.ceil(math.log(delta) / math.log(1 - alpha)) if method == "ltt" else math.ceil(1 / alpha - 1)
        notes.append(f"n={n} calibration rows cannot certify alpha={alpha:g} (needs n >= {need}); "
                     "threshold 0: every prompt goes frontier")
        logger.warning(notes[-1])
    t = _threshold_at_count(s, y, c)
    return _summarise(t, s, y, method=method, alpha=alpha, delta=delta, cost_cheap=cost_cheap,
                      cost_frontier=cost_frontier, feasible=feasible, notes=notes)


def threshold_for_cheap_share(scores: Any, needs_frontier: Any, target: float, *, delta: float = DEFAULT_DELTA,
                              cost_cheap: Any = None, cost_frontier: Any = None) -> TierThreshold:
    """The threshold that sends (about) ``target`` of the calibration prompts cheap.

    The misroute rate, its upper bound and the costs at that threshold are reported; nothing is
    guaranteed (``alpha`` is None). Use it to see what a budget costs in misroutes.
    """
    target = _check_rate("target cheap share", target)
    delta = _check_rate("delta", delta)
    s, y = _scores_labels(scores, needs_frontier)
    order = np.sort(s)
    j = int(math.floor(target * s.size))  # send the j lowest-scored prompts cheap
    t = float(order[j]) if j < s.size else _MAX_T
    notes = ["budget mode: the misroute bound is reported, not guaranteed (the threshold is "
             "chosen from the same scores)"]
    if j < s.size and j > 0 and order[j - 1] == order[j]:
        notes.append("tied scores at the quantile: the cheap share is below the target")
    return _summarise(t, s, y, method="target_cheap_share", alpha=None, delta=delta, cost_cheap=cost_cheap,
                      cost_frontier=cost_frontier, target=target, notes=notes)


def evaluate_tier_threshold(threshold: float, scores: Any, needs_frontier: Any, *,
                            cost_cheap: Any = None, cost_frontier: Any = None,
                            delta: float = DEFAULT_DELTA) -> dict[str, Any]:
    """Measured misroute rates, cheap share and costs of ``threshold`` on other rows (e.g. test)."""
    s, y = _scores_labels(scores, needs_frontier)
    r = _summarise(float(threshold), s, y, method="evaluation", alpha=None, delta=delta,
                   cost_cheap=cost_cheap, cost_frontier=cost_frontier)
    out = r.to_dict()
    for key in ("method", "alpha", "target_cheap_share", "feasible", "notes"):
        out.pop(key)
    return out


# -- sensitivity gates ---------------------------------------------------------------------------
@dataclass
class RecallThreshold:
    """A gate threshold for one sensitivity class: ``p_class >= threshold`` flags the prompt.

    ``certified`` is False when the calibration positives are too few (or too poorly separated)
    for the recall lower bound to reach the target; the recall threshold then catches every
    calibration positive and ``recall_lower`` says what is actually certified.
    ``recall_threshold`` is the threshold the recall target alone picks; ``precision_threshold``
    the smallest one meeting ``min_precision`` (None when the floor is off or cannot be met).
    ``recall_target_met`` is True only when the recall threshold is certified and the precision
    floor did not have to raise it; ``recall`` is then what the chosen threshold reaches.
    ``recall_at_min_precision``: calibration recall at ``precision_threshold``.
    """

    cls: str
    threshold: float
    target_recall: float
    delta: float
    n_positive: int
    n_negative: int
    recall: float
    recall_lower: float
    flag_rate_negative: float | None
    precision: float | None
    certified: bool
    min_precision: float = 0.0
    recall_threshold: float | None = None
    precision_threshold: float | None = None
    precision_bound: str | None = None  # "clopper_pearson_lower" | "point_estimate" | None
    precision_floor_met: bool = True
    precision_floor_binding: bool = False
    recall_target_met: bool = True
    recall_at_min_precision: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_floor(min_precision: float) -> float:
    if isinstance(min_precision, bool) or not isinstance(min_precision, (int, float)) \
            or not (0.0 <= min_precision <= 1.0):
        raise ConfigError(f"min_precision must be a number in [0, 1] (0 disables the floor), got {min_precision!r}")
    return float(min_precision)


def _precision_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct score ``v`` (descending): threshold ``v``, true positives and flagged rows of
    the gate ``s >= v``."""
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    tp = np.cumsum(yy)
    # the last row of each tie group: a threshold flags every row with the same score
    last = np.r_[ss[1:] < ss[:-1], True]
    idx = np.flatnonzero(last)
    return ss[idx], tp[idx], idx + 1


def _precision_floor(s: np.ndarray, y: np.ndarray, min_precision: float,
                     delta: float) -> tuple[float | None, str | None]:
    """Smallest threshold whose calibration precision meets ``min_precision``, and the bound used
    (see the module docstring); ``(None, None)`` when no threshold meets it."""
    # The point estimate, not a Clopper-Pearson lower bound: measured on the real model, the lower
    # bound pushed the pii gate from 0.85 to 0.99 and halved its recall on the (template-disjoint)
    # test split while the point estimate already held precision there. The floor is an operating
    # point on the calibration split, not a guarantee (the recall bound is the guarantee).
    thresholds, tp, flagged = _precision_curve(s, y)
    ok = tp / flagged >= min_precision
    if ok.any():
        # thresholds are descending: the last passing one is the smallest (the largest recall)
        return float(thresholds[np.flatnonzero(ok)[-1]]), "point_estimate"
    return None, None


def fit_recall_threshold(scores: Any, is_class: Any, target_recall: float, *, delta: float = DEFAULT_DELTA,
                         cls: str = "positive", min_precision: float = DEFAULT_MIN_PRECISION) -> RecallThreshold:
    """Largest threshold with a Clopper-Pearson lower bound on recall ``>= target_recall``, raised
    to the precision floor ``min_precision`` where needed (0 disables it; see the module docstring)."""
    target_recall = _check_rate(f"recall target for {cls!r}", target_recall)
    delta = _check_rate("delta", delta)
    min_precision = _check_floor(min_precision)
    s, y = _scores_labels(scores, is_class)
    pos = np.sort(s[y])
    m = int(pos.size)
    notes: list[str] = []
    if m == 0:
        raise ConfigError(f"no calibration rows of class {cls!r}: cannot fit its gate threshold")
    # misses among positives are the loss: at most c of m with CP upper bound <= 1 - target
    c = max_passing_count(m, 1.0 - target_recall, delta)
    certified = c >= 0
    if certified:
        t_recall = float(pos[c]) if c < m else _MAX_T
    else:
        need = math.ceil(math.log(delta) / math.log(target_recall))
        t_recall = float(pos[0])
        notes.append(f"{m} calibration positives cannot certify recall >= {target_recall:g} at "
                     f"confidence {1 - delta:g} (needs >= {need}); threshold catches every calibration positive")
        logger.warning("class %r: %s", cls, notes[-1])
    t_recall = max(t_recall, _MIN_GATE_T)

    t_prec, bound, floor_met, binding, recall_at_p = None, None, True, False, None
    t = t_recall
    if min_precision > 0:
        t_prec, bound = _precision_floor(s, y, min_precision, delta)
        if t_prec is None:
            floor_met = False
            notes.append(f"no threshold reaches precision >= {min_precision:g} on the calibration split; "
                         "the recall threshold is kept")
            logger.warning("class %r: %s", cls, notes[-1])
        else:
            t_prec = max(t_prec, _MIN_GATE_T)
            recall_at_p = float(np.mean(s[y] >= t_prec))
            if bound == "point_estimate":
                notes.append(f"no threshold's Clopper-Pearson precision lower bound reaches {min_precision:g} "
                             f"at confidence {1 - delta:g}: the floor uses the point estimate of precision")
            if t_prec > t_recall:
                binding, t = True, t_prec
    result = _recall_summary(t, s, y, delta)
    target_met = certified and not binding
    if binding:
        notes.append(f"precision floor {min_precision:g} wins over recall target {target_recall:g}: threshold "
                     f"raised from {t_recall:.4g} to {t:.4g}, calibration recall {result['recall']:.4f} "
                     f"(lower bound {result['recall_lower']:.4f}): recall target NOT met")
        logger.warning("class %r: %s", cls, notes[-1])
    return RecallThreshold(cls=cls, threshold=t, target_recall=target_recall, delta=delta,
                           certified=certified, min_precision=min_precision, recall_threshold=t_recall,
                           precision_threshold=t_prec, precision_bound=bound, precision_floor_met=floor_met,
                           precision_floor_binding=binding, recall_target_met=target_met,
                           recall_at_min_precision=recall_at_p, notes=notes, **result)


def _recall_summary(t: float, s: np.ndarray, y: np.ndarray, delta: float) -> dict[str, Any]:
    flagged = s >= t
    m, neg = int(y.sum()), int((~y).sum())
    hits = int(np.sum(flagged & y))
    return {
        "n_positive": m,
        "n_negative": neg,
        "recall": hits / m if m else float("nan"),
        "recall_lower": clopper_pearson_lower(hits, m, 1.0 - delta),
        "flag_rate_negative": float(np.sum(flagged & ~y) / neg) if neg else None,
        "precision": float(hits / flagged.sum()) if flagged.any() else None,
    }


def evaluate_recall_threshold(threshold: float, scores: Any, is_class: Any, *, delta: float = DEFAULT_DELTA,
                              min_precision: float | None = None) -> dict[str, Any]:
    """Measured recall (with its lower bound), flag rate on negatives and precision on other rows;
    with ``min_precision``, also ``recall_at_min_precision`` (see ``recall_at_precision``)."""
    s, y = _scores_labels(scores, is_class)
    out = {"threshold": float(threshold), **_recall_summary(float(threshold), s, y, delta)}
    if min_precision is not None and min_precision > 0:
        from classifier.evaluation.metrics import recall_at_precision

        recall = recall_at_precision(y, s, _check_floor(min_precision))[0]
        out["recall_at_min_precision"] = None if math.isnan(recall) else recall
    return out
