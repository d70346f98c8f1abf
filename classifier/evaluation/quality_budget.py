"""The quality-loss risk budget: a tier threshold that bounds the quality lost by routing cheap.

The misroute budget (``thresholds.fit_tier_threshold``) counts every prompt *labelled* frontier
that goes cheap, including prompts neither tier solves (the default data has 3,844 of them):
sending those cheap loses nothing, so that budget buys less saving than it could. The budget
policy owners mean is the quality lost:

    loss_i(t) = 1[s_i < t] * max(0, frontier_correct_i - cheap_correct_i)

For 0/1 outcomes this is "the frontier model succeeds, the cheap one fails, and the prompt is
kept cheap"; for graded outcomes (shares of models that passed, judge scores in [0, 1]) it is the
expected score drop. The risk ``R(t) = E[loss(t)]`` is non-decreasing in ``t``.

``fit_loss_threshold`` gives it the same finite-sample guarantee as the misroute budget,
``P(R(t_hat) > alpha) <= delta``, by Learn-then-Test with fixed-sequence testing over candidate
thresholds from conservative (nothing cheap) to permissive, stopping at the first null
``H_t: R(t) > alpha`` it cannot reject. p-values: exact binomial ``P(Binom(n, alpha) <= k)`` when
every loss is 0 or 1 (then the result equals ``fit_tier_threshold`` run on the labels "frontier
succeeds and cheap fails"), else the Hoeffding-Bentkus p-value for losses bounded in [0, 1]
(Bates, Angelopoulos et al., 2021), valid for any bounded loss but a little more conservative.
Same exchangeability assumption as the misroute budget.

``compare_budgets`` fits both budgets on calibration rows and measures both on test rows, so a
report can show them side by side with the saving each buys. Left out: the CLI (``calibrate_cmd``)
and rendering.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binom

from classifier.errors import ConfigError, DataError
from classifier.evaluation import thresholds as th

logger = logging.getLogger(__name__)

__all__ = [
    "BUDGETS",
    "LossThreshold",
    "budget_table",
    "compare_budgets",
    "evaluate_loss_threshold",
    "fit_loss_threshold",
    "hb_pvalue",
    "quality_loss",
]

BUDGETS = ("misroute", "quality-loss")
_MAX_T = 1.0


def quality_loss(cheap_correct: Any, frontier_correct: Any) -> np.ndarray:
    """Per-prompt quality lost by answering with the cheap tier: ``max(0, frontier - cheap)``."""
    c = np.asarray(cheap_correct, dtype=np.float64).reshape(-1)
    f = np.asarray(frontier_correct, dtype=np.float64).reshape(-1)
    if c.shape != f.shape:
        raise DataError(f"cheap_correct ({c.size}) and frontier_correct ({f.size}) must have the same length")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(f))):
        raise DataError("cheap_correct / frontier_correct have missing values: the quality-loss budget needs both")
    if np.any((c < 0) | (c > 1) | (f < 0) | (f > 1)):
        raise DataError("cheap_correct / frontier_correct must lie in [0, 1]")
    return np.maximum(0.0, f - c)


def _h(a: np.ndarray, b: float) -> np.ndarray:
    a = np.clip(a, 1e-12, 1 - 1e-12)
    return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def hb_pvalue(risk_hat: Any, n: int, alpha: float) -> np.ndarray:
    """Hoeffding-Bentkus p-value of ``H: R > alpha`` for a mean of ``n`` losses in [0, 1]."""
    r = np.asarray(risk_hat, dtype=np.float64)
    hoeffding = np.exp(-n * _h(np.minimum(r, alpha), alpha))
    bentkus = math.e * binom.cdf(np.ceil(n * r), n, alpha)
    return np.minimum(1.0, np.minimum(hoeffding, bentkus))


@dataclass
class LossThreshold:
    """A fitted quality-loss threshold and what it does on its calibration rows.

    ``loss_rate``: mean quality loss over all prompts (the controlled risk); ``loss_upper``: the
    largest risk the test could not rule out at ``1 - delta`` (the first rejected p-value's bound);
    ``pvalue``: the p-value at the chosen threshold. Costs as in ``thresholds.TierThreshold``.
    """

    threshold: float
    alpha: float
    delta: float
    n: int
    graded: bool
    test: str
    loss_rate: float
    pvalue: float
    cheap_share: float
    misroute_rate: float | None = None
    feasible: bool = True
    cost_per_prompt: float | None = None
    all_frontier_cost_per_prompt: float | None = None
    saving: float | None = None
    budget: str = "quality-loss"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arrays(scores: Any, losses: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    if s.shape != loss.shape:
        raise ConfigError(f"scores ({s.size}) and losses ({loss.size}) must have the same length")
    if s.size == 0:
        raise ConfigError("no calibration rows: the threshold needs calibration prompts with both tier outcomes")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(loss))):
        raise ConfigError("scores or losses contain NaN or inf")
    if np.any((loss < 0) | (loss > 1)):
        raise ConfigError("losses must lie in [0, 1]")
    return s, loss


def fit_loss_threshold(scores: Any, losses: Any, *, alpha: float = 0.05, delta: float = th.DEFAULT_DELTA,
                       needs_frontier: Any = None, cost_cheap: Any = None,
                       cost_frontier: Any = None) -> LossThreshold:
    """Largest threshold whose quality-loss risk passes Learn-then-Test at ``alpha`` (module docstring).

    ``scores``: calibrated ``p_frontier``; ``losses``: ``quality_loss(cheap, frontier)`` per row;
    ``needs_frontier`` (optional): tier labels, to report the misroute rate at the threshold.
    """
    alpha = th._check_rate("alpha", alpha)
    delta = th._check_rate("delta", delta)
    s, loss = _arrays(scores, losses)
    n = s.size
    graded = bool(np.any((loss > 0) & (loss < 1)))
    order = np.argsort(s, kind="stable")
    s_sorted, l_sorted = s[order], loss[order]
    # candidate t = each distinct score (prompts strictly below go cheap), then 1.0 (all below 1 cheap)
    cand = np.unique(np.concatenate([s_sorted, [_MAX_T]]))
    cand = cand[cand <= _MAX_T]
    below = np.searchsorted(s_sorted, cand, side="left")  # prompts cheap at each candidate
    cum = np.concatenate([[0.0], np.cumsum(l_sorted)])
    risk = cum[below] / n
    if graded:
        pvals, test = hb_pvalue(risk, n, alpha), "hoeffding_bentkus"
    else:
        pvals, test = binom.cdf(np.round(risk * n), n, alpha), "binomial_exact"
    # fixed-sequence: candidates in increasing t; t = 0 sends nothing cheap (risk 0, always allowed)
    fails = np.flatnonzero(pvals > delta)
    last = (fails[0] - 1) if fails.size else cand.size - 1
    notes: list[str] = []
    feasible = last >= 0
    if not feasible:
        t, p, r = 0.0, 1.0, 0.0
        notes.append(f"n={n} calibration rows cannot certify alpha={alpha:g}: threshold 0, every prompt goes frontier")
        logger.warning(notes[-1])
    else:
        t, p, r = float(cand[last]), float(pvals[last]), float(risk[last])
    cheap = s < t
    mis = None
    if needs_frontier is not None:
        y = np.asarray(needs_frontier, dtype=bool).reshape(-1)
        mis = float(np.mean(cheap & y))
    return LossThreshold(threshold=t, alpha=alpha, delta=delta, n=n, graded=graded, test=test, loss_rate=r,
                         pvalue=p, cheap_share=float(cheap.mean()), misroute_rate=mis, feasible=feasible,
                         notes=notes, **th._cost_summary(cheap, cost_cheap, cost_frontier))


def evaluate_loss_threshold(threshold: float, scores: Any, losses: Any, *, needs_frontier: Any = None,
                            cost_cheap: Any = None, cost_frontier: Any = None) -> dict[str, Any]:
    """Measured quality loss, misroute rate, cheap share and saving of ``threshold`` on other rows."""
    s, loss = _arrays(scores, losses)
    cheap = s < float(threshold)
    out: dict[str, Any] = {"threshold": float(threshold), "n": int(s.size), "quality_loss": float(np.mean(loss * cheap)),
                           "cheap_share": float(cheap.mean())}
    if needs_frontier is not None:
        y = np.asarray(needs_frontier, dtype=bool).reshape(-1)
        out["misroute_rate"] = float(np.mean(cheap & y))
    out.update(th._cost_summary(cheap, cost_cheap, cost_frontier))
    return out


def compare_budgets(cal: dict[str, Any], test: dict[str, Any] | None, *, alpha: float = 0.05,
                    delta: float = th.DEFAULT_DELTA) -> dict[str, Any]:
    """Both budgets at ``alpha``: fitted on ``cal``, measured on ``test`` (side by side).

    ``cal`` / ``test``: ``{"scores", "needs_frontier", "cheap_correct", "frontier_correct",
    "cost_cheap"?, "cost_frontier"?}`` arrays of tier-labelled rows with both outcomes.
    """
    out: dict[str, Any] = {"alpha": alpha, "delta": delta}
    c_loss = quality_loss(cal["cheap_correct"], cal["frontier_correct"])
    mis = th.fit_tier_threshold(cal["scores"], cal["needs_frontier"], alpha=alpha, delta=delta,
                                cost_cheap=cal.get("cost_cheap"), cost_frontier=cal.get("cost_frontier"))
    ql = fit_loss_threshold(cal["scores"], c_loss, alpha=alpha, delta=delta, needs_frontier=cal["needs_frontier"],
                            cost_cheap=cal.get("cost_cheap"), cost_frontier=cal.get("cost_frontier"))
    out["misroute"] = {"threshold": mis.threshold, "calibration": mis.to_dict()}
    out["quality-loss"] = {"threshold": ql.threshold, "calibration": ql.to_dict()}
    if test is not None:
        t_loss = quality_loss(test["cheap_correct"], test["frontier_correct"])
        for key, t in (("misroute", mis.threshold), ("quality-loss", ql.threshold)):
            out[key]["test"] = evaluate_loss_threshold(t, test["scores"], t_loss, needs_frontier=test["needs_frontier"],
                                                       cost_cheap=test.get("cost_cheap"),
                                                       cost_frontier=test.get("cost_frontier"))
    return out


def budget_table(comparison: dict[str, Any]) -> str:
    """Markdown: both budgets at one alpha, measured on test (calibration where no test)."""
    a = comparison["alpha"]
    lines = [f"| budget (alpha {a:g}) | threshold | cheap share | saving vs all-frontier | misroute | quality loss |",
             "|---|---|---|---|---|---|"]
    for key in BUDGETS:
        e = comparison[key]
        m = e.get("test") or {}

        def pct(x: Any) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"

        lines.append(f"| {key} | {e['threshold']:.4f} | {pct(m.get('cheap_share'))} | {pct(m.get('saving'))} | "
                     f"{pct(m.get('misroute_rate'))} | {pct(m.get('quality_loss'))} |")
    return "\n".join(lines)
