"""``tierwise report --engine ray``: the report's aggregate statistics over a labelled log on a Ray cluster.

The labelled prompts (JSONL/Parquet files or directories, rows of one ``--split``) are routed by
one ``Router`` per actor (``route.route_dataset``), and every block becomes a
:class:`ReportSummary` on a worker: per head the confusion counts, score histograms by binary
target (AUROC) and reliability-bin sums (ECE, after the bundle's calibration: the probabilities
it serves); at the policy threshold the routing sums (cheap share, cost, quality, misroutes);
the whole policy's tier counts and per sensitive class the leak counts; per length bucket the
slice counts. The driver adds the summaries up: it holds counts, never rows.

The numbers are those of ``tierwise report`` (``metrics``: the flat view the release gate
reads) computed by the same definitions: counts, rates, macro-F1 and ECE exactly; AUROC from a
2^16-bin histogram, with the largest possible error stated (``auroc_max_error``: half the share
of positive/negative pairs that share a bin).

What it leaves out, because it needs every row in one place: bootstrap intervals, threshold
sweeps and the cost curves drawn from them (APGR, cheap share at CPT targets), the TF-IDF
baseline, the misroute and leak example tables, figures and HTML. Run ``tierwise report`` on a
sample for those.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import ConfigError, DataError

AUROC_BINS = 1 << 16
REPORT_STATS_FILE = "report_stats.json"


@dataclass
class ReportSummary:
    """Counts that add up (``merge``); ``metrics()`` turns them into the report's numbers."""

    n: int = 0
    unscored: int = 0  # rows the router answered with the safe decision (no probabilities)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    auroc_hist: dict[str, np.ndarray] = field(default_factory=dict)  # [2, AUROC_BINS]: negatives, positives
    reliability: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> [3, N_BINS]
    routing: dict[str, float] = field(default_factory=dict)
    policy: dict[str, int] = field(default_factory=dict)
    leaks: dict[str, dict[str, int]] = field(default_factory=dict)
    slices: dict[str, dict[str, int]] = field(default_factory=dict)

    def merge(self, other: ReportSummary) -> ReportSummary:
        self.n += other.n
        self.unscored += other.unscored
        for mine, theirs in ((self.confusion, other.confusion), (self.auroc_hist, other.auroc_hist)):
            for k, v in theirs.items():
                mine[k] = mine[k] + v if k in mine else v.copy()
        for h, kinds in other.reliability.items():
            for kind, v in kinds.items():
                cur = self.reliability.setdefault(h, {})
                cur[kind] = cur[kind] + v if kind in cur else v.copy()
        for mine, theirs in ((self.routing, other.routing), (self.policy, other.policy)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for mine, theirs in ((self.leaks, other.leaks), (self.slices, other.slices)):
            for k, counts in theirs.items():
                cur = mine.setdefault(k, {})
                for kk, v in counts.items():
                    cur[kk] = cur.get(kk, 0) + v
        return self

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, probs: dict[str, np.ndarray], schema: Any, policy: Any,
                   prices: Any) -> ReportSummary:
        """One block: ``frame`` the labelled records, ``probs`` the served probabilities per head."""
        from classifier.data.labels import label_indices
        from classifier.evaluation.calibration import N_BINS, _bin_index
        from classifier.evaluation.costs import RoutingOutcomes
        from classifier.evaluation.metrics import head_score
        from classifier.evaluation.report import _allowed_tiers, _auroc_target
        from classifier.evaluation.report_common import length_bucket
        from classifier.serving.policy import PolicyEngine

        out = cls(n=len(frame))
        scored = np.ones(len(frame), dtype=bool)
        for p in probs.values():
            scored &= np.isfinite(p).all(axis=1)
        out.unscored = int((~scored).sum())

        def sums(conf: np.ndarray, hit: np.ndarray) -> np.ndarray:
            idx = _bin_index(conf, N_BINS)
            return np.stack([np.bincount(idx, minlength=N_BINS).astype(np.float64),
                             np.bincount(idx, weights=conf, minlength=N_BINS),
                             np.bincount(idx, weights=hit, minlength=N_BINS)])

        for head in schema.heads:
            mask, y = label_indices(head, frame)
            keep = scored[mask]
            y = y[keep]
            p = probs[head.name][mask][keep]
            pred = p.argmax(axis=1)
            matrix = np.zeros((head.num_classes, head.num_classes), dtype=np.int64)
            np.add.at(matrix, (y, pred), 1)
            out.confusion[head.name] = matrix
            score = head_score(head, p)
            if score is not None:
                target = _auroc_target(head, y)
                b = np.minimum((np.clip(score, 0.0, 1.0) * AUROC_BINS).astype(np.int64), AUROC_BINS - 1)
                out.auroc_hist[head.name] = np.stack([np.bincount(b[target == t], minlength=AUROC_BINS)
                                                      for t in (0, 1)])
            rel = {"top": sums(p.max(axis=1), (pred == y).astype(np.float64))}
            if head.num_classes == 2:
                pos = head.index(head.positive_class) if head.positive_class else 1
                rel["positive"] = sums(p[:, pos], (y == pos).astype(np.float64))
            out.reliability[head.name] = rel

        tier_head = schema.head(policy.tier_head)
        pos = tier_head.index(tier_head.positive_class) if tier_head.positive_class else 1
        threshold = float(policy.tier_threshold)
        p_front = probs[tier_head.name][:, pos]
        if {"cheap_correct", "frontier_correct"} <= set(frame.columns):
            oc = RoutingOutcomes.from_frame(frame, prices, tier_column=tier_head.column,
                                            frontier_class=tier_head.classes[pos])
            oc_rows = oc.rows[scored[oc.rows]]
            keep = np.isin(oc.rows, oc_rows)
            to_f = p_front[oc_rows] >= threshold
            qc, qf = oc.cheap_correct[keep], oc.frontier_correct[keep]
            cc, cf, need = oc.cost_cheap[keep], oc.cost_frontier[keep], oc.needs_frontier[keep]
            out.routing = {"n": float(len(oc_rows)), "to_frontier": float(to_f.sum()),
                           "quality": float(np.where(to_f, qf, qc).sum()), "quality_cheap": float(qc.sum()),
                           "quality_frontier": float(qf.sum()), "cost": float(np.where(to_f, cf, cc).sum()),
                           "cost_cheap": float(cc.sum()), "cost_frontier": float(cf.sum()),
                           "needs_frontier": float(need.sum()), "misroutes": float((need & ~to_f).sum())}

        names = policy.tier_names
        idx = PolicyEngine(policy, schema).tier_indices(probs)
        routed = np.array(["blocked" if i < 0 else names[i] for i in idx], dtype=object)
        for name in [*names, "blocked"]:  # every tier, as the report lists them (0 included)
            out.policy[name] = int(np.sum(routed == name))
        if policy.sensitivity_head and policy.sensitivity_head in schema:
            head = schema.head(policy.sensitivity_head)
            mask, y = label_indices(head, frame)
            labels = np.full(len(frame), -1)
            labels[mask] = y
            allowed = _allowed_tiers(policy)
            for j, cls_name in enumerate(head.classes):
                if cls_name == head.negative_class:
                    continue
                rows = np.flatnonzero(labels == j)
                ok = allowed.get(cls_name)
                leaked = 0 if ok is None else int(sum(routed[i] != "blocked" and routed[i] not in ok for i in rows))
                thr = policy.sensitivity_thresholds.get(cls_name)
                detected = int(np.sum(probs[head.name][rows, j] >= thr)) if thr is not None else 0
                # guarded: a block/restrict rule covers the class (summed over blocks: > 0)
                out.leaks[cls_name] = {"n": int(rows.size), "leaked": leaked, "detected": detected,
                                       "guarded": int(ok is not None)}

        tmask, ty = label_indices(tier_head, frame)
        tier_y = np.full(len(frame), -1)
        tier_y[tmask] = ty
        tier_pred = probs[tier_head.name].argmax(axis=1)
        buckets = np.asarray(length_bucket(frame["text"].tolist() if "text" in frame.columns else [None] * len(frame)),
                             dtype=object)
        for value in pd.unique(buckets):
            sel = buckets == value
            lab = sel & (tier_y >= 0) & scored
            front = lab & (tier_y == pos)
            out.slices[str(value)] = {"n": int(sel.sum()), "n_tier": int(lab.sum()),
                                      "tier_correct": int(np.sum(tier_pred[lab] == tier_y[lab])),
                                      "cheap": int(np.sum(p_front[lab] < threshold)),
                                      "n_frontier": int(front.sum()),
                                      "misrouted": int(np.sum(p_front[front] < threshold))}
        return out

    # -- the report's numbers ------------------------------------------------------------------------
    def metrics(self, schema: Any) -> dict[str, Any]:
        """``{"metrics": flat numbers as report.summary_metrics names them, "heads", "headline", ...}``."""
        flat: dict[str, float] = {}
        heads: dict[str, dict[str, Any]] = {}
        for head in schema.heads:
            m = self.confusion.get(head.name)
            if m is None or m.sum() == 0:
                heads[head.name] = {"n": 0}
                continue
            n = int(m.sum())
            tp = np.diag(m).astype(np.float64)
            present = (m.sum(axis=0) + m.sum(axis=1)) > 0  # sklearn's macro average: labels seen
            denom = m.sum(axis=0) + m.sum(axis=1)
            f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
            h: dict[str, Any] = {"n": n, "accuracy": float(tp.sum() / n), "macro_f1": float(f1[present].mean()),
                                 "confusion": {"classes": list(head.classes), "matrix": m.tolist()}}
            hist = self.auroc_hist.get(head.name)
            if hist is not None and 0 < hist[1].sum() < n:
                neg, posc = hist[0].astype(np.float64), hist[1].astype(np.float64)
                below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
                pairs = neg.sum() * posc.sum()
                h["auroc"] = float(np.sum(posc * (below + 0.5 * neg)) / pairs)
                h["auroc_max_error"] = float(0.5 * np.sum(posc * neg) / pairs)
            for kind, key in (("top", "ece"), ("positive", "ece_positive")):
                s = self.reliability.get(head.name, {}).get(kind)
                if s is not None and s[0].sum() > 0:
                    h[f"{key}_calibrated"] = float(np.sum(np.abs(s[1] - s[2])) / s[0].sum())
            heads[head.name] = h
            for key in ("accuracy", "macro_f1", "auroc", "ece_calibrated", "ece_positive_calibrated"):
                if key in h:
                    flat[f"{head.name}_{key}"] = h[key]
        headline: dict[str, Any] = {"n": self.n, "unscored": self.unscored}
        r = self.routing
        if r.get("n"):
            n = r["n"]
            quality, qc, qf = r["quality"] / n, r["quality_cheap"] / n, r["quality_frontier"] / n
            headline.update({
                "n_routed": int(n), "cheap_share": 1.0 - r["to_frontier"] / n, "quality": quality,
                "quality_all_cheap": qc, "quality_all_frontier": qf,
                "pgr": (quality - qc) / (qf - qc) if abs(qf - qc) > 1e-12 else math.nan,
                "cost": r["cost"], "cost_all_frontier": r["cost_frontier"], "cost_all_cheap": r["cost_cheap"],
                "relative_cost": r["cost"] / r["cost_frontier"] if r["cost_frontier"] > 0 else math.nan,
                "cost_ratio": r["cost_frontier"] / r["cost"] if r["cost"] > 0 else None,
                "misroute_rate": r["misroutes"] / n,
                "misroute_rate_frontier": r["misroutes"] / r["needs_frontier"] if r["needs_frontier"] else math.nan,
                "n_needs_frontier": int(r["needs_frontier"]), "misroutes": int(r["misroutes"]),
            })
            for key in ("cheap_share", "relative_cost", "cost_ratio", "misroute_rate_frontier", "misroute_rate",
                        "quality", "pgr"):
                v = headline.get(key)
                if v is not None and math.isfinite(v):
                    flat[key] = float(v)
        total = sum(self.policy.values())
        headline["policy_shares"] = {k: v / total for k, v in sorted(self.policy.items())} if total else {}
        leaks = {}
        for cls_name, c in self.leaks.items():
            leaks[cls_name] = {**c, "leak_rate": c["leaked"] / c["n"] if c["n"] else None,
                               "detected_rate": c["detected"] / c["n"] if c["n"] else None}
            if c.get("guarded") and c["n"]:
                flat[f"leak_rate_{cls_name}"] = c["leaked"] / c["n"]
        return {"metrics": flat, "heads": heads, "headline": headline, "sensitivity": leaks,
                "slices": {"length": [{"slice": k, **v} for k, v in sorted(self.slices.items(), key=lambda kv: -kv[1]["n"])]}}


# -- on the cluster ------------------------------------------------------------------------------------
def summarise_report_block(batch: Any, *, schema: Any, policy: Any, prices: Any) -> pd.DataFrame:
    """Routed labelled records (``route.RouteActor`` with ``keep_raw``) -> one pickled ``ReportSummary``."""
    records = [json.loads(raw) for raw in batch.column("raw").to_pylist()]
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    probs = {h.name: np.stack([batch.column(f"p::{h.name}::{c}").to_numpy(zero_copy_only=False).astype(np.float64)
                               for c in h.classes], axis=1) if len(frame) else np.zeros((0, h.num_classes))
             for h in schema.heads}
    summary = ReportSummary.from_frame(frame, probs, schema, policy, prices)
    return pd.DataFrame({"summary": [pickle.dumps(summary)]})


def report_stats(path: str | Path, bundle: str | Path, *, split: str | None, prices: str | Path,
                 threads: int = 1, actors: int | None = None) -> tuple[ReportSummary, Any]:
    """Route the labelled records of ``path`` on the cluster and add up their ``ReportSummary``s."""
    import ray

    from classifier.evaluation.prices import Prices
    from classifier.scale.engine import actor_count
    from classifier.scale.io import IO_CONCURRENCY, read_records
    from classifier.scale.route import DRIFT_CHUNK, route_dataset
    from classifier.serving.runtime import Router

    with Router.load(bundle, threads=1) as router:  # the schema and policy the workers score with
        schema, policy = router.schema, router.policy
    records = read_records([path], align=DRIFT_CHUNK, block_records=DRIFT_CHUNK * 16, split=split, skip_blank=True)
    routed = route_dataset(records, bundle, actors=actor_count(ray, threads, actors), threads=threads,
                           mode="prompts", group_size=DRIFT_CHUNK, keep_raw=True)
    # 0-CPU tasks: the routing actors hold every CPU of the cluster, and a 1-CPU summary task
    # would wait for one forever (measured: 1M prompts stalled with 51 routed blocks queued)
    parts = routed.map_batches(summarise_report_block, batch_format="pyarrow", batch_size=None,
                               num_cpus=0, concurrency=IO_CONCURRENCY,
                               fn_kwargs={"schema": schema, "policy": policy, "prices": Prices.from_yaml(prices)})
    total = ReportSummary()
    # one block's summary at a time: each holds 2^16-bin histograms (~1 MB a head), and batches
    # of 64 took the driver to 896 MB over 1M prompts
    for batch in parts.iter_batches(batch_format="pandas", batch_size=1):
        for blob in batch["summary"]:
            total.merge(pickle.loads(blob))  # noqa: S301 - our own workers' output
    if total.n == 0:
        raise DataError(f"{path}: no records" + (f" with split == {split!r}" if split else ""))
    return total, schema


def run_report_ray(args: argparse.Namespace) -> int:
    """``tierwise report --engine ray``: ``report_stats.json`` beside ``--out`` (no HTML: see the docstring)."""
    from classifier.json_io import to_jsonable
    from classifier.scale.engine import check_engine_args, ray_session

    check_engine_args(args)
    for name, why in (("baseline", "the release gate diffs full reports"), ("limit", "Ray reads every record")):
        if getattr(args, name, None):
            raise ConfigError(f"--{name} is not supported with --engine ray ({why}); drop it")
    data = Path(args.data)
    if data.is_dir() and (data / "dataset.parquet").is_file():
        data = data / "dataset.parquet"
    out = Path(args.out)
    out_dir = out.parent if out.suffix else out
    t0 = time.perf_counter()
    with ray_session(args.address, args.ray_cpus) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        summary, schema = report_stats(data, args.bundle, split=args.split, prices=args.prices,
                                       threads=args.threads, actors=args.actors)
    result = summary.metrics(schema)
    result["meta"] = {"engine": "ray", "bundle": str(args.bundle), "data": str(data), "split": args.split,
                      "prices": str(args.prices), "seconds": time.perf_counter() - t0,
                      "left_out": "bootstrap intervals, threshold sweeps (APGR, CPT), TF-IDF baseline, example tables, figures"}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_STATS_FILE
    path.write_text(json.dumps(to_jsonable(result), indent=1) + "\n", encoding="utf-8")
    h = result["headline"]
    sys.stdout.write(f"{h['n']} rows ({h['unscored']} unscored); " + ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items())) + "\n")
    sys.stdout.write(f"wrote {path}\n")
    return 0
