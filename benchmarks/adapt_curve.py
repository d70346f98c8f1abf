"""Issue 15 measurements: adapting to new traffic, the quality-loss budget, exploration, timing.

    python -m benchmarks.adapt_curve --bundle bundles/student [--bundle bundles/teacher] \
        [--data data/build] [--out evaluation/adapt_curve.json] [--parts curve,budget,explore,timing]

Parts (each writes its own key of the JSON; a PNG of the learning curve goes next to it):

* ``curve``: the ``ood`` split's held-out tasks as a new team's traffic. For N in (100, 300,
  1000) and 3 seeds, draw N labelled prompts, fit on them and evaluate on the rest: the base
  bundle (no adaptation), the adapted head (``AdaptedTierHead``: features + base logit +
  cross-fitted cluster prior; soft targets, and hard targets for comparison), TF-IDF + LR on the
  same labels, and the per-cluster prior alone (``ClusterPrior`` on the bundle's features). Tier
  AUROC, APGR and the saving at 95% of all-frontier quality (threshold picked on the evaluated
  rows: the same optimistic reading for every router).
* ``budget``: misroute vs quality-loss budget at alpha 0.05 on the default split, fitted on the
  calibration split (bundle calibrated probabilities) and measured on test: cheap share and saving
  vs all-frontier.
* ``explore``: the test split replayed as traffic. Half is the log: the bundle's calibrated
  threshold routes each prompt, an exploration share ``epsilon`` goes to the other tier, and the
  cheap outcome is observed only where the prompt went cheap; the head is fitted with
  inverse-propensity weights. The other half evaluates it against the head fitted on full labels.
* ``timing``: ``AdaptedTierHead.fit`` on 10,000 rows (train split) and the bundle's feature
  throughput; total = features + fit (the bundle write adds seconds).
* ``alpha``: does the threshold ``tierwise adapt`` calibrates on a team's calibration rows keep
  the risk within alpha on the team's held-out rows? The test split's and the ``ood`` split's
  outcome-labelled prompts as a team's rows, both budgets at alpha 0.05 (delta 0.05), 3 seeds of
  the row split: ``adapt_bundle`` (no MLflow, written to a temporary folder) and the held-out
  misroute rate and quality loss at the calibrated threshold. Not in the default ``--parts``.

Features and logits are cached per bundle manifest under ``--cache`` (never in git). Runs on
the lead's full models by passing their bundles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.evaluation.prices import DEFAULT_PRICES_PATH
from classifier.json_io import to_jsonable

logger = logging.getLogger("benchmarks.adapt_curve")

NS = (100, 300, 1000)
SEEDS = (0, 1, 2)


_LIGHT: dict[str, Any] = {}


def _light(frame: pd.DataFrame, full: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``--bundle light``: no network. Features = TF-IDF + SVD(64) fitted on the train split,
    p_frontier = the task-prior baseline (per source task frontier rate on train; AUROC on the
    default test split equals the teacher's), base logit = its log-odds. For quick runs and for
    machines where the encoder is too slow; the lead reruns with real bundles."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from classifier.data.schema import LabelSchema
    from classifier.evaluation.baselines import TaskPriorBaseline

    if "svd" not in _LIGHT:
        train = full[(full["split"] == "train") & full["tier"].notna()]
        vec = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=50_000, ngram_range=(1, 2))
        X = vec.fit_transform(train["text"].astype(str).str[:2000])
        _LIGHT["vec"], _LIGHT["svd"] = vec, TruncatedSVD(64, random_state=0).fit(X)
        schema = LabelSchema.default()
        _LIGHT["prior"], _LIGHT["pos"] = TaskPriorBaseline(schema).fit(train), schema.head("tier").index("frontier")
    f = _LIGHT["svd"].transform(_LIGHT["vec"].transform(frame["text"].astype(str).str[:2000])).astype(np.float32)
    p = np.clip(_LIGHT["prior"].predict_proba(frame)["tier"][:, _LIGHT["pos"]], 1e-4, 1 - 1e-4)
    return f, p, np.log(p / (1 - p)), {"feature_tensor": "tfidf_svd64", "dim": 64, "threshold": 0.5,
                                       "scorer": "task_prior"}


def _features(bundle: str, frame: pd.DataFrame, cache: Path, tag: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features, calibrated p_frontier, info) of ``frame`` through ``bundle``; cached."""
    if bundle == "light":
        f, p, _, info = _light(frame, _LIGHT["full"])
        return f, p, info
    from classifier.serving.bundle import sha256_file
    from classifier.training.adapt import BundleFeaturizer, base_tier_logit

    key = hashlib.sha256((sha256_file(Path(bundle) / "manifest.json") + tag + str(len(frame))).encode()).hexdigest()[:16]
    path = cache / f"{Path(bundle).name}-{tag}-{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["f"], z["p"], json.loads(str(z["info"]))
    feat = BundleFeaturizer(bundle, threads=2)
    try:
        t0 = time.perf_counter()
        f, logits = feat.transform(frame["text"].astype(str).tolist())
        secs = time.perf_counter() - t0
        tier = feat.schema.head(feat.router.policy.tier_head)
        pos = tier.index(tier.positive_class or tier.classes[1])
        p = feat.router.proba_from_logits(logits)[tier.name][:, pos]
        d = base_tier_logit(logits[tier.name], pos)
        info = {"feature_tensor": feat.feature_name, "dim": int(f.shape[1]), "rows": len(frame), "seconds": secs,
                "rows_per_s": len(frame) / secs if secs > 0 else None,
                "threshold": feat.router.policy.tier_threshold}
    finally:
        feat.close()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, f=f, p=p, d=d, info=json.dumps(info))
    return f, p, info


def _base_logit(bundle: str, frame: pd.DataFrame, cache: Path, tag: str) -> np.ndarray:
    if bundle == "light":
        return _light(frame, _LIGHT["full"])[2]
    _features(bundle, frame, cache, tag)
    from classifier.serving.bundle import sha256_file

    key = hashlib.sha256((sha256_file(Path(bundle) / "manifest.json") + tag + str(len(frame))).encode()).hexdigest()[:16]
    return np.load(cache / f"{Path(bundle).name}-{tag}-{key}.npz")["d"]


def _eval(rows: pd.DataFrame, scores: np.ndarray, prices: Any) -> dict[str, Any]:
    from classifier.training.adapt import evaluate_scores

    return evaluate_scores(rows, scores, prices)


def _tfidf(train: pd.DataFrame, test: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1, max_features=50_000),
                         LogisticRegression(C=4.0, class_weight="balanced", max_iter=1000))
    if len(np.unique(y)) < 2:
        return np.full(len(test), float(y.mean()))
    pipe.fit(train["text"].astype(str).str[:2000].tolist(), y)
    return pipe.predict_proba(test["text"].astype(str).str[:2000].tolist())[:, 1]


def part_curve(bundle: str, frame: pd.DataFrame, prices: Any, cache: Path) -> dict[str, Any]:
    from classifier.evaluation.clusters import ClusterPrior, ClusterPriorConfig
    from classifier.training.adapt import AdaptConfig, AdaptedTierHead

    rows = frame[(frame["split"] == "ood") & frame["tier"].notna() & frame["cheap_correct"].notna()].reset_index(drop=True)
    f, p_base, info = _features(bundle, rows, cache, "ood")
    d = _base_logit(bundle, rows, cache, "ood")
    need = (rows["tier"] == "frontier").to_numpy()
    soft = 1.0 - rows["cheap_correct"].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {"rows": len(rows), "tasks": sorted(rows["source_task"].unique().tolist()), "features": info,
                           "runs": []}
    from tqdm.auto import tqdm

    for n in tqdm(NS, desc="curve N"):
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            idx = rng.permutation(len(rows))
            tr, te = idx[:n], idx[n:]
            run: dict[str, Any] = {"n": n, "seed": seed, "n_eval": int(len(te))}
            ev = rows.iloc[te]
            run["base"] = _eval(ev, p_base[te], prices)
            t0 = time.perf_counter()
            head = AdaptedTierHead(AdaptConfig(seed=seed, n_clusters=max(2, min(32, n // 10)))).fit(
                f[tr], d[tr], soft[tr])
            run["adapt_fit_s"] = time.perf_counter() - t0
            run["adapted"] = _eval(ev, head.predict_proba(f[te], d[te]), prices)
            run["adapted"]["head"] = {"C": head.C_, "base_logit_weight": head.a_, "cluster_prior_weight": head.g_,
                                      "blend": head.blend_}
            hard = AdaptedTierHead(AdaptConfig(seed=seed, n_clusters=max(2, min(32, n // 10)))).fit(
                f[tr], d[tr], (soft[tr] > 0.5).astype(float))
            run["adapted_hard_targets"] = _eval(ev, hard.predict_proba(f[te], d[te]), prices)
            feats_only = AdaptedTierHead(AdaptConfig(seed=seed, use_base_logit=False, use_cluster_prior=False)).fit(
                f[tr], d[tr], soft[tr])
            run["features_lr"] = _eval(ev, feats_only.predict_proba(f[te], d[te]), prices)
            run["tfidf_lr"] = _eval(ev, _tfidf(rows.iloc[tr], ev, need[tr].astype(int)), prices)
            prior = ClusterPrior(ClusterPriorConfig(n_clusters=max(2, min(32, n // 10)), seed=seed)).fit(
                f[tr], 1.0 - soft[tr])
            run["cluster_prior"] = _eval(ev, 1.0 - prior.cheap_rate(f[te]), prices)
            out["runs"].append(run)
            logger.info("N=%d seed=%d: base %.3f adapted %.3f tfidf %.3f cluster %.3f", n, seed,
                        run["base"]["auroc"], run["adapted"]["auroc"], run["tfidf_lr"]["auroc"],
                        run["cluster_prior"]["auroc"])
    out["summary"] = _summarise(out["runs"])
    return out


METHODS = ("base", "adapted", "adapted_hard_targets", "features_lr", "tfidf_lr", "cluster_prior")


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for n in sorted({r["n"] for r in runs}):
        sub = [r for r in runs if r["n"] == n]
        table[str(n)] = {}
        for m in METHODS:
            entry = {}
            for k in ("auroc", "apgr", "saving_at_quality"):
                vals = [r[m].get(k) for r in sub if r[m].get(k) is not None]
                entry[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "runs": len(vals)} if vals else None
            table[str(n)][m] = entry
        # the tiers' quality gap on each run's evaluated rows (the same for every router of a run):
        # APGR is left out of a run where it is within 2 standard errors of 0
        gaps = [(r["base"].get("quality_gap"), r["base"].get("quality_gap_se")) for r in sub]
        table[str(n)]["_quality_gap"] = [{"gap": g, "se": se} for g, se in gaps if g is not None]
    return table


def part_budget(bundle: str, frame: pd.DataFrame, prices: Any, cache: Path, alpha: float = 0.05) -> dict[str, Any]:
    from classifier.evaluation.prices import row_costs
    from classifier.evaluation.quality_budget import compare_budgets

    parts = {}
    for split in ("calibration", "test"):
        rows = frame[(frame["split"] == split) & frame["tier"].notna() & frame["cheap_correct"].notna()
                     & frame["frontier_correct"].notna()].reset_index(drop=True)
        _, p, _ = _features(bundle, rows, cache, split)
        cc, cf = row_costs(rows, prices)
        parts[split] = {"scores": p, "needs_frontier": (rows["tier"] == "frontier").to_numpy(),
                        "cheap_correct": rows["cheap_correct"].to_numpy(float),
                        "frontier_correct": rows["frontier_correct"].to_numpy(float), "cost_cheap": cc, "cost_frontier": cf}
    return compare_budgets(parts["calibration"], parts["test"], alpha=alpha)


def part_explore(bundle: str, frame: pd.DataFrame, prices: Any, cache: Path,
                 epsilons: tuple[float, ...] = (0.05, 0.1, 0.2)) -> dict[str, Any]:
    from classifier.training.adapt import AdaptConfig, AdaptedTierHead, _auroc

    rows = frame[(frame["split"] == "test") & frame["tier"].notna() & frame["cheap_correct"].notna()].reset_index(drop=True)
    f, p, info = _features(bundle, rows, cache, "test")
    d = _base_logit(bundle, rows, cache, "test")
    soft = 1.0 - rows["cheap_correct"].to_numpy(float)
    need = (rows["tier"] == "frontier").to_numpy()
    threshold = info.get("threshold") or 0.5
    out: dict[str, Any] = {"rows": len(rows), "threshold": threshold, "runs": []}
    for seed in SEEDS:
        rng = np.random.default_rng(100 + seed)
        idx = rng.permutation(len(rows))
        log, ev = idx[: len(idx) // 2], idx[len(idx) // 2:]
        full = AdaptedTierHead(AdaptConfig(seed=seed)).fit(f[log], d[log], soft[log])
        auc_full = _auroc(need[ev], full.predict_proba(f[ev], d[ev]))
        base_cheap = p[log] < threshold
        for eps in epsilons:
            # propensity of the cheap tier: 1 - eps where the policy says cheap, eps where it says frontier
            p_cheap = np.where(base_cheap, 1.0 - eps, eps)
            sent_cheap = rng.random(len(log)) < p_cheap
            obs = log[sent_cheap]
            w = 1.0 / p_cheap[sent_cheap]
            ipw = AdaptedTierHead(AdaptConfig(seed=seed)).fit(f[obs], d[obs], soft[obs], w)
            naive = AdaptedTierHead(AdaptConfig(seed=seed)).fit(f[obs], d[obs], soft[obs])
            out["runs"].append({"seed": seed, "epsilon": eps, "logged": int(len(log)), "observed_cheap": int(len(obs)),
                                "auroc_full_labels": auc_full,
                                "auroc_ipw": _auroc(need[ev], ipw.predict_proba(f[ev], d[ev])),
                                "auroc_unweighted": _auroc(need[ev], naive.predict_proba(f[ev], d[ev])),
                                "auroc_base": _auroc(need[ev], p[ev])})
    out["summary"] = {str(eps): {k: float(np.mean([r[k] for r in out["runs"] if r["epsilon"] == eps]))
                                 for k in ("auroc_full_labels", "auroc_ipw", "auroc_unweighted", "auroc_base",
                                           "observed_cheap")}
                      for eps in epsilons}
    return out


def part_timing(bundle: str, frame: pd.DataFrame, cache: Path, n: int = 10_000) -> dict[str, Any]:
    from classifier.training.adapt import AdaptConfig, AdaptedTierHead

    rows = frame[(frame["split"] == "train") & frame["tier"].notna() & frame["cheap_correct"].notna()]
    rows = rows.sample(n=min(n, len(rows)), random_state=0).reset_index(drop=True)
    sample = rows.iloc[:500]
    fresh = Path(cache) / f"timing-{time.time_ns()}"  # uncached on purpose: this is what is timed
    t0 = time.perf_counter()
    f_small, _, _ = _features(bundle, sample, fresh, "timing")
    feat_s = time.perf_counter() - t0
    rps = len(sample) / feat_s
    rng = np.random.default_rng(0)
    # the fit's cost depends on rows and feature width, not on the values: time it on the 500
    # prompts' features resampled (with jitter) to n rows
    f = f_small[rng.integers(0, len(f_small), size=len(rows))] + rng.normal(0, 1e-3, size=(len(rows), f_small.shape[1]))
    d = rng.normal(size=len(rows))
    y = 1.0 - rows["cheap_correct"].to_numpy(float)
    t0 = time.perf_counter()
    AdaptedTierHead(AdaptConfig()).fit(f, d, y)
    fit_s = time.perf_counter() - t0
    return {"rows": len(rows), "feature_dim": int(f.shape[1]), "feature_rows_per_s": rps,
            "features_s_estimated": len(rows) / rps, "fit_s": fit_s, "total_s_estimated": len(rows) / rps + fit_s,
            "note": "features timed on 500 prompts and scaled; fit timed on 10,000 rows"}


def part_alpha(bundle: str, frame: pd.DataFrame, alpha: float = 0.05, seeds: tuple[int, ...] = (0, 1, 2)
               ) -> dict[str, Any]:
    import tempfile

    from classifier.training.adapt import AdaptConfig, adapt_bundle

    out: dict[str, Any] = {"alpha": alpha, "delta": 0.05, "runs": []}
    for split in ("test", "ood"):
        rows = frame[(frame["split"] == split) & frame["cheap_correct"].notna() & frame["frontier_correct"].notna()]
        rows = rows[["text", "cheap_correct", "frontier_correct"]].reset_index(drop=True)
        for budget in ("misroute", "quality-loss"):
            for seed in seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    r = adapt_bundle(bundle, rows, Path(tmp) / "adapted", config=AdaptConfig(seed=seed), budget=budget,
                                     alpha=alpha, mlflow=False, force=True, progress=False)
                m = r.metrics
                held, cal = m["holdout_threshold"], m["threshold"]
                risk = held["misroute_rate"] if budget == "misroute" else held.get("quality_loss")
                out["runs"].append({"rows": split, "budget": budget, "seed": seed, "n": m["rows"],
                                    "threshold": cal["threshold"], "calibration": cal, "holdout": held,
                                    "holdout_risk": risk, "within_alpha": risk is not None and risk <= alpha})
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for bundle, res in result["bundles"].items():
        summ = res.get("curve", {}).get("summary")
        if not summ:
            continue
        ns = sorted(int(k) for k in summ)
        for ax, metric in zip(axes, ("auroc", "saving_at_quality"), strict=True):
            for m in ("base", "adapted", "tfidf_lr", "cluster_prior"):
                ys = [summ[str(n)][m][metric]["mean"] if summ[str(n)][m][metric] else np.nan for n in ns]
                ax.plot(ns, ys, marker="o", label=f"{m} ({bundle})")
            ax.set_xscale("log")
            ax.set_xlabel("labelled prompts from the new tasks (N)")
            ax.set_ylabel({"auroc": "tier AUROC", "saving_at_quality": "saving @95% frontier quality"}[metric])
    axes[0].legend(fontsize=7)
    fig.suptitle("adapting to the ood split's held-out tasks (mean of 3 seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", required=True,
                        help="bundle to adapt (repeatable); 'light': TF-IDF features + task-prior scores, no network")
    parser.add_argument("--data", default="data/build/dataset.parquet")
    parser.add_argument("--prices", default=str(DEFAULT_PRICES_PATH))
    parser.add_argument("--out", default="evaluation/adapt_curve.json")
    parser.add_argument("--parts", default="curve,budget,explore,timing")
    parser.add_argument("--cache", default="/tmp/tierwise-adapt-cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from classifier.evaluation.prices import Prices

    data = Path(args.data)
    frame = pd.read_parquet(data / "dataset.parquet" if data.is_dir() else data)
    _LIGHT["full"] = frame
    prices = Prices.from_yaml(args.prices)
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    result.setdefault("bundles", {})
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    cache = Path(args.cache)
    for bundle in args.bundle:
        res = result["bundles"].setdefault(Path(bundle).name, {})  # 'light' -> key "light"
        res["path"] = bundle
        for part in parts:
            t0 = time.perf_counter()
            if part == "curve":
                res["curve"] = part_curve(bundle, frame, prices, cache)
            elif part == "budget":
                res["budget"] = part_budget(bundle, frame, prices, cache)
            elif part == "explore":
                res["explore"] = part_explore(bundle, frame, prices, cache)
            elif part == "timing":
                res["timing"] = part_timing(bundle, frame, cache)
            elif part == "alpha":
                res["alpha"] = part_alpha(bundle, frame)
            else:
                raise SystemExit(f"unknown part {part!r}")
            logger.info("%s %s done in %.0fs", bundle, part, time.perf_counter() - t0)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(to_jsonable(result), indent=2) + "\n", encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    sys.stdout.write(summary_markdown(result) + "\n")
    return 0


def summary_markdown(result: dict[str, Any]) -> str:
    lines = []
    for bundle, res in result["bundles"].items():
        summ = res.get("curve", {}).get("summary")
        if summ:
            lines += [f"### {bundle}: learning curve on the ood split's held-out tasks (mean ± sd, 3 seeds)", "",
                      "| N | router | tier AUROC | APGR | saving @95% quality |", "|---|---|---|---|---|"]
            notes = []
            for n, per in summ.items():
                gaps = per.get("_quality_gap") or []
                for m, e in per.items():
                    if m.startswith("_"):
                        continue

                    def fmt(x: Any) -> str:
                        return "-" if not x else f"{x['mean']:.3f} ± {x['std']:.3f}"

                    a = e["apgr"]
                    apgr_cell = ("n/a" if not a else fmt(a) + (f" ({a['runs']} of {len(gaps)} runs)"
                                                               if gaps and a.get("runs", len(gaps)) < len(gaps) else ""))
                    lines.append(f"| {n} | {m} | {fmt(e['auroc'])} | {apgr_cell} | {fmt(e['saving_at_quality'])} |")
                if gaps:
                    notes.append(f"N={n}: frontier-minus-cheap quality " + ", ".join(
                        f"{g['gap']:+.3f} ± {g['se']:.3f}" for g in gaps))
            lines.append("")
            if notes:
                lines += ["APGR is shown only for runs whose evaluated rows have a tiers' quality gap at least 2 "
                          "standard errors from 0 (`costs.apgr_defined`); per run, gap ± standard error: "
                          + "; ".join(notes) + ".", ""]
        if "budget" in res:
            from classifier.evaluation.quality_budget import budget_table

            lines += [f"### {bundle}: budgets on the default test split", "", budget_table(res["budget"]), ""]
        if "explore" in res:
            lines += [f"### {bundle}: exploration simulation (test split replayed)", "",
                      "| exploration share | observed cheap outcomes | AUROC full labels | AUROC IPW | AUROC unweighted | base |",
                      "|---|---|---|---|---|---|"]
            for eps, e in res["explore"]["summary"].items():
                lines.append(f"| {eps} | {e['observed_cheap']:.0f} | {e['auroc_full_labels']:.3f} | {e['auroc_ipw']:.3f} | "
                             f"{e['auroc_unweighted']:.3f} | {e['auroc_base']:.3f} |")
            lines.append("")
        if "timing" in res:
            t = res["timing"]
            lines += [f"{bundle}: adapt on {t['rows']} rows: features ~{t['features_s_estimated']:.0f}s "
                      f"({t['feature_rows_per_s']:.0f} rows/s), fit {t['fit_s']:.1f}s, total ~{t['total_s_estimated']:.0f}s", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
