"""The report's adapt section: the task-prior bar and both budgets computed by ``tierwise report``
on the synthetic data set of ``test_report``, rendered in HTML and Markdown; the learning curve
read from an ``adapt_curve.json``. (The adapted bundle's own record: ``test_adapt``.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from classifier.evaluation import adapt_sections
from classifier.evaluation.report import ReportConfig, build_report
from classifier.evaluation.report_render import render_html, render_markdown


@pytest.fixture(scope="module")
def report(tiny_bundle, tmp_path_factory):
    from test_report import make_dataset, prepare_bundle

    data = make_dataset(seed=3)
    data_dir = tmp_path_factory.mktemp("adapt-report-data")
    data.to_parquet(data_dir / "dataset.parquet")
    bundle = prepare_bundle(tiny_bundle, tmp_path_factory.mktemp("adapt-report") / "bundle", data)
    return build_report(ReportConfig(bundle=bundle, data=data_dir, n_boot=0, baseline_router=False)), data


@pytest.mark.slow  # builds a whole report (~6 s)
def test_task_prior_and_budgets_are_in_the_report(report):
    from classifier.data.schema import LabelSchema
    from classifier.evaluation.baselines import TaskPriorBaseline

    result, data = report
    rep = result.report
    sec = rep["adapt"]
    rows = rep["rows"]
    routed = np.asarray(rows["routed"], dtype=bool)
    need = np.asarray(rows["needs_frontier"], dtype=bool)[routed]
    tp = sec["task_prior"]
    # the bundle's number is the report's own p_frontier on the routed rows
    assert tp["model"]["auroc"] == pytest.approx(roc_auc_score(need, np.asarray(rows["p_frontier"])[routed]))
    # the prior's: a per-source-task lookup fitted on train, scored on the same rows
    schema = LabelSchema.default()
    test = data[data["split"] == "test"].reset_index(drop=True)
    prior = TaskPriorBaseline(schema).fit(data[data["split"] == "train"])
    p_prior = prior.predict_proba(test.iloc[np.flatnonzero(routed)])["tier"][:, schema.head("tier").index("frontier")]
    assert tp["task_prior"]["auroc"] == pytest.approx(roc_auc_score(need, p_prior))
    assert tp["task_prior"]["auroc"] > 0.55  # the synthetic tasks differ in difficulty: the prior ranks them
    assert tp["auroc_margin"] == pytest.approx(tp["model"]["auroc"] - tp["task_prior"]["auroc"])
    assert tp["beats_prior"] is (tp["auroc_margin"] >= 0.02)
    assert tp["share_of_rows_with_a_seen_task"] == pytest.approx(1.0)

    b = sec["budgets"]
    assert {"misroute", "quality-loss"} <= set(b) and b["n"] == int(routed.sum())
    # quality loss counts a subset of the misroutes, so its threshold keeps at least as much cheap
    assert b["quality-loss"]["test"]["cheap_share"] >= b["misroute"]["test"]["cheap_share"]
    assert sec["adaptation"] is None  # the bundle was not adapted

    md, html = render_markdown(rep), render_html(rep, result.figures)
    verdict = "beats the task prior" if tp["beats_prior"] else "does NOT beat the task prior"
    for page in (md, html):
        assert verdict in page
        assert f"{tp['task_prior']['auroc']:.3f}" in page and f"{tp['model']['auroc']:.3f}" in page
        assert f"{100 * b['quality-loss']['test']['cheap_share']:.1f}%" in page
    assert '<section id="adapt">' in html and 'href="#adapt"' in html


def test_learning_curve_is_read_from_the_benchmark_json(tmp_path):
    summary = {str(n): {m: {"auroc": {"mean": v, "std": 0.0}} for m, v in zip(
        adapt_sections.CURVE_METHODS, (0.61, 0.7 + n / 1e4, 0.65, 0.66), strict=True)} for n in (100, 300)}
    path = tmp_path / "adapt_curve.json"
    path.write_text(json.dumps({"bundles": {"student": {"curve": {"summary": summary}}}}))
    cv = adapt_sections._curve(path)
    assert cv["bundles"]["student"] == [{"n": 100, "base": 0.61, "adapted": 0.71, "tfidf_lr": 0.65, "cluster_prior": 0.66},
                                        {"n": 300, "base": 0.61, "adapted": 0.73, "tfidf_lr": 0.65, "cluster_prior": 0.66}]
    md = adapt_sections.render_markdown({"curve": cv})
    assert "| student | 300 | 0.610 | 0.730 | 0.650 | 0.660 |" in md
    assert adapt_sections._curve(tmp_path / "missing.json") is None
    path.write_text("{not json")
    assert adapt_sections._curve(path) is None
    assert adapt_sections.render_html(None) == "" and adapt_sections.render_markdown({}) == ""
