"""The page of ``report --engine ray`` (``classifier.scale.report_page``): binned sweeps within their
stated bounds of the in-process sweep, Poisson-bootstrap intervals independent of the block layout
and close to the in-process bootstrap, and the page itself from a local 2-CPU Ray cluster.

The sweep and bootstrap tests need no model (synthetic outcomes); the block-layout test scores
rows with the tiny bundle in process; the page test runs the real command on Ray (``slow``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_scale_ray

from classifier.evaluation import costs
from classifier.scale import report_page

ray_cluster = test_scale_ray.ray_cluster  # the Ray tests' local 2-CPU cluster fixture, one per module


def _outcomes(n: int = 3000, seed: int = 0) -> tuple[costs.RoutingOutcomes, np.ndarray]:
    rng = np.random.default_rng(seed)
    qc = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=n)
    qf = np.clip(qc + rng.choice([0.0, 0.25, 0.5, -0.25], size=n, p=[0.5, 0.25, 0.15, 0.1]), 0, 1)
    need = qf > qc
    score = np.clip(0.5 * need + rng.normal(0.25, 0.2, size=n), 0, 1)
    cc, cf = rng.uniform(0.1, 0.2, n) * 1e-3, rng.uniform(1, 3, n) * 1e-3
    return costs.RoutingOutcomes(qc, qf, cc, cf, need), score


def _binned(oc: costs.RoutingOutcomes, score: np.ndarray, blocks: int = 1) -> dict:
    bins = None
    for idx in np.array_split(np.arange(len(oc)), blocks):
        gain = oc.frontier_correct[idx] - oc.cheap_correct[idx]
        part = report_page.sweep_stats(score[idx], gain, oc.cost_frontier[idx] - oc.cost_cheap[idx],
                                       oc.needs_frontier[idx])
        bins = report_page.merge_sweep(bins, part)
    return report_page.binned_sweep(bins, oc.totals(), (0.5, 0.8, 0.95), costs.frontier_quality_target(oc))


@pytest.mark.parametrize("n_bins", [16, 1 << 16])
def test_binned_sweep_is_within_its_stated_bound_of_the_in_process_sweep(monkeypatch, n_bins):
    monkeypatch.setattr(report_page, "SWEEP_BINS", n_bins)
    oc, score = _outcomes()
    got = _binned(oc, score, blocks=3)
    want_apgr = costs.apgr(oc, score)
    assert abs(got["apgr"] - want_apgr) <= got["apgr_max_error"] + 1e-12
    if n_bins == 16:  # coarse bins: the bound is not trivially zero and the value does move
        assert got["apgr_max_error"] > 1e-3 and got["apgr"] != pytest.approx(want_apgr, abs=1e-9)
    else:  # 3000 rows in 65536 bins: almost every row alone in its bin
        assert got["apgr_max_error"] < 1e-3
    for key, point in costs.cpt(oc, score).items():
        mine = got["cpt"][key]
        assert (point is None) == (mine is None) or (mine is None and point is not None)
        if mine is not None:  # edges are in-process operating points: a lower bound, within the error
            assert mine["cheap_share"] <= point["cheap_share"] + 1e-12
            assert point["cheap_share"] - mine["cheap_share"] <= mine.get("cheap_share_max_error", 0) + 1e-12
    want_cq = costs.cost_at_quality(oc, score, costs.frontier_quality_target(oc))
    assert got["cost_at_quality"]["cost"] >= want_cq["cost"] - 1e-12
    # at the bin edges the sweep is exact: every edge row equals the in-process row at that threshold
    table = got["table"]
    exact = costs.threshold_sweep(oc, score, thresholds=table["threshold"].to_numpy())
    np.testing.assert_allclose(table.drop(columns="threshold").to_numpy(),
                               exact.drop(columns="threshold").to_numpy(), rtol=1e-9, atol=1e-12)


def test_poisson_weights_depend_on_the_row_only():
    keys = [f"row-{i}" for i in range(4000)]
    w = report_page.poisson_weights(keys, 200, seed=0)
    assert w.shape == (4000, 200)
    np.testing.assert_array_equal(report_page.poisson_weights(keys[1000:1010], 200, seed=0), w[1000:1010])
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02  # Poisson(1)
    assert not np.array_equal(report_page.poisson_weights(keys[:10], 200, seed=1), w[:10])


def test_poisson_bootstrap_interval_brackets_and_is_as_wide_as_the_in_process_bootstrap():
    from classifier.evaluation.metrics import bootstrap_ci

    rng = np.random.default_rng(1)
    hit = rng.random(3000) < 0.12
    w = report_page.poisson_weights([str(i) for i in range(3000)], 200)
    by_blocks = sum(np.stack([np.ones(len(i)), hit[i]], axis=1).T @ w[i] for i in np.array_split(np.arange(3000), 7))
    whole = np.stack([np.ones(3000), hit], axis=1).T @ w
    np.testing.assert_allclose(by_blocks, whole)
    lo, hi = report_page.interval(whole[1], whole[0])
    assert lo < hit.mean() < hi
    _, blo, bhi = bootstrap_ci(np.mean, hit.astype(float), n_boot=200, seed=0)
    assert 0.8 < (hi - lo) / (bhi - blo) < 1.25


def test_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    y[y == 3] = 2  # a class never true: sklearn's macro average still counts it when predicted
    conf = np.zeros((4, 4))
    np.add.at(conf, (y, p), 1)
    assert report_page.macro_f1(conf) == pytest.approx(f1_score(y, p, average="macro"))


@pytest.mark.slow
def test_block_layout_does_not_change_the_page(tiny_bundle):
    """The summed summary (intervals, examples, sweeps) is the same from one block or seven."""
    from classifier.evaluation.prices import DEFAULT_PRICES_PATH, Prices
    from classifier.scale.report import ReportSummary
    from classifier.serving.runtime import Router

    frame = test_scale_ray._labelled_frame().head(700).reset_index(drop=True)
    with Router.load(tiny_bundle, threads=1) as router:
        probs = router.predict_proba(frame["text"].tolist())
        calib = {h: (router.temperatures[h], router.biases.get(h)) for h in router.head_names}
        args = (router.schema, router.policy, Prices.from_yaml(DEFAULT_PRICES_PATH))
        pages = []
        for blocks in (1, 7):
            total = ReportSummary(top_k=5)
            for idx in np.array_split(np.arange(len(frame)), blocks):
                total.merge(ReportSummary.from_frame(frame.iloc[idx].reset_index(drop=True),
                                                     {k: v[idx] for k, v in probs.items()}, *args,
                                                     calibration=calib, n_boot=50, top_k=5))
            report, _ = report_page.build_page(total, router.schema, router.policy, router.manifest,
                                               {"bundle": "b", "data": "d", "split": "test", "prices": "p",
                                                "currency": "USD"}, router.temperatures)
            pages.append(report)
    one, seven = pages
    for key in ("scale", "misroutes", "sensitivity", "routing", "heads", "calibration"):
        assert _rounded(one[key]) == _rounded(seven[key]), key


def _rounded(x):
    """Floats to 10 decimals: sums of float costs differ in the last bit with the summation order."""
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return round(x, 10) if isinstance(x, float) else x


@pytest.mark.slow
def test_ray_report_page(ray_cluster, tiny_bundle, tmp_path):
    """``report --engine ray`` writes the page: HTML/Markdown with the Ray banner, a report.json the
    release gate can read, sweeps within their bounds and intervals close to the in-process ones."""
    from classifier.cli import main
    from classifier.evaluation.report import ReportConfig, build_report, load_report_json

    data = tmp_path / "labelled.parquet"
    test_scale_ray._labelled_frame().to_parquet(data)
    local = build_report(ReportConfig(bundle=tiny_bundle, data=data, split="test", baseline_router=False,
                                      threads=1)).report
    out = tmp_path / "ray" / "report.html"
    assert main(["report", "--bundle", str(tiny_bundle), "--data", str(data), "--out", str(out), "--engine", "ray",
                 "--threads", "1", "--no-mlflow"]) == 0
    html, md = out.read_text(), out.with_name("report.md").read_text()
    got = load_report_json(out.parent)
    n = local["meta"]["n_rows"]
    for page in (html, md):
        assert f"Computed on a Ray cluster over {n} rows" in page and "65536 edges" in page
        assert "Poisson-bootstrap" in page and "TF-IDF baseline router" in page
    assert html.count("data:image/png;base64,") >= 3  # cost curves, reliability, confusion
    stats = json.loads((out.parent / "report_stats.json").read_text())
    err = got["scale"]["errors"]
    assert abs(got["metrics"]["apgr"] - local["metrics"]["apgr"]) <= err["apgr_max_error"] + 1e-9
    assert stats["metrics"]["apgr"] == got["metrics"]["apgr"]
    for key in local["metrics"]:
        if key.startswith("cheap_share_at_"):
            assert 0 <= local["metrics"][key] - got["metrics"][key] <= err.get(f"{key}_max_error", 0) + 1e-9
    assert got["headline"]["misroutes"] == local["headline"]["misroutes"]
    for name, (lo, hi) in got["scale"]["intervals"].items():
        assert lo <= got["metrics"].get(name, lo) <= hi, name
    lo, hi = got["headline"]["misroute_ci"]
    llo, lhi = local["headline"]["misroute_ci"]  # Wilson in process
    assert 0.7 < (hi - lo) / (lhi - llo) < 1.4
    for key in ("kept_cheap", "escalated"):
        assert [x["id"] for x in got["misroutes"][key]] == [x["id"] for x in local["misroutes"][key]]
