"""Per-cluster Beta prior: recovers cluster rates, updates from outcomes, names clusters, and its
ONNX lookup equals the numpy one."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.errors import DataError
from classifier.evaluation.clusters import ClusterPrior, ClusterPriorConfig


def _blobs(n_per: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.eye(4) * 5
    rates = np.array([0.9, 0.6, 0.3, 0.1])
    x = np.concatenate([c + rng.normal(size=(n_per, 4)) * 0.3 for c in centres])
    group = np.repeat(np.arange(4), n_per)
    success = (rng.random(len(x)) < rates[group]).astype(float)
    texts = [f"prompt of kind {g} number {i}" for i, g in enumerate(group)]
    tasks = np.array(["chat_writing", "code", "math_reasoning", "knowledge"])[group]
    return x, group, success, texts, tasks, rates


def test_rates_recovered_and_named():
    x, group, success, texts, tasks, rates = _blobs()
    prior = ClusterPrior(ClusterPriorConfig(n_clusters=4, prior_strength=2)).fit(x, success, texts=texts, tasks=tasks)
    for g in range(4):
        assert prior.cheap_rate(x[group == g]).mean() == pytest.approx(rates[g], abs=0.08)
    summary = prior.summary()
    assert len(summary) == 4 and all(s["n"] == 200 for s in summary)
    by_task = {s["task"]: s for s in summary}
    assert by_task["code"]["cheap_rate"] == pytest.approx(0.6, abs=0.08)
    assert by_task["code"]["interval"][0] < by_task["code"]["cheap_rate"] < by_task["code"]["interval"][1]
    assert "cheap succeeds" in by_task["code"]["description"] and "n = 200" in by_task["code"]["description"]
    assert "kind 1" in by_task["code"]["examples"][0]


def test_update_moves_the_posterior_towards_new_outcomes():
    x, group, success, *_ = _blobs()
    prior = ClusterPrior(ClusterPriorConfig(n_clusters=4)).fit(x, success)
    c = prior.assign(x[group == 0][:1])[0]
    before = prior.cheap_rate_[c]
    prior.update(np.full(500, c), np.zeros(500))  # the cheap tier now fails there
    assert prior.cheap_rate_[c] < before - 0.3
    with pytest.raises(DataError):
        prior.update([99], [1.0])
    with pytest.raises(DataError):
        ClusterPrior().fit(x, success * 2)


def test_onnx_lookup_matches_numpy():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x, _, success, *_ = _blobs()
    prior = ClusterPrior(ClusterPriorConfig(n_clusters=4)).fit(x, success)
    for opset in (13, 18):
        nodes, inits = prior.onnx_nodes("f", "prior", opset=opset)
        graph = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["b", 4])],
                                  [helper.make_tensor_value_info("prior", TensorProto.FLOAT, ["b"])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"f": x.astype(np.float32)})[0]
        assert got == pytest.approx(prior.frontier_logit(x), abs=1e-4)


def test_report_sections_render():
    from classifier.evaluation.adapt_sections import (
        budgets_markdown,
        budgets_section,
        clusters_markdown,
        clusters_section,
    )

    x, group, success, texts, tasks, _ = _blobs()
    prior = ClusterPrior(ClusterPriorConfig(n_clusters=4)).fit(x, success, texts=texts, tasks=tasks)
    md = clusters_markdown(clusters_section(prior))
    assert md.count("cheap succeeds") == 4 and "n = 200" in md
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(2):
        s = rng.random(1500)
        c = (rng.random(1500) > s).astype(float)
        f = np.where(rng.random(1500) < 0.3, 0.0, 1.0)
        c[3] = np.nan  # rows without both outcomes are left out, not fatal
        parts.append({"scores": s, "needs_frontier": ~(c > 0.5), "cheap_correct": c, "frontier_correct": f,
                      "cost_cheap": np.ones(1500), "cost_frontier": np.full(1500, 5.0)})
    sec = budgets_section(parts[0], parts[1])
    assert sec["quality-loss"]["test"]["n"] == 1499
    assert "| quality-loss |" in budgets_markdown(sec)
