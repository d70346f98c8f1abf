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

Beyond those counts each block adds what the report page needs (``report_page``: binned
threshold sweeps, Poisson-bootstrap replicates, top-k example tables, reliability sums before and
after calibration), and ``run_report_ray`` writes ``report.html`` / ``report.md`` / ``report.json``
beside ``report_stats.json``, with the bounds of what is binned stated on the page.

What it leaves out, because it needs a model fit or another split: the TF-IDF baseline router and
the fitted-threshold table (see ``report_page``). Run ``tierwise report`` on a sample for those.
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
    # the page (report_page): sparse sweep bins, summed arrays (bootstrap replicates "boot::...",
    # NLL/Brier sums "calib::head"), top-k example tables, per sensitive class the tiers reached
    sweeps: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    routed_to: dict[str, dict[str, int]] = field(default_factory=dict)
    top_k: int = 10

    def merge(self, other: ReportSummary) -> ReportSummary:
        from classifier.scale.report_page import merge_examples, merge_sweep

        self.n += other.n
        self.unscored += other.unscored
        for mine, theirs in ((self.confusion, other.confusion), (self.auroc_hist, other.auroc_hist),
                             (self.sums, other.sums)):
            for k, v in theirs.items():
                mine[k] = mine[k] + v if k in mine else v.copy()
        for h, kinds in other.reliability.items():
            for kind, v in kinds.items():
                cur = self.reliability.setdefault(h, {})
                cur[kind] = cur[kind] + v if kind in cur else v.copy()
        for mine, theirs in ((self.routing, other.routing), (self.policy, other.policy)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for mine, theirs in ((self.leaks, other.leaks), (self.slices, other.slices),
                             (self.routed_to, other.routed_to)):
            for k, counts in theirs.items():
                cur = mine.setdefault(k, {})
                for kk, v in counts.items():
                    cur[kk] = cur.get(kk, 0) + v
        for k, v in other.sweeps.items():
            self.sweeps[k] = merge_sweep(self.sweeps.get(k), v)
        for k, v in other.examples.items():
            self.examples[k] = merge_examples(self.examples.get(k, []), v, k, self.top_k)
        return self

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, probs: dict[str, np.ndarray], schema: Any, policy: Any,
                   prices: Any, *, calibration: dict[str, tuple[float, Any]] | None = None, n_boot: int = 0,
                   seed: int = 0, top_k: int = 10) -> ReportSummary:
        """One block: ``frame`` the labelled records, ``probs`` the served probabilities per head;
        ``calibration`` head -> (temperature, biases) to recover the T = 1 probabilities, ``n_boot``
        Poisson-bootstrap replicates seeded by ``seed`` and the row ids, ``top_k`` examples per table."""
        from classifier.data.labels import label_indices
        from classifier.evaluation import calibration as cal
        from classifier.evaluation.calibration import N_BINS, _bin_index
        from classifier.evaluation.costs import RoutingOutcomes
        from classifier.evaluation.metrics import head_score
        from classifier.evaluation.report import (
            _allowed_tiers,
            _auroc_target,
            _misroutes,
            _sensitivity_section,
        )
        from classifier.evaluation.report_common import length_bucket
        from classifier.numeric import softmax
        from classifier.scale.report_page import poisson_weights, sweep_stats
        from classifier.serving.policy import PolicyEngine

        out = cls(n=len(frame), top_k=top_k)
        keys = frame["id"].astype(str).tolist() if "id" in frame.columns else \
            frame.get("text", pd.Series([""] * len(frame))).astype(str).tolist()
        weights = poisson_weights(keys, n_boot, seed)  # [rows, n_boot]

        def boot(name: str, *columns: np.ndarray) -> None:  # per replicate, the weighted sum of each column
            out.sums[f"boot::{name}"] = np.stack(columns, axis=1).astype(np.float64).T @ weights

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
            t, b = (calibration or {}).get(head.name, (1.0, None))
            # softmax(logits / T + b) inverted: T * (log p - b) equals the logits up to a constant
            raw = softmax(np.log(np.clip(p, 1e-300, None)) - (0.0 if b is None else np.asarray(b)), 1.0 / t)
            rel = {}
            for suffix, q in (("", p), ("_before", raw)):
                rel["top" + suffix] = sums(q.max(axis=1), (q.argmax(axis=1) == y).astype(np.float64))
                if head.num_classes == 2:
                    pos = head.index(head.positive_class) if head.positive_class else 1
                    rel["positive" + suffix] = sums(q[:, pos], (y == pos).astype(np.float64))
            out.reliability[head.name] = rel
            out.sums[f"calib::{head.name}"] = np.array([f(q, y) * len(y) if len(y) else 0.0
                                                         for q in (p, raw) for f in (cal.nll, cal.brier)])
            onehot = np.zeros((len(frame), head.num_classes ** 2))
            onehot[np.flatnonzero(mask)[keep], y * head.num_classes + pred] = 1.0
            boot(f"confusion::{head.name}", *onehot.T)

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
            gain = qf - qc
            oracle = gain > 0  # the oracle's own point: the frontier exactly where it does better
            out.routing.update({"oracle_to_frontier": float(oracle.sum()), "oracle_quality": float(np.maximum(qf, qc).sum()),
                                "oracle_cost": float(np.where(oracle, cf, cc).sum()),
                                "oracle_misroutes": float((need & ~oracle).sum())})
            out.sweeps = {"model": sweep_stats(p_front[oc_rows], gain, cf - cc, need),
                          "oracle": sweep_stats((gain + 1) / 2, gain, cf - cc, need)}
            col = np.zeros((7, len(frame)))
            col[:, oc_rows] = [np.ones(len(oc_rows)), to_f, need, need & ~to_f, np.where(to_f, qf, qc),
                               np.where(to_f, cf, cc), cf]
            boot("routing", *col)
        task_head = schema.head(policy.task_head) if policy.task_head and policy.task_head in schema else None
        # unscored rows (NaN) are neither below nor above the threshold: in no table
        out.examples.update(_misroutes(frame, schema, tier_head, probs, pos, threshold, task_head, top_k))

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
                is_leak = np.zeros(len(frame))
                is_leak[rows] = [ok is not None and routed[i] != "blocked" and routed[i] not in ok for i in rows]
                leaked = int(is_leak.sum())
                thr = policy.sensitivity_thresholds.get(cls_name)
                detected = int(np.sum(probs[head.name][rows, j] >= thr)) if thr is not None else 0
                # guarded: a block/restrict rule covers the class (summed over blocks: > 0)
                out.leaks[cls_name] = {"n": int(rows.size), "leaked": leaked, "detected": detected,
                                       "guarded": int(ok is not None)}
                boot(f"leak::{cls_name}", (labels == j).astype(np.float64), is_leak)
            for cls_name, e in _sensitivity_section(frame, schema, policy, probs, routed, top_k).items():
                out.routed_to[cls_name] = e["routed_to"]
                out.examples[f"leak::{cls_name}"] = e["worst_examples"]

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
def summarise_report_block(batch: Any, *, schema: Any, policy: Any, prices: Any, **page: Any) -> pd.DataFrame:
    """Routed labelled records (``route.RouteActor`` with ``keep_raw``) -> one pickled ``ReportSummary``
    (``page``: ``ReportSummary.from_frame``'s keyword arguments)."""
    records = [json.loads(raw) for raw in batch.column("raw").to_pylist()]
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    probs = {h.name: np.stack([batch.column(f"p::{h.name}::{c}").to_numpy(zero_copy_only=False).astype(np.float64)
                               for c in h.classes], axis=1) if len(frame) else np.zeros((0, h.num_classes))
             for h in schema.heads}
    summary = ReportSummary.from_frame(frame, probs, schema, policy, prices, **page)
    return pd.DataFrame({"summary": [pickle.dumps(summary)]})


def report_stats(path: str | Path, bundle: str | Path, *, split: str | None, prices: str | Path,
                 threads: int = 1, actors: int | None = None, n_boot: int = 0, seed: int = 0,
                 top_k: int = 10) -> tuple[ReportSummary, Any]:
    """Route the labelled records of ``path`` on the cluster and add up their ``ReportSummary``s
    (returns the total and the bundle's ``Router`` with its model closed: schema, policy, manifest)."""
    import ray

    from classifier.evaluation.prices import Prices
    from classifier.scale.engine import actor_count
    from classifier.scale.io import IO_CONCURRENCY, read_records
    from classifier.scale.route import DRIFT_CHUNK, route_dataset
    from classifier.scale.stats import unpickled
    from classifier.serving.runtime import Router

    with Router.load(bundle, threads=1) as router:  # the schema, policy and calibration the workers score with
        schema, policy = router.schema, router.policy
        calibration = {h: (router.temperatures[h], router.biases.get(h)) for h in router.head_names}
    records = read_records([path], align=DRIFT_CHUNK, block_records=DRIFT_CHUNK * 16, split=split, skip_blank=True)
    routed = route_dataset(records, bundle, actors=actor_count(ray, threads, actors), threads=threads,
                           mode="prompts", group_size=DRIFT_CHUNK, keep_raw=True)
    # 0-CPU tasks: the routing actors hold every CPU of the cluster, and a 1-CPU summary task
    # would wait for one forever (measured: 1M prompts stalled with 51 routed blocks queued)
    parts = routed.map_batches(summarise_report_block, batch_format="pyarrow", batch_size=None,
                               num_cpus=0, concurrency=IO_CONCURRENCY,
                               fn_kwargs={"schema": schema, "policy": policy, "prices": Prices.from_yaml(prices),
                                          "calibration": calibration, "n_boot": n_boot, "seed": seed, "top_k": top_k})
    total = ReportSummary(top_k=top_k)
    for part in unpickled(parts, "summary"):
        total.merge(part)
    if total.n == 0:
        raise DataError(f"{path}: no records" + (f" with split == {split!r}" if split else ""))
    return total, router


def run_report_ray(args: argparse.Namespace) -> int:
    """``tierwise report --engine ray``: ``report_stats.json``, and the report page (HTML, Markdown,
    JSON) when the summed rows have tier outcomes (see the module docstring)."""
    from classifier.evaluation.report import ReportResult, write_report
    from classifier.json_io import to_jsonable
    from classifier.scale.engine import check_engine_args, ray_session
    from classifier.scale.report_page import N_BOOT, build_page

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
        summary, router = report_stats(data, args.bundle, split=args.split, prices=args.prices, threads=args.threads,
                                       actors=args.actors, n_boot=N_BOOT, seed=args.seed, top_k=args.top_k)
    schema = router.schema
    result = summary.metrics(schema)
    meta = {"engine": "ray", "bundle": str(args.bundle), "data": str(data), "split": args.split,
            "prices": str(args.prices), "seconds": time.perf_counter() - t0}
    written = [out_dir / REPORT_STATS_FILE]
    if summary.routing.get("n"):
        from classifier.evaluation.prices import Prices

        report, figures = build_page(summary, schema, router.policy, router.manifest,
                                     {**meta, "currency": Prices.from_yaml(args.prices).currency},
                                     router.temperatures)
        # additive keys: the binned sweep's numbers, their error bounds and the bootstrap intervals
        result["metrics"].update({k: v for k, v in report["metrics"].items() if k not in result["metrics"]})
        result.update(sweep_errors=report["scale"]["errors"], intervals=report["scale"]["intervals"])
        paths = write_report(ReportResult(report, figures), out if out.suffix else out / "report.html")
        written += [paths["html"], paths["md"], paths["json"]]
    meta["left_out"] = "TF-IDF baseline router, fitted-threshold table, per-row arrays, AUROC intervals"
    result["meta"] = meta
    out_dir.mkdir(parents=True, exist_ok=True)
    written[0].write_text(json.dumps(to_jsonable(result), indent=1) + "\n", encoding="utf-8")
    h = result["headline"]
    sys.stdout.write(f"{h['n']} rows ({h['unscored']} unscored); " + ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items())) + "\n")
    sys.stdout.write("wrote " + ", ".join(str(p) for p in written) + "\n")
    return 0
