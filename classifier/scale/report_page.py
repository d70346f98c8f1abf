"""The report page of ``tierwise report --engine ray``: sweeps, intervals and examples from block sums.

``report.ReportSummary`` turns each block of routed, labelled rows into sums; this module holds
what those sums need beyond the aggregate counts, and turns the summed total into the dict of
``tierwise report`` (same keys, so ``report_render`` draws it and ``--baseline`` diffs it):

- **Threshold sweeps from histograms** (``sweep_stats``): per bin of the served P(frontier)
  (``SWEEP_BINS`` equal bins) the rows, frontier labels, sums of frontier-minus-cheap correctness
  ("gain") and cost, and the smallest and largest gain; the oracle the same over bins of the gain
  itself. ``binned_sweep`` reads the summed bins as ``costs.sweep_from_sums``'s table with one
  threshold per bin edge. At an edge ``j / SWEEP_BINS`` the sweep is exact (a row goes to the
  frontier iff its bin is >= j; the bin count is a power of two, so ``p * SWEEP_BINS`` is exact), so
  only operating points inside a bin are missing. In PGR units the in-process curve strays from the
  chord across bin j by at most ``d_j = rows_j * (gain max - gain min)_j / (2 n |quality gap|)`` (0 when
  the bin holds one score: ties are one in-process point), so
  APGR is within ``apgr_max_error = sum_j rows_j / n * d_j`` of the in-process value; a CPT cheap
  share is a lower bound of the in-process one (edges are in-process operating points too), at most
  ``cheap_share_max_error`` below it (the largest cheap share of a bin whose edges plus d_j reach the
  target). Cost at quality is likewise an upper bound of the in-process cost.
- **Poisson bootstrap** (``poisson_weights``): every row gets ``n_boot`` Poisson(1) weights from a
  counter-based hash of (seed, row id, replicate), so replicates do not depend on how rows fall into
  blocks; a block adds ``[K, n_boot]`` weighted counts per statistic; ``interval`` gives percentile
  intervals of their ratios (``rate_interval``: Wilson for a rate of 0 or 1, where they collapse). Rows without an ``id`` are keyed by their text (duplicates then share
  weights).
- **Examples**: each block keeps the in-process report's own top-k tables (``report._misroutes``,
  ``report._sensitivity_section``: redacted text); ``merge_examples`` keeps the top k of two.

Left out: the TF-IDF baseline router (a model fitted on the train split), the fitted-threshold table
(it needs the calibration split's scores: ``tierwise calibrate``), the per-row arrays (``rows``),
AUROC intervals, and the long-prompt and adaptation sections.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SWEEP_BINS = 1 << 16
N_BOOT = 200  # replicates, as ReportConfig.n_boot of the in-process report
Sparse = tuple[np.ndarray, np.ndarray]  # (ascending non-empty bin indices, [8, bins] stats)
# how each example table is ordered (the in-process report's order), ties by id so that the
# merged top k does not depend on the block layout
EXAMPLE_ORDER = {"kept_cheap": ("p_frontier", 1), "escalated": ("p_frontier", -1), "leak": ("p_class", 1)}


# -- threshold sweeps from histograms ----------------------------------------------------------------
def _reduce(idx: np.ndarray, stats: np.ndarray) -> Sparse:
    """Rows (or bins) -> one column per distinct bin: sums, except min (rows 4, 6) and max (5, 7)."""
    if idx.size == 0:
        return idx.astype(np.int64), stats.reshape(8, 0)
    order = np.argsort(idx, kind="stable")
    idx, stats = idx[order], stats[:, order]
    uniq, start = np.unique(idx, return_index=True)
    out = np.add.reduceat(stats, start, axis=1)
    for lo, hi in ((4, 5), (6, 7)):
        out[lo], out[hi] = np.minimum.reduceat(stats[lo], start), np.maximum.reduceat(stats[hi], start)
    return uniq, out


def sweep_stats(score: np.ndarray, gain_q: np.ndarray, gain_c: np.ndarray, need: np.ndarray) -> Sparse:
    """Per non-empty bin of ``score``: rows, frontier labels, sum gain_q, sum gain_c, min and max gain_q,
    min and max score (a bin of one score is one in-process operating point: nothing is missed)."""
    b = np.minimum((np.clip(score, 0.0, 1.0) * SWEEP_BINS).astype(np.int64), SWEEP_BINS - 1)
    return _reduce(b, np.stack([np.ones_like(gain_q), need.astype(np.float64), gain_q, gain_c, gain_q, gain_q,
                                  score, score]))


def merge_sweep(a: Sparse | None, b: Sparse) -> Sparse:
    return b if a is None else _reduce(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]], axis=1))


def binned_sweep(bins: Sparse, totals: Mapping[str, float], targets: Sequence[float],
                 quality_target: float, *, ranks: bool = False) -> dict[str, Any]:
    """The sweep table on bin edges, its APGR / CPT / cost at quality, and their error bounds.

    ``ranks``: the in-process scores are distinct per row (the oracle's ranks, ties broken by
    position), so a bin of one gain is a straight run of one-row operating points: the CPT cheap
    share is found on it row by row (quality and PGR exact, costs interpolated)."""
    from classifier.evaluation.costs import (
        apgr_of_sweep,
        cost_at_quality_of_sweep,
        cpt_of_sweep,
        sweep_from_sums,
    )

    idx, st = bins
    desc = idx[::-1]
    # threshold = a bin's lower edge: that bin and every higher one go to the frontier; +inf: none
    sums = np.concatenate([np.zeros((4, 1)), np.cumsum(st[:4, ::-1], axis=1)], axis=1)[:, ::-1]
    thr = np.concatenate([[np.inf], desc / SWEEP_BINS])[::-1]
    table = sweep_from_sums(thr, sums[0], sums[2], sums[3], sums[1], totals)
    n = totals["n"]
    gap = abs(totals["frontier_correct"] - totals["cheap_correct"]) / n
    dev = st[0] * (st[5] - st[4]) / (2 * n * gap) if gap > 1e-12 else np.full(idx.size, np.nan)
    dev = np.where(st[6] == st[7], 0.0, dev)  # tied scores: the in-process sweep jumps over them too
    cpt = cpt_of_sweep(table, targets)
    pgr, cheap = table["pgr"].to_numpy(), table["cheap_share"].to_numpy()
    for key, target in zip(cpt, targets, strict=True):
        # bin i lies between table rows i (its lower edge) and i + 1 (its cheap side)
        could = np.maximum(pgr[:-1], pgr[1:]) + dev >= target - 1e-9
        upper = float(cheap[1:][could].max()) if could.any() else None
        if cpt[key] is not None and upper is not None:
            cpt[key]["cheap_share_max_error"] = max(0.0, upper - cpt[key]["cheap_share"])
        cross = np.flatnonzero((pgr[:-1] >= target - 1e-9) & (pgr[1:] < target - 1e-9) & (st[4] == st[5])
                               & (st[4] * (totals["frontier_correct"] - totals["cheap_correct"]) > 0))
        if ranks and cross.size:
            i = int(cross[-1])  # the crossing nearest the all-cheap end: the largest cheap share
            step = (pgr[i] - pgr[i + 1]) / st[0, i]  # PGR per row of this bin
            rows = min(st[0, i], math.ceil((target - 1e-9 - pgr[i + 1]) / step - 1e-9))
            row = table.iloc[i + 1] + (table.iloc[i] - table.iloc[i + 1]) * (rows / st[0, i])
            cpt[key] = {**{c: float(v) for c, v in row.items()}, "cheap_share_max_error": 0.0}
    return {"table": table, "apgr": apgr_of_sweep(table), "apgr_max_error": float(np.sum(st[0] / n * dev)),
            "cpt": cpt, "cost_at_quality": cost_at_quality_of_sweep(table, quality_target, totals["cost_frontier"])}


# -- Poisson bootstrap -------------------------------------------------------------------------------
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(24)])
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 -> uniformly scrambled uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def poisson_weights(keys: Sequence[str], n_boot: int, seed: int = 0) -> np.ndarray:
    """``[len(keys), n_boot]`` Poisson(1) weights, a function of (seed, key, replicate) only."""
    h = np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}\0{k}".encode(), digest_size=8).digest(), "little")
                     for k in keys), dtype=np.uint64, count=len(keys))
    x = _mix(h[:, None] + _GOLDEN * np.arange(1, n_boot + 1, dtype=np.uint64)[None, :])
    u = (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # 53 random bits -> [0, 1)
    return np.searchsorted(_POISSON_CDF, u, side="right").astype(np.float64)


def interval(num: np.ndarray, den: np.ndarray | float, conf: float = 0.95) -> list[float | None]:
    """Percentile interval of ``num / den`` over replicates (those with ``den == 0`` dropped)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.asarray(num, dtype=np.float64) / den
    r = r[np.isfinite(r)]
    if r.size == 0:
        return [None, None]
    lo, hi = np.quantile(r, [(1 - conf) / 2, 1 - (1 - conf) / 2])
    return [float(lo), float(hi)]


def rate_interval(num: np.ndarray, den: np.ndarray, k: float, n: float) -> list[float | None]:
    """``interval`` of a rate ``k / n``, except at ``k`` = 0 or ``n``: there every replicate is 0 (1)
    and the percentile interval collapses to a point, so the Wilson interval is given instead."""
    from classifier.evaluation.metrics import wilson_interval

    if 0 < k < n:
        return interval(num, den)
    return list(wilson_interval(int(k), int(n))) if n else [None, None]


def macro_f1(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 over the labels seen (sklearn's average) of confusion counts ``[..., C, C]``."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    denom = conf.sum(axis=-1) + conf.sum(axis=-2)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp, dtype=np.float64), where=denom > 0)
    with np.errstate(invalid="ignore"):
        return f1.sum(axis=-1) / (denom > 0).sum(axis=-1)


# -- examples ------------------------------------------------------------------------------------------
def merge_examples(a: list[dict[str, Any]], b: list[dict[str, Any]], table: str, k: int) -> list[dict[str, Any]]:
    key, sign = EXAMPLE_ORDER[table.split("::")[0]]
    return sorted(a + b, key=lambda x: (sign * x[key], x["id"]))[:k]


# -- the page ------------------------------------------------------------------------------------------
def _point(row: Mapping[str, Any], target: float, total_f: float) -> dict[str, Any]:
    """A fixed router's metrics and its cost at quality (reachable or not)."""
    point = {k: float(v) for k, v in row.items()}
    cq: dict[str, Any] = {"target_quality": target, "reachable": point["quality"] >= target - 1e-9}
    if cq["reachable"]:
        cq.update(cost=point["cost"], cheap_share=point["cheap_share"], quality=point["quality"],
                  saving=1 - point["cost"] / total_f if total_f > 0 else math.nan)
    return {**point, "cost_at_quality": cq}


def _largest(errors: Mapping[str, float], part: str) -> float:
    return max((v for k, v in errors.items() if part in k and math.isfinite(v)), default=0.0)


def build_page(summary: Any, schema: Any, policy: Any, manifest: Any, meta: Mapping[str, Any],
               temperatures: Mapping[str, float]) -> tuple[dict[str, Any], dict[str, str]]:
    """The report dict (``report.build_report``'s keys) and its figures from a summed ``ReportSummary``."""
    from classifier.evaluation import plots
    from classifier.evaluation.calibration import N_BINS
    from classifier.evaluation.report import (
        PGR_TARGETS,
        QUALITY_RATIO,
        REPORT_FORMAT,
        REPORT_FORMAT_VERSION,
        _allowed_tiers,
        _curve,
        _rate,
        headline_sentences,
        summary_metrics,
    )
    from classifier.json_io import to_jsonable
    from classifier.serving.bundle import MODEL_FILE

    stats = summary.metrics(schema)
    h, r = stats["headline"], summary.routing
    tier = schema.head(policy.tier_head)
    pos = tier.index(tier.positive_class) if tier.positive_class else 1
    threshold = float(policy.tier_threshold)
    boot = summary.sums
    figures: dict[str, str] = {}

    # routing: sweeps on bin edges, reference routers, the operating point --------------------------
    totals = {"n": r["n"], "cheap_correct": r["quality_cheap"], "frontier_correct": r["quality_frontier"],
              "cost_cheap": r["cost_cheap"], "cost_frontier": r["cost_frontier"], "needs_frontier": r["needs_frontier"]}
    target = QUALITY_RATIO * r["quality_frontier"] / r["n"]
    model = binned_sweep(summary.sweeps["model"], totals, PGR_TARGETS, target)
    oracle = binned_sweep(summary.sweeps["oracle"], totals, PGR_TARGETS, target, ranks=True)
    table, total_f = model["table"], r["cost_frontier"]
    ends = {"all_frontier": table.iloc[0], "all_cheap": table.iloc[-1]}
    refs = {k: {**_point(v.drop("threshold"), target, total_f), "apgr": 0.5 if math.isfinite(h["pgr"]) else math.nan}
            for k, v in ends.items()}
    refs["random"] = {**_point((ends["all_cheap"].drop("threshold") + ends["all_frontier"].drop("threshold")) / 2,
                               target, total_f), "apgr": refs["all_cheap"]["apgr"]}
    qc, qf = r["quality_cheap"] / r["n"], r["quality_frontier"] / r["n"]
    if target <= max(qc, qf) + 1e-9:  # random's quality is linear in its cheap share a
        a = 1.0 if target <= qc + 1e-9 else (qf - target) / (qf - qc)
        cost = a * r["cost_cheap"] + (1 - a) * total_f
        refs["random"]["cost_at_quality"].update(reachable=True, cost=cost, cheap_share=a, saving=1 - cost / total_f)
    oq = r["oracle_quality"] / r["n"]
    refs["oracle"] = {**_point({"n": r["n"], "frontier_share": r["oracle_to_frontier"] / r["n"],
                                "cheap_share": 1 - r["oracle_to_frontier"] / r["n"], "quality": oq,
                                "pgr": (oq - qc) / (qf - qc) if abs(qf - qc) > 1e-12 else math.nan,
                                "cost": r["oracle_cost"], "relative_cost": r["oracle_cost"] / total_f,
                                "misroute_rate": r["oracle_misroutes"] / r["n"],
                                "conditional_misroute_rate": r["oracle_misroutes"] / r["needs_frontier"]
                                if r["needs_frontier"] else math.nan}, target, total_f),
                      "apgr": oracle["apgr"], "apgr_max_error": oracle["apgr_max_error"], "cpt": oracle["cpt"]}
    routers = {"model": {"n": int(r["n"]), "apgr": model["apgr"], "apgr_max_error": model["apgr_max_error"],
                         "cpt": model["cpt"], "cost_at_quality": model["cost_at_quality"]},
               "oracle": {"apgr": oracle["apgr"], "cpt": oracle["cpt"]}}
    at = {"threshold": threshold, "n": r["n"], "frontier_share": 1 - h["cheap_share"], "cheap_share": h["cheap_share"],
          "quality": h["quality"], "pgr": h["pgr"], "cost": h["cost"], "relative_cost": h["relative_cost"],
          "misroute_rate": h["misroute_rate"], "conditional_misroute_rate": h["misroute_rate_frontier"]}
    curves = {"model": _curve(table), "oracle": _curve(oracle["table"])}
    point_keys = ("relative_cost", "conditional_misroute_rate", "quality")
    figures["cost_curves"] = plots.data_uri(plots.cost_curves_png(
        {"model": curves["model"], "oracle (sweep)": curves["oracle"]},
        {k: {kk: float(refs[k][kk]) for kk in point_keys} for k in ("all_cheap", "all_frontier", "oracle")},
        operating_point={"threshold": threshold, **{k: float(at[k]) for k in point_keys}}, quality_target=target,
        title=f"{meta['split']} split, {int(r['n'])} prompts with tier outcomes (Ray, {SWEEP_BINS} bins)"))

    # intervals: Poisson bootstrap ---------------------------------------------------------------------
    b = boot["boot::routing"]  # rows: n, to_frontier, needs_frontier, misroutes, quality, cost, cost_frontier
    intervals = {"cheap_share": rate_interval(b[0] - b[1], b[0], r["n"] - r["to_frontier"], r["n"]),
                 "misroute_rate_frontier": rate_interval(b[3], b[2], r["misroutes"], r["needs_frontier"]),
                 "misroute_rate": rate_interval(b[3], b[0], r["misroutes"], r["n"]), "quality": interval(b[4], b[0]),
                 "relative_cost": interval(b[5], b[6])}
    heads = {}
    for head in schema.heads:
        m = dict(stats["heads"][head.name])
        m.pop("confusion", None)
        c = boot.get(f"boot::confusion::{head.name}")
        if c is not None and m.get("n"):
            conf = c.reshape(head.num_classes, head.num_classes, -1).transpose(2, 0, 1)
            m["accuracy_ci"] = intervals[f"{head.name}_accuracy"] = rate_interval(
                np.trace(conf, axis1=1, axis2=2), conf.sum(axis=(1, 2)), np.trace(summary.confusion[head.name]), m["n"])
            m["macro_f1_ci"] = intervals[f"{head.name}_macro_f1"] = interval(macro_f1(conf), 1.0)
        heads[head.name] = m

    # sensitivity and misroutes ------------------------------------------------------------------------
    allowed = _allowed_tiers(policy)
    sensitivity: dict[str, Any] = {}
    for cls_name, c in summary.leaks.items():
        rule = policy.sensitivity_rules.get(cls_name)
        e: dict[str, Any] = {"rule": None if rule is None else rule.action, "allowed_tiers": allowed.get(cls_name),
                             "threshold": policy.sensitivity_thresholds.get(cls_name), "n": c["n"],
                             "leak": _rate(c["leaked"], c["n"]), "routed_to": summary.routed_to.get(cls_name, {}),
                             "worst_examples": summary.examples.get(f"leak::{cls_name}", [])}
        lb = boot.get(f"boot::leak::{cls_name}")
        if lb is not None and c["n"]:
            e["leak"]["ci"] = intervals[f"leak_rate_{cls_name}"] = rate_interval(lb[1], lb[0], c["leaked"], c["n"])
        if e["allowed_tiers"] is None:
            e["note"] = "no block/restrict rule for this class: any tier may serve it"
        if e["threshold"] is not None and c["n"]:
            e["detected"] = _rate(c["detected"], c["n"])
        sensitivity[cls_name] = e

    mis = {"k": h["misroutes"], "n": h["n_needs_frontier"], "rate": h.get("misroute_rate_frontier"),
           "ci": intervals["misroute_rate_frontier"]}
    headline = {**{k: h[k] for k in ("cheap_share", "cost", "cost_all_frontier", "cost_all_cheap", "relative_cost",
                                     "cost_ratio", "n_needs_frontier", "misroutes", "misroute_rate_frontier",
                                     "misroute_rate", "quality", "pgr", "policy_shares")},
                "threshold": threshold, "n": int(r["n"]), "currency": meta["currency"],
                "frontier_share": 1 - h["cheap_share"], "saving": 1 - h["relative_cost"], "misroute_ci": mis["ci"],
                "quality_all_frontier": qf, "quality_all_cheap": qc, "apgr": model["apgr"],
                "apgr_oracle": oracle["apgr"], "apgr_baseline": None, "policy_n": summary.n,
                "leaks": {k: e["leak"] for k, e in sensitivity.items() if e["allowed_tiers"] is not None and e["n"]}}
    headline["sentences"] = headline_sentences(to_jsonable(headline))

    # calibration: reliability sums of the served (after) and the T = 1 (before) probabilities ------
    calibration: dict[str, Any] = {"heads": {}, "bins": {}}
    for head in schema.heads:
        rel, n = summary.reliability.get(head.name, {}), heads[head.name].get("n", 0)
        if not n:
            continue
        kind = "positive" if head.num_classes == 2 else "top"
        nll_a, brier_a, nll_b, brier_b = summary.sums[f"calib::{head.name}"] / n
        bins = {}
        for label, suffix in (("before", "_before"), ("after", "")):
            s = rel[kind + suffix]
            with np.errstate(invalid="ignore", divide="ignore"):
                bins[label] = {"edges": np.linspace(0, 1, N_BINS + 1), "count": s[0], "confidence": s[1] / s[0],
                               "frequency": s[2] / s[0]}
        ece = {k: float(np.sum(np.abs(rel[k][1] - rel[k][2])) / rel[k][0].sum()) for k in rel}
        entry: dict[str, Any] = {"n": n, "temperature": float(temperatures.get(head.name, 1.0)),
                                 "before": {"n": n, "ece": ece["top_before"], "nll": nll_b, "brier": brier_b},
                                 "after": {"n": n, "ece": ece["top"], "nll": nll_a, "brier": brier_a},
                                 "plotted": "positive" if kind == "positive" else "top_class"}
        if kind == "positive":
            entry["before"]["ece_positive"], entry["after"]["ece_positive"] = ece["positive_before"], ece["positive"]
        calibration["heads"][head.name] = entry
        p_name = head.classes[head.index(head.positive_class) if head.positive_class else 1] if kind == "positive" else ""
        xlabel = f"predicted p({p_name})" if kind == "positive" else "top-class confidence"
        calibration["bins"][head.name] = {**bins, "xlabel": xlabel}
        key = "ece_positive" if kind == "positive" else "ece"
        figures[f"reliability_{head.name}"] = plots.data_uri(plots.reliability_png(
            f"reliability of head '{head.name}' on {meta['split']} (n={n}, Ray)", bins["before"], bins["after"],
            xlabel=xlabel, ece_before=entry["before"][key], ece_after=entry["after"][key],
            temperature=entry["temperature"]))
        figures[f"confusion_{head.name}"] = plots.data_uri(plots.confusion_png(
            f"{head.name} ({meta['split']}, n={n})", head.classes, summary.confusion[head.name]))

    slices = {"length": [{"slice": s["slice"], "n": s["n"], "n_tier": s["n_tier"],
                          "tier_accuracy": _rate(s["tier_correct"], s["n_tier"]),
                          "cheap_share": _rate(s["cheap"], s["n_tier"]),
                          "misroute_rate_frontier": _rate(s["misrouted"], s["n_frontier"])}
                         for s in stats["slices"]["length"]]}
    errors = {"apgr_max_error": model["apgr_max_error"], "apgr_oracle_max_error": oracle["apgr_max_error"],
              **{f"cheap_share_at_{k}_max_error": v["cheap_share_max_error"] for k, v in model["cpt"].items()
                 if v and "cheap_share_max_error" in v},
              **{f"{k}_auroc_max_error": v["auroc_max_error"] for k, v in stats["heads"].items() if "auroc_max_error" in v}}
    scale = {
        "engine": "ray", "n": summary.n, "unscored": summary.unscored, "sweep_bins": SWEEP_BINS,
        "n_boot": int(b.shape[1]), "top_k": summary.top_k, "errors": errors, "intervals": intervals,
        "notes": [
            f"Computed on a Ray cluster over {summary.n} rows ({summary.unscored} unscored): every block of rows became "
            "sums on a worker and the driver added them up; it never held the rows.",
            f"Binned: the threshold sweeps, APGR, CPT and cost at quality are read on the {SWEEP_BINS} edges of a "
            f"P({tier.classes[pos]}) histogram, exact there; APGR is within {model['apgr_max_error']:.2g} of the "
            f"unbinned value, a CPT cheap share at most {_largest(errors, 'cheap_share_at_'):.2g} below it, AUROC "
            f"within {_largest(errors, '_auroc_'):.2g} (each bound in report.json: scale.errors).",
            f"Intervals of the headline rates, accuracy and macro-F1: 95% Poisson-bootstrap percentile intervals "
            f"({int(b.shape[1])} replicates, weights seeded by row id), Wilson where a rate is 0 or 1 (every "
            "replicate would be too); slice rates: Wilson 95% intervals.",
            "Not on the Ray engine: the TF-IDF baseline router and the fitted-threshold table; run tierwise "
            "report on a sample for those.",
        ],
    }
    report = {
        "format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION,
        "meta": {"created_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                 "bundle_kind": manifest.kind, "model_sha256": manifest.files.get(MODEL_FILE),
                 "quantization": manifest.quantization, "training_run_id": manifest.training_run_id,
                 "policy_owner": policy.owner, "policy_version": policy.version, "tier_head": tier.name,
                 "positive_class": tier.classes[pos], "temperatures": dict(temperatures), "n_rows": summary.n,
                 "limit": None, "quality_ratio": QUALITY_RATIO, "baseline_router": None, **meta},
        "headline": headline,
        "routing": {"n": int(r["n"]), "at_threshold": at, "references": refs, "routers": routers, "curves": curves},
        "heads": heads, "heads_uncalibrated": {name: {} for name in heads},
        "confusion": {k: v["confusion"] for k, v in stats["heads"].items() if "confusion" in v},
        "calibration": calibration, "slices": slices, "sensitivity": sensitivity,
        "misroutes": {k: summary.examples.get(k, []) for k in ("kept_cheap", "escalated")},
        "thresholds": {}, "figures": sorted(figures), "long_prompts": None, "adapt": None, "scale": scale,
    }
    report = to_jsonable(report)
    report["metrics"] = summary_metrics(report)
    return report, figures
