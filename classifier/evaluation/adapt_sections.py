"""The report's adaptation section (issue 15): the task-prior bar, both tier budgets, adaptation.

``section(...)`` computes what ``tierwise report`` keeps under ``adapt``:

* **task prior** [``task_prior``]: the per-``source_task`` lookup table fitted on the train split
  (``baselines.TaskPriorBaseline``) scored on the same routed rows as the bundle: tier AUROC, APGR
  and the saving at 95% of frontier quality, side by side, and by how much the bundle beats it
  (the bar is 0.02 AUROC; the verdict says plainly when it is not cleared);
* **budgets** [``budgets``]: the misroute and the quality-loss budget fitted on the calibration
  split with the same Learn-then-Test guarantee and measured on the report's split
  (``quality_budget.compare_budgets``), with the saving each buys;
* **adaptation** [``adaptation``]: for a bundle written by ``tierwise adapt``, its manifest's
  record (parent bundle, rows, the parent's and the adapted head's held-out numbers, the gate,
  the per-cluster prior, without example prompts);
* **learning curve** [``curve``]: the mean tier AUROC per N from
  ``evaluation/adapt_curve.json`` (``benchmarks/adapt_curve.py``), when it exists.

``view`` gives the display values the report page's templates (``templates/adapt.{html,md}.j2``)
render; ``budgets_section`` / ``clusters_section`` and their
``*_markdown`` stay usable on their own. Left out: fitting anything, and the cluster prior of a
bundle that was not adapted (the report does not cluster the split: too slow for every run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.evaluation.quality_budget import BUDGETS, budget_table, compare_budgets
from classifier.evaluation.report_common import template_environment

logger = logging.getLogger(__name__)

__all__ = ["budgets_markdown", "budgets_section", "clusters_markdown", "clusters_section", "render_html",
           "render_markdown", "section", "view"]

DEFAULT_CURVE = Path("evaluation/adapt_curve.json")
PRIOR_BAR = 0.02  # issue 15: the shipped tier model must beat the task prior by this much AUROC
CURVE_METHODS = ("base", "adapted", "tfidf_lr", "cluster_prior")


def budgets_section(cal: dict[str, Any], test: dict[str, Any], *, alpha: float = 0.05,
                    delta: float = 0.05) -> dict[str, Any]:
    """``cal`` / ``test``: ``scores``, ``needs_frontier``, ``cheap_correct``, ``frontier_correct``,
    ``cost_cheap``, ``cost_frontier`` arrays of tier-labelled rows with both outcomes."""
    def finite(part: dict[str, Any]) -> dict[str, Any]:
        ok = np.isfinite(np.asarray(part["cheap_correct"], float)) & np.isfinite(np.asarray(part["frontier_correct"], float))
        return {k: (None if v is None else np.asarray(v)[ok]) for k, v in part.items()}

    return compare_budgets(finite(cal), finite(test), alpha=alpha, delta=delta)


def budgets_markdown(section: dict[str, Any]) -> str:
    return ("## Risk budgets side by side\n\nBoth thresholds are fitted on the calibration split with the "
            f"same Learn-then-Test guarantee (alpha {section['alpha']:g}, delta {section['delta']:g}) and "
            "measured here. Misroute counts every prompt labelled frontier kept cheap; quality loss only "
            "those the frontier model solves and the cheap one does not.\n\n" + budget_table(section) + "\n")


def clusters_section(prior: Any, top: int = 15) -> dict[str, Any]:
    rows = prior.summary()[:top]
    return {"global_rate": prior.global_rate_, "clusters": rows}


def clusters_markdown(section: dict[str, Any]) -> str:
    lines = ["## Kinds of request (per-cluster prior)", "",
             f"Overall the cheap tier succeeds {100 * section['global_rate']:.0f}% of the time.", ""]
    lines += [f"- {c['description']} (90% interval {100 * c['interval'][0]:.0f}-{100 * c['interval'][1]:.0f}%)"
              for c in section["clusters"]]
    return "\n".join(lines) + "\n"


# -- the report section ------------------------------------------------------------------------------
def _router_numbers(outcomes: Any, scores: np.ndarray, quality_ratio: float) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from classifier.evaluation.costs import (
        apgr,
        apgr_defined,
        cost_at_quality,
        frontier_quality_target,
    )

    y = np.asarray(outcomes.needs_frontier, dtype=bool)
    cq = cost_at_quality(outcomes, scores, frontier_quality_target(outcomes, quality_ratio))
    a = apgr(outcomes, scores)
    return {"auroc": float(roc_auc_score(y, scores)) if 0 < y.sum() < y.size else None,
            # None when the tiers' quality gap is within sampling error (APGR would be noise)
            "apgr": None if not (np.isfinite(a) and apgr_defined(outcomes)) else float(a),
            "saving_at_quality": cq.get("saving") if cq.get("reachable") else None}


def _task_prior(schema: Any, tier_name: str, pos: int, frame: pd.DataFrame, train: pd.DataFrame | None,
                outcomes: Any, p_route: np.ndarray, quality_ratio: float) -> dict[str, Any] | None:
    from classifier.evaluation.baselines import TaskPriorBaseline

    if train is None or train.empty or len(outcomes) == 0:
        return None
    prior = TaskPriorBaseline(schema).fit(train)
    p_prior = prior.predict_proba(frame.iloc[outcomes.rows])[tier_name][:, pos]
    model = _router_numbers(outcomes, p_route, quality_ratio)
    base = _router_numbers(outcomes, p_prior, quality_ratio)
    margin = None if model["auroc"] is None or base["auroc"] is None else model["auroc"] - base["auroc"]
    has_task = prior.column in frame.columns and prior.column in train.columns
    seen = float(frame.iloc[outcomes.rows][prior.column].astype(str).isin(prior.tables_[tier_name]).mean()) \
        if has_task else 0.0
    return {"n": len(outcomes), "model": model, "task_prior": base, "auroc_margin": margin, "bar": PRIOR_BAR,
            "beats_prior": None if margin is None else bool(margin >= PRIOR_BAR),
            "column": prior.column, "share_of_rows_with_a_seen_task": seen}


def _budgets(tier_name: str, pos: int, frame: pd.DataFrame, p_all: np.ndarray, cal_frame: pd.DataFrame | None,
             cal_p: np.ndarray | None, column: str, frontier_class: str, prices: Any, alpha: float,
             delta: float) -> dict[str, Any] | None:
    from classifier.evaluation.prices import row_costs

    if cal_frame is None or cal_p is None:
        return None

    def part(f: pd.DataFrame, p: np.ndarray) -> dict[str, Any] | None:
        need_cols = {column, "cheap_correct", "frontier_correct"}
        if not need_cols <= set(f.columns):
            return None
        cc, cf = row_costs(f, prices)
        keep = (f[column].notna() & pd.to_numeric(f["cheap_correct"], errors="coerce").notna()
                & pd.to_numeric(f["frontier_correct"], errors="coerce").notna()).to_numpy() & np.isfinite(cc) & np.isfinite(cf)
        if keep.sum() < 2:
            return None
        return {"scores": p[keep], "needs_frontier": (f[column] == frontier_class).to_numpy()[keep],
                "cheap_correct": pd.to_numeric(f["cheap_correct"]).to_numpy(float)[keep],
                "frontier_correct": pd.to_numeric(f["frontier_correct"]).to_numpy(float)[keep],
                "cost_cheap": cc[keep], "cost_frontier": cf[keep]}

    cal, test = part(cal_frame, cal_p), part(frame, p_all)
    if cal is None or test is None:
        return None
    out = budgets_section(cal, test, alpha=alpha, delta=delta)
    out["n_calibration"], out["n"] = len(cal["scores"]), len(test["scores"])
    return out


def _adaptation(extra: Mapping[str, Any] | None) -> dict[str, Any] | None:
    extra = extra or {}
    record = extra.get("adapt")
    if not isinstance(record, Mapping):
        return None
    return {"parent_bundle": extra.get("parent_bundle"), **{k: record.get(k) for k in (
        "rows", "budget", "alpha", "gate", "holdout", "head", "clusters", "feature_tensor")}}


def _curve(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable, the report has no learning curve (%s)", path, exc)
        return None
    out: dict[str, Any] = {"file": str(path), "bundles": {}}
    for name, res in (doc.get("bundles") or {}).items():
        summ = (res.get("curve") or {}).get("summary")
        if not summ:
            continue
        out["bundles"][name] = [
            {"n": int(n), **{m: ((per.get(m) or {}).get("auroc") or {}).get("mean") for m in CURVE_METHODS}}
            for n, per in sorted(summ.items(), key=lambda kv: int(kv[0]))]
    return out if out["bundles"] else None


def section(*, schema: Any, tier_name: str, pos: int, frame: pd.DataFrame, p_all: np.ndarray, outcomes: Any,
            prices: Any, train: pd.DataFrame | None = None, cal_frame: pd.DataFrame | None = None,
            cal_p: np.ndarray | None = None, manifest_extra: Mapping[str, Any] | None = None,
            curve: Path = DEFAULT_CURVE, alpha: float = 0.05, delta: float = 0.05,
            quality_ratio: float = 0.95) -> dict[str, Any] | None:
    """The report's ``adapt`` section (module docstring); None when it has nothing to show.

    ``p_all``: the bundle's calibrated P(frontier) for every row of ``frame``; ``outcomes``: the
    report's ``RoutingOutcomes`` (rows with both outcomes and costs); ``cal_p``: the same
    probability on ``cal_frame`` (the calibration split)."""
    head = schema.head(tier_name)
    p_all = np.asarray(p_all, dtype=np.float64)
    out = {
        "task_prior": _task_prior(schema, tier_name, pos, frame, train, outcomes, p_all[outcomes.rows], quality_ratio),
        "budgets": _budgets(tier_name, pos, frame, p_all, cal_frame, cal_p, head.column, head.classes[pos], prices,
                            alpha, delta),
        "adaptation": _adaptation(manifest_extra),
        "curve": _curve(Path(curve)),
    }
    return out if any(v is not None for v in out.values()) else None


# -- rendering ---------------------------------------------------------------------------------------
def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.1f}%"


def _view(sec: Mapping[str, Any]) -> dict[str, Any]:
    """What both templates print, as plain strings (the templates hold no arithmetic)."""
    v: dict[str, Any] = {"tp": None, "budgets": None, "ad": None, "curve": None}
    tp = sec.get("task_prior")
    if tp:
        m = tp["auroc_margin"]
        verdict = ("no tier AUROC to compare (one outcome only)" if m is None else
                   f"the bundle beats the task prior by {m:+.3f} tier AUROC (bar {tp['bar']:g})" if tp["beats_prior"]
                   else f"the bundle does NOT beat the task prior by {tp['bar']:g} tier AUROC: margin {m:+.3f}")
        v["tp"] = {"n": tp["n"], "verdict": verdict, "seen": _pct(tp["share_of_rows_with_a_seen_task"]),
                   "rows": [[name, _f(r["auroc"]), _f(r["apgr"]), _pct(r["saving_at_quality"])]
                            for name, r in (("this bundle", tp["model"]), ("task prior", tp["task_prior"]))]}
    b = sec.get("budgets")
    if b:
        v["budgets"] = {"alpha": f"{b['alpha']:g}", "delta": f"{b['delta']:g}", "n": b["n"], "ncal": b["n_calibration"],
                        "rows": [[k, _f(b[k]["threshold"], 4), *(_pct((b[k].get("test") or {}).get(x)) for x in
                                  ("cheap_share", "saving", "misroute_rate", "quality_loss"))] for k in BUDGETS]}
    ad = sec.get("adaptation")
    if ad:
        hold, gate, rows = ad.get("holdout") or {}, ad.get("gate") or {}, ad.get("rows") or {}
        parent = ad.get("parent_bundle") or {}
        v["ad"] = {"parent": str(parent.get("path")), "parent_version": str(parent.get("mlflow_model_version")),
                   "rows": ", ".join(f"{k} {n}" for k, n in rows.items()), "budget": f"{ad.get('budget')} "
                   f"(alpha {ad.get('alpha')})", "gate": str(gate.get("message", "-")), "passed": bool(gate.get("passed")),
                   "metrics": [[who, *(_f((hold.get(who) or {}).get(k)) for k in ("auroc", "apgr")),
                                _pct((hold.get(who) or {}).get("saving_at_quality"))] for who in ("parent", "adapted")],
                   "threshold": {k: _pct((hold.get("threshold") or {}).get(k))
                                 for k in ("misroute_rate", "quality_loss", "cheap_share", "saving")},
                   "clusters": [[c.get("task") or "mixed", f"{c['n']:,.0f}", _pct(c["cheap_rate"]),
                                 f"{_pct(c['interval'][0])}-{_pct(c['interval'][1])}"]
                                for c in (ad.get("clusters") or [])]}
    cv = sec.get("curve")
    if cv:
        v["curve"] = {"file": cv["file"], "rows": [[name, str(r["n"]), *(_f(r[m]) for m in CURVE_METHODS)]
                                                   for name, rs in cv["bundles"].items() for r in rs]}
    return v


def view(sec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The section's display values for the report templates (``templates/adapt.{html,md}.j2``,
    included by the report page); None without data."""
    return _view(sec) if sec else None


def _render(name: str, sec: Mapping[str, Any] | None, autoescape: bool) -> str:
    if not sec:
        return ""
    return template_environment(autoescape).get_template(name).render(**_view(sec))


def render_html(sec: Mapping[str, Any] | None) -> str:
    """The section alone as an HTML fragment (``<section id="adapt">``); '' without data."""
    return _render("adapt.html.j2", sec, True)


def render_markdown(sec: Mapping[str, Any] | None) -> str:
    """The section alone as Markdown; '' without data."""
    return _render("adapt.md.j2", sec, False)
