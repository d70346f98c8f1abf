"""Cost and quality of routing: threshold sweeps, reference routers, APGR / CPT, cost at quality.

A *router* here is a score ``p_frontier`` per prompt and a threshold: a prompt goes to the frontier
tier when ``p_frontier >= threshold``, else to the cheap tier. Each prompt carries its tier
outcomes (``cheap_correct``, ``frontier_correct``: share of that tier's models that answered it
correctly, 0..1), its cost on each tier (``classifier.evaluation.prices.row_costs``) and whether
its training label says it needs the frontier tier (``tier == frontier``). Definitions:

- **quality**: mean correctness of the tier each prompt was sent to.
- **cost**: total USD over the evaluated prompts; **relative_cost**: cost / all-frontier cost.
- **misroute_rate**: share of *all* prompts that are labelled frontier but kept on cheap;
  **conditional_misroute_rate**: the same among the frontier-labelled prompts only.
- Reference routers: **all_cheap**, **all_frontier**; **oracle** (per prompt the cheapest tier with
  the best correctness: cheap when ``cheap_correct >= frontier_correct``); **random** (expected
  values of sending a random share of prompts to cheap; linear between the two all-routers).
- **PGR** (performance gap recovered, RouteLLM): ``(quality - q_cheap) / (q_frontier - q_cheap)``
  with ``q_*`` the all-cheap / all-frontier quality. **APGR**: area under PGR against the share of
  prompts sent to the frontier, from 0 to 1 (linear between operating points, i.e. random
  tie-breaking). Random = 0.5 exactly. The oracle is the ceiling but *not* 1: it needs a share
  ``f*`` of frontier calls to recover the gap, so its APGR is ``1 - f*/2`` when the frontier is
  never worse (more when the cheap tier sometimes wins, as PGR is not capped).
- **CPT(x)** (call-performance threshold): the largest cheap share (and its cost) at which the
  router's PGR reaches ``x`` (0.5, 0.8, 0.95).
- **cost_at_quality(target)**: the lowest cost of an operating point whose quality is at least
  ``target``; ``frontier_quality_target(outcomes, 0.95)`` = 95% of the all-frontier quality, an
  absolute quality floor (unlike CPT, which is relative to the gap). ``saving`` = 1 - cost /
  all-frontier cost.

Left out: choosing a threshold on one split and applying it on another is the caller's job
(``route_metrics`` / ``apply_threshold`` evaluate a fixed threshold). Points picked by ``cpt`` and
``cost_at_quality`` are chosen on the very rows they are measured on, so they are optimistic.
Latency and per-request overheads are not costed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import DataError
from classifier.evaluation.prices import Prices, row_costs

__all__ = [
    "RoutingOutcomes",
    "apgr",
    "apgr_of_sweep",
    "apply_threshold",
    "cost_at_quality",
    "cost_at_quality_of_sweep",
    "cpt",
    "cpt_of_sweep",
    "frontier_quality_target",
    "oracle_scores",
    "plot_cost_quality",
    "random_router",
    "reference_routers",
    "route_metrics",
    "summarize_router",
    "sweep_from_sums",
    "threshold_sweep",
]

_EPS = 1e-12
# APGR is reported only where the tiers' quality gap is this many standard errors from 0 (see
# ``apgr_defined``): about a 95% two-sided test that the gap is not 0.
APGR_MIN_GAP_Z = 2.0
SWEEP_COLUMNS = [
    "threshold", "frontier_share", "cheap_share", "quality", "pgr", "cost", "relative_cost",
    "misroute_rate", "conditional_misroute_rate",
]


@dataclass(frozen=True)
class RoutingOutcomes:
    """Per-prompt tier outcomes and costs of the prompts a router is evaluated on.

    ``rows`` holds the positions, in the frame they came from, of these prompts (see
    ``from_frame``), so that scores computed on the full frame can be aligned with ``scores[rows]``.
    """

    cheap_correct: np.ndarray
    frontier_correct: np.ndarray
    cost_cheap: np.ndarray
    cost_frontier: np.ndarray
    needs_frontier: np.ndarray
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("cheap_correct", "frontier_correct", "cost_cheap", "cost_frontier"):
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if not np.all(np.isfinite(arr)):
                raise DataError(f"routing outcomes: {name} has missing or non-finite values")
            arrays[name] = arr
        n = len(arrays["cheap_correct"])
        needs = np.asarray(self.needs_frontier, dtype=bool).reshape(-1)
        for name, arr in {**arrays, "needs_frontier": needs}.items():
            if len(arr) != n:
                raise DataError(f"routing outcomes: {name} has {len(arr)} values, expected {n}")
        for name in ("cheap_correct", "frontier_correct"):
            if np.any((arrays[name] < 0) | (arrays[name] > 1)):
                raise DataError(f"routing outcomes: {name} must lie in [0, 1]")
        for name in ("cost_cheap", "cost_frontier"):
            if np.any(arrays[name] < 0):
                raise DataError(f"routing outcomes: {name} must be non-negative")
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "needs_frontier", needs)
        rows = np.asarray(self.rows, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "rows", rows if len(rows) == n else np.arange(n, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.cheap_correct)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        prices: Prices,
        *,
        tier_column: str = "tier",
        frontier_class: str = "frontier",
    ) -> RoutingOutcomes:
        """The rows of ``frame`` with both tier outcomes and both costs; the rest are left out.

        ``needs_frontier`` comes from ``frame[tier_column] == frontier_class``; rows without a tier
        label fall back to ``frontier_correct > cheap_correct``.
        """
        for col in ("cheap_correct", "frontier_correct"):
            if col not in frame.columns:
                raise DataError(f"the data has no {col!r} column; cost curves need tier outcomes")
        cost_cheap, cost_frontier = row_costs(frame, prices)
        qc = pd.to_numeric(frame["cheap_correct"], errors="coerce").to_numpy(dtype=np.float64)
        qf = pd.to_numeric(frame["frontier_correct"], errors="coerce").to_numpy(dtype=np.float64)
        keep = np.isfinite(qc) & np.isfinite(qf) & np.isfinite(cost_cheap) & np.isfinite(cost_frontier)
        fallback = qf > qc
        if tier_column in frame.columns:
            tier = frame[tier_column]
            needs = np.where(tier.notna().to_numpy(), (tier == frontier_class).to_numpy(), fallback)
        else:
            needs = fallback
        rows = np.flatnonzero(keep)
        return cls(qc[rows], qf[rows], cost_cheap[rows], cost_frontier[rows], needs[rows].astype(bool), rows)

    # -- aggregate reference values ----------------------------------------------------------------
    @property
    def quality_cheap(self) -> float:
        return float(self.cheap_correct.mean()) if len(self) else math.nan

    @property
    def quality_frontier(self) -> float:
        return float(self.frontier_correct.mean()) if len(self) else math.nan

    @property
    def total_cost_cheap(self) -> float:
        return float(self.cost_cheap.sum())

    @property
    def total_cost_frontier(self) -> float:
        return float(self.cost_frontier.sum())

    def pgr(self, quality: float | np.ndarray) -> Any:
        """Performance gap recovered for ``quality``; NaN when both tiers have the same quality."""
        return _pgr(quality, self.quality_cheap, self.quality_frontier)

    def totals(self) -> dict[str, float]:
        """The sums ``sweep_from_sums`` reads (what a histogram of many blocks also holds)."""
        return {"n": float(len(self)), "cheap_correct": float(self.cheap_correct.sum()),
                "frontier_correct": float(self.frontier_correct.sum()), "cost_cheap": self.total_cost_cheap,
                "cost_frontier": self.total_cost_frontier, "needs_frontier": float(self.needs_frontier.sum())}


def _pgr(quality: float | np.ndarray, q_cheap: float, q_frontier: float) -> Any:
    gap = q_frontier - q_cheap
    if not abs(gap) > _EPS:
        return np.full_like(np.asarray(quality, dtype=np.float64), np.nan) if np.ndim(quality) else math.nan
    return (np.asarray(quality, dtype=np.float64) - q_cheap) / gap


# -- one router, one threshold ---------------------------------------------------------------------
def route_metrics(outcomes: RoutingOutcomes, to_frontier: np.ndarray) -> dict[str, float]:
    """Quality, cost and misroutes of a fixed per-prompt decision (``True`` = frontier)."""
    to_f = np.asarray(to_frontier, dtype=bool).reshape(-1)
    if len(to_f) != len(outcomes):
        raise ValueError(f"{len(to_f)} decisions for {len(outcomes)} prompts")
    n = len(outcomes)
    if n == 0:
        raise DataError("no prompts with tier outcomes and costs to evaluate routing on")
    quality = float(np.where(to_f, outcomes.frontier_correct, outcomes.cheap_correct).mean())
    cost = float(np.where(to_f, outcomes.cost_frontier, outcomes.cost_cheap).sum())
    misroutes = int(np.sum(outcomes.needs_frontier & ~to_f))
    n_frontier = int(outcomes.needs_frontier.sum())
    total_f = outcomes.total_cost_frontier
    return {
        "n": float(n),
        "frontier_share": float(to_f.mean()),
        "cheap_share": float(1.0 - to_f.mean()),
        "quality": quality,
        "pgr": float(outcomes.pgr(quality)),
        "cost": cost,
        "relative_cost": cost / total_f if total_f > 0 else math.nan,
        "misroute_rate": misroutes / n,
        "conditional_misroute_rate": misroutes / n_frontier if n_frontier else math.nan,
    }


def apply_threshold(outcomes: RoutingOutcomes, p_frontier: np.ndarray, threshold: float) -> dict[str, float]:
    """``route_metrics`` of the rule ``p_frontier >= threshold`` (e.g. a threshold set on validation)."""
    scores = _check_scores(outcomes, p_frontier)
    out = route_metrics(outcomes, scores >= threshold)
    out["threshold"] = float(threshold)
    return out


def _check_scores(outcomes: RoutingOutcomes, p_frontier: np.ndarray) -> np.ndarray:
    scores = np.asarray(p_frontier, dtype=np.float64).reshape(-1)
    if len(scores) != len(outcomes):
        raise ValueError(
            f"{len(scores)} scores for {len(outcomes)} prompts; index full-frame scores with outcomes.rows"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("p_frontier has non-finite values")
    return scores


# -- sweeps ----------------------------------------------------------------------------------------
def threshold_sweep(
    outcomes: RoutingOutcomes, p_frontier: np.ndarray, thresholds: Sequence[float] | None = None
) -> pd.DataFrame:
    """One row per threshold (ascending), columns ``SWEEP_COLUMNS``.

    Default thresholds: every distinct score plus ``+inf`` (all cheap), so the sweep runs from
    all-frontier (lowest score) to all-cheap. Computed with cumulative sums, O(n log n).
    """
    scores = _check_scores(outcomes, p_frontier)
    n = len(outcomes)
    if n == 0:
        raise DataError("no prompts with tier outcomes and costs to sweep thresholds on")
    if thresholds is None:
        thr = np.append(np.unique(scores), np.inf)
    else:
        thr = np.unique(np.asarray(thresholds, dtype=np.float64))
    order = np.argsort(-scores, kind="stable")
    sorted_desc = scores[order]
    gain_q = np.concatenate([[0.0], np.cumsum((outcomes.frontier_correct - outcomes.cheap_correct)[order])])
    gain_c = np.concatenate([[0.0], np.cumsum((outcomes.cost_frontier - outcomes.cost_cheap)[order])])
    caught = np.concatenate([[0], np.cumsum(outcomes.needs_frontier[order])])
    # k = number of prompts with score >= t = those sent to the frontier
    k = np.searchsorted(-sorted_desc, -thr, side="right")
    return sweep_from_sums(thr, k, gain_q[k], gain_c[k], caught[k], outcomes.totals())


def sweep_from_sums(thr: np.ndarray, k: np.ndarray, gain_q: np.ndarray, gain_c: np.ndarray, caught: np.ndarray,
                    totals: Mapping[str, float]) -> pd.DataFrame:
    """The sweep table (``SWEEP_COLUMNS``) from sums: per threshold ``thr``, ``k`` prompts go to the
    frontier and over them ``gain_q`` / ``gain_c`` sum frontier-minus-cheap correctness / cost and
    ``caught`` counts frontier labels; ``totals`` as ``RoutingOutcomes.totals``. ``threshold_sweep``
    feeds it per-row cumulative sums, ``classifier.scale`` per-bin ones (one threshold per bin edge)."""
    n, n_frontier, total_f = totals["n"], totals["needs_frontier"], totals["cost_frontier"]
    quality = (totals["cheap_correct"] + gain_q) / n
    cost = totals["cost_cheap"] + gain_c
    misroutes = n_frontier - caught
    return pd.DataFrame({
        "threshold": thr,
        "frontier_share": k / n,
        "cheap_share": 1.0 - k / n,
        "quality": quality,
        "pgr": _pgr(quality, totals["cheap_correct"] / n, totals["frontier_correct"] / n),
        "cost": cost,
        "relative_cost": cost / total_f if total_f > 0 else np.nan,
        "misroute_rate": misroutes / n,
        "conditional_misroute_rate": misroutes / n_frontier if n_frontier else np.nan,
    })[SWEEP_COLUMNS]


def quality_gap(outcomes: RoutingOutcomes) -> tuple[float, float]:
    """All-frontier minus all-cheap quality and its standard error (paired over the same prompts)."""
    d = np.asarray(outcomes.frontier_correct, dtype=np.float64) - np.asarray(outcomes.cheap_correct, dtype=np.float64)
    if d.size < 2:
        return (float(d.mean()) if d.size else math.nan), math.inf
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def apgr_defined(outcomes: RoutingOutcomes, z: float = APGR_MIN_GAP_Z) -> bool:
    """Whether APGR means anything on these prompts: the tiers' quality gap is at least ``z``
    standard errors from 0. PGR divides by that gap; when it is within sampling error (cheap as
    good as frontier, as on the ood split's held-out tasks: 1.5 points), APGR swings by whole
    units between samples of the same traffic and ranks routers by noise."""
    gap, se = quality_gap(outcomes)
    return bool(np.isfinite(gap) and abs(gap) > z * se)


def apgr(outcomes: RoutingOutcomes, p_frontier: np.ndarray) -> float:
    """Average PGR over frontier-call share 0..1 (trapezoid between operating points); NaN if no gap."""
    return apgr_of_sweep(threshold_sweep(outcomes, p_frontier))


def apgr_of_sweep(sweep: pd.DataFrame) -> float:
    """``apgr`` of a sweep table (``threshold_sweep`` or ``sweep_from_sums``)."""
    points = sweep.sort_values(["frontier_share", "threshold"], ascending=[True, False])
    x = points["frontier_share"].to_numpy()
    y = points["pgr"].to_numpy()
    if np.isnan(y).any():
        return math.nan
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def cpt(
    outcomes: RoutingOutcomes, p_frontier: np.ndarray, targets: Sequence[float] = (0.5, 0.8, 0.95)
) -> dict[str, dict[str, float] | None]:
    """Per PGR target: the operating point with the largest cheap share whose PGR reaches it.

    Keys are ``"pgr_50"``, ``"pgr_80"``, ... ; the value is the sweep row as a dict, or ``None``
    when no threshold reaches the target (or the tiers have no quality gap).
    """
    return cpt_of_sweep(threshold_sweep(outcomes, p_frontier), targets)


def cpt_of_sweep(sweep: pd.DataFrame, targets: Sequence[float] = (0.5, 0.8, 0.95)) -> dict[str, dict[str, float] | None]:
    """``cpt`` of a sweep table."""
    out: dict[str, dict[str, float] | None] = {}
    for target in targets:
        ok = sweep[sweep["pgr"] >= target - 1e-9]
        key = f"pgr_{round(target * 100):d}"
        if ok.empty:
            out[key] = None
            continue
        best = ok.sort_values(["cheap_share", "cost"], ascending=[False, True]).iloc[0]
        out[key] = {c: float(best[c]) for c in SWEEP_COLUMNS}
    return out


def frontier_quality_target(outcomes: RoutingOutcomes, ratio: float = 0.95) -> float:
    """``ratio`` times the all-frontier quality: the default quality floor of ``cost_at_quality``."""
    if not 0.0 < ratio <= 1.5:
        raise ValueError(f"ratio must be in (0, 1.5], got {ratio}")
    return ratio * outcomes.quality_frontier


def _saving(total_f: float, cost: float) -> dict[str, float]:
    return {
        "cost_all_frontier": total_f,
        "saving": 1.0 - cost / total_f if total_f > 0 else math.nan,
        "saving_usd": total_f - cost,
    }


def cost_at_quality(
    outcomes: RoutingOutcomes, p_frontier: np.ndarray, target_quality: float
) -> dict[str, Any]:
    """Lowest-cost threshold whose quality is at least ``target_quality``, and the saving.

    Returns ``{"target_quality", "reachable", ...}``; when reachable, also the sweep row of that
    point (threshold, cheap_share, quality, cost, ...) and ``cost_all_frontier``, ``saving``
    (fraction of the all-frontier cost saved) and ``saving_usd``.
    """
    return cost_at_quality_of_sweep(threshold_sweep(outcomes, p_frontier), target_quality,
                                    outcomes.total_cost_frontier)


def cost_at_quality_of_sweep(sweep: pd.DataFrame, target_quality: float, cost_all_frontier: float) -> dict[str, Any]:
    """``cost_at_quality`` of a sweep table (``cost_all_frontier``: for the saving)."""
    ok = sweep[sweep["quality"] >= target_quality - 1e-9]
    out: dict[str, Any] = {"target_quality": float(target_quality), "reachable": not ok.empty}
    if ok.empty:
        return out
    best = ok.sort_values(["cost", "quality"], ascending=[True, False]).iloc[0]
    out.update({c: float(best[c]) for c in SWEEP_COLUMNS})
    out.update(_saving(cost_all_frontier, float(best["cost"])))
    return out


# -- reference routers -----------------------------------------------------------------------------
def oracle_scores(outcomes: RoutingOutcomes, *, per_cost: bool = False) -> np.ndarray:
    """Scores that sweep like the oracle: distinct ranks (1 = frontier first), in ``(0, 1]``.

    ``per_cost=False`` ranks by the frontier's correctness gain over cheap (the best quality for
    a share of frontier calls: the APGR / CPT ceiling). ``per_cost=True`` ranks by gain per extra
    USD (the cheapest way to a quality target: the ``cost_at_quality`` floor); a row where the
    frontier gains and costs no more comes first. Ties are broken by position so that every
    prompt can be switched on its own.
    """
    gain = outcomes.frontier_correct - outcomes.cheap_correct
    if per_cost:
        extra = outcomes.cost_frontier - outcomes.cost_cheap
        safe = np.where(extra > 0, extra, 1.0)
        key = np.where(extra > 0, gain / safe, np.inf)
        # rows the frontier does not improve come last, the most harmful last of all
        key = np.where(gain > 0, key, -np.inf)
        order = np.lexsort((np.arange(len(gain)), -gain, -key))
    else:
        order = np.lexsort((np.arange(len(gain)), -gain))
    scores = np.empty(len(gain))
    scores[order] = 1.0 - np.arange(len(gain)) / max(len(gain), 1)
    return scores


def random_router(outcomes: RoutingOutcomes, cheap_share: float) -> dict[str, float]:
    """Expected metrics of sending a random ``cheap_share`` of prompts to cheap, the rest to frontier."""
    if not 0.0 <= cheap_share <= 1.0:
        raise ValueError(f"cheap_share must be in [0, 1], got {cheap_share}")
    a = cheap_share
    quality = a * outcomes.quality_cheap + (1 - a) * outcomes.quality_frontier
    cost = a * outcomes.total_cost_cheap + (1 - a) * outcomes.total_cost_frontier
    share_f = float(outcomes.needs_frontier.mean())
    total_f = outcomes.total_cost_frontier
    return {
        "n": float(len(outcomes)),
        "frontier_share": 1.0 - a,
        "cheap_share": a,
        "quality": float(quality),
        "pgr": float(outcomes.pgr(quality)),
        "cost": float(cost),
        "relative_cost": cost / total_f if total_f > 0 else math.nan,
        "misroute_rate": a * share_f,
        "conditional_misroute_rate": a if share_f > 0 else math.nan,
    }


def _random_cost_at_quality(outcomes: RoutingOutcomes, target: float) -> dict[str, Any]:
    qc, qf = outcomes.quality_cheap, outcomes.quality_frontier
    out: dict[str, Any] = {"target_quality": float(target)}
    if target <= qc + 1e-9:
        a = 1.0
    elif target > max(qc, qf) + 1e-9:
        out["reachable"] = False
        return out
    else:
        # quality is linear in the cheap share: solve a*qc + (1-a)*qf = target
        a = (qf - target) / (qf - qc)
    point = random_router(outcomes, float(np.clip(a, 0.0, 1.0)))
    out.update({"reachable": True, **point, **_saving(outcomes.total_cost_frontier, point["cost"])})
    return out


def reference_routers(
    outcomes: RoutingOutcomes,
    *,
    quality_ratio: float = 0.95,
    pgr_targets: Sequence[float] = (0.5, 0.8, 0.95),
) -> dict[str, dict[str, Any]]:
    """all_cheap, all_frontier, oracle and random (at 50% cheap): metrics, APGR, cost at quality.

    The oracle and random entries also carry ``cpt`` (random reaches PGR ``x`` at cheap share
    ``1 - x``).

    Each entry has the ``route_metrics`` keys, ``apgr`` and ``cost_at_quality`` (the quality target
    being ``quality_ratio`` x all-frontier quality). All-cheap and all-frontier are single points
    (no threshold), so their APGR is that of the constant router, 0.5; random's is 0.5 by
    definition; the oracle's is computed by sweeping ``oracle_scores``.
    """
    n = len(outcomes)
    target = frontier_quality_target(outcomes, quality_ratio)

    def fixed(to_frontier: np.ndarray) -> dict[str, Any]:
        point = route_metrics(outcomes, to_frontier)
        reach = point["quality"] >= target - 1e-9
        cq: dict[str, Any] = {"target_quality": target, "reachable": bool(reach)}
        if reach:
            cq.update({"cost": point["cost"], "cheap_share": point["cheap_share"],
                       "quality": point["quality"], **_saving(outcomes.total_cost_frontier, point["cost"])})
        return {**point, "cost_at_quality": cq}

    oracle_to_f = outcomes.frontier_correct > outcomes.cheap_correct
    constant = apgr(outcomes, np.zeros(n))  # 0.5, or NaN when the tiers have no quality gap
    refs = {
        "all_cheap": {**fixed(np.zeros(n, dtype=bool)), "apgr": constant},
        "all_frontier": {**fixed(np.ones(n, dtype=bool)), "apgr": constant},
        "oracle": {**fixed(oracle_to_f), "apgr": apgr(outcomes, oracle_scores(outcomes))},
        "random": {
            **random_router(outcomes, 0.5),
            "apgr": constant,
            "cost_at_quality": _random_cost_at_quality(outcomes, target),
        },
    }
    refs["oracle"]["cpt"] = cpt(outcomes, oracle_scores(outcomes), pgr_targets)
    refs["random"]["cpt"] = {
        f"pgr_{round(t * 100):d}": random_router(outcomes, 1.0 - t) if not math.isnan(constant) else None
        for t in pgr_targets
    }
    # the oracle reaches a quality target at its own point or cheaper (choosing prompts one by one)
    refs["oracle"]["cost_at_quality"] = cost_at_quality(outcomes, oracle_scores(outcomes, per_cost=True), target)
    return refs


def summarize_router(
    outcomes: RoutingOutcomes,
    p_frontier: np.ndarray,
    *,
    quality_ratio: float = 0.95,
    pgr_targets: Sequence[float] = (0.5, 0.8, 0.95),
) -> dict[str, Any]:
    """APGR, CPT at ``pgr_targets`` and cost at ``quality_ratio`` x all-frontier quality."""
    target = frontier_quality_target(outcomes, quality_ratio)
    return {
        "n": len(outcomes),
        "apgr": apgr(outcomes, p_frontier),
        "cpt": cpt(outcomes, p_frontier, pgr_targets),
        "cost_at_quality": cost_at_quality(outcomes, p_frontier, target),
    }


# -- plot ------------------------------------------------------------------------------------------
def plot_cost_quality(
    outcomes: RoutingOutcomes,
    scores: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    title: str = "quality against cost",
) -> Path:
    """Quality against relative cost for each router in ``scores``, with the reference routers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    try:
        for name, s in scores.items():
            sweep = threshold_sweep(outcomes, s).sort_values("relative_cost")
            ax.plot(sweep["relative_cost"], sweep["quality"], label=name, lw=1.5)
        refs = reference_routers(outcomes)
        cheap, front = refs["all_cheap"], refs["all_frontier"]
        ax.plot([cheap["relative_cost"], front["relative_cost"]], [cheap["quality"], front["quality"]],
                ls="--", color="grey", label="random (expected)")
        for name, marker in (("all_cheap", "o"), ("all_frontier", "s"), ("oracle", "*")):
            ax.scatter([refs[name]["relative_cost"]], [refs[name]["quality"]], marker=marker, s=70,
                       zorder=3, color="black", label=name)
        ax.axhline(frontier_quality_target(outcomes), color="grey", lw=0.8, ls=":",
                   label="95% of all-frontier quality")
        ax.set_xlabel("cost relative to all-frontier")
        ax.set_ylabel("quality (mean correctness)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
