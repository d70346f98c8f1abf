"""``tierwise adapt`` on the tiny bundle: the head learns the team's outcomes, ships inside the
ONNX graph (served == fitted), is calibrated and gated, and the new bundle names its parent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classifier.errors import ConfigError, DataError
from classifier.training.adapt import (
    AdaptConfig,
    AdaptedTierHead,
    _newton_logreg,
    adapt_bundle,
    find_feature_tensor,
)

WORDS = "write sort array explain answer question email story list summary letter poem".split()
HARD = "password"  # one token of the tiny tokenizer ("theorem" splits into sub-words)


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Prompts with the word HARD fail on the cheap tier 85% of the time, others 15%."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.4
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))).tolist() + ([HARD] * 5 if h else []))
             + f" {i}" for i, h in enumerate(hard)]
    cheap = (rng.random(n) > np.where(hard, 0.85, 0.15)).astype(float)
    return pd.DataFrame({"text": texts, "cheap_correct": cheap, "frontier_correct": np.ones(n),
                         "tier": np.where(cheap > 0, "cheap", "frontier"), "task": "knowledge"})


def test_newton_soft_targets_match_sklearn_on_duplicated_rows():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = 1 / (1 + np.exp(-(X[:, 0] - X[:, 1])))  # soft targets
    beta = _newton_logreg(np.c_[np.ones(300), X], y, np.ones(300), C=0.5)
    sk = LogisticRegression(C=0.5, tol=1e-10, max_iter=1000).fit(
        np.r_[X, X], np.r_[np.ones(300), np.zeros(300)], sample_weight=np.r_[y, 1 - y])
    assert beta[1:] == pytest.approx(sk.coef_[0], abs=1e-4)
    assert beta[0] == pytest.approx(sk.intercept_[0], abs=1e-4)


def test_head_uses_the_signal_and_refuses_one_outcome():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(400, 8))
    d = rng.normal(size=400)
    y = (rng.random(400) < 1 / (1 + np.exp(-2 * f[:, 0]))).astype(float)
    head = AdaptedTierHead(AdaptConfig(n_clusters=4)).fit(f, d, y)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, head.decision_function(f, d)) > 0.75
    assert abs(head.w_[0]) > 3 * np.abs(head.w_[1:]).max()
    with pytest.raises(DataError, match="one outcome"):
        AdaptedTierHead(AdaptConfig(n_clusters=4)).fit(f, d, np.ones(400))
    with pytest.raises(ConfigError):
        AdaptConfig(Cs=())


def test_blend_weight_zero_is_the_cluster_prior_itself():
    """The empirical-Bayes blend keeps the per-cluster prior alone as a candidate: with weight 0
    the served head is exactly the prior's frontier logit (ranks as the cluster-prior baseline)."""
    rng = np.random.default_rng(2)
    c = rng.integers(0, 4, 400)
    f = rng.normal(size=(4, 8))[c] * 3 + rng.normal(size=(400, 8))
    y = (rng.random(400) < np.array([0.1, 0.3, 0.6, 0.9])[c]).astype(float)
    d = rng.normal(size=400)
    prior_only = AdaptedTierHead(AdaptConfig(n_clusters=4, blend_weights=(0.0,))).fit(f, d, y)
    assert (prior_only.blend_, prior_only.a_, prior_only.g_, prior_only.b_) == (0.0, 0.0, 1.0, 0.0)
    assert prior_only.decision_function(f, d) == pytest.approx(prior_only.prior_.frontier_logit(f))
    chosen = AdaptedTierHead(AdaptConfig(n_clusters=4)).fit(f, d, y)
    assert chosen.blend_ in AdaptConfig().blend_weights
    cv = {k: v for k, v in chosen.blend_cv_.items() if k != "se"}  # out-of-fold log loss per weight
    best = min(cv.values())
    # one-SE rule: the smallest weight within one standard error of the best log loss
    assert best <= cv[f"{chosen.blend_:g}"] <= best + chosen.blend_cv_["se"] + 1e-12
    assert all(float(k) >= chosen.blend_ for k, v in cv.items() if v == best)
    with pytest.raises(ConfigError, match="blend_weights"):
        AdaptConfig(blend_weights=(1.5,))


def test_feature_tensor_of_teacher_and_student_graphs(tiny_bundle):
    import onnx
    import torch

    from classifier.data.schema import LabelSchema
    from classifier.training.student import StaticStudent

    teacher = onnx.load(str(tiny_bundle / "model.onnx"))
    name = find_feature_tensor(teacher, LabelSchema.default().head_names)
    assert name not in {o.name for o in teacher.graph.output}
    torch.manual_seed(0)
    student = StaticStudent(np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32), LabelSchema.default(),
                            hidden=16).to_onnx()
    assert find_feature_tensor(student, LabelSchema.default().head_names) == "h"


@pytest.fixture()
def mlflow_store(monkeypatch, tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.mark.slow  # fits, exports and registers a bundle (~6 s)
def test_adapt_bundle_end_to_end(tiny_bundle, tmp_path, mlflow_store):
    from classifier import tracking
    from classifier.serving.bundle import sha256_file, verify_bundle
    from classifier.serving.runtime import Router

    rows = _rows(900)
    out = tmp_path / "adapted"
    result = adapt_bundle(tiny_bundle, rows, out, config=AdaptConfig(n_clusters=8), threads=1, progress=False,
                          alpha=0.2, delta=0.1)
    m = result.metrics
    assert result.gate["passed"] and m["adapted"]["auroc"] > 0.65
    assert m["adapted"]["auroc"] > m["parent"]["auroc"]  # the untrained tiny model knows nothing of HARD
    assert m["parity_max_abs_diff"] < 1e-3

    manifest = verify_bundle(out)
    parent = manifest.extra["parent_bundle"]
    assert parent["path"] == str(tiny_bundle)
    assert parent["manifest_sha256"] == sha256_file(tiny_bundle / "manifest.json")
    assert manifest.training_run_id == result.run_id and manifest.mlflow_model_version == result.model_version
    # what `tierwise report` shows of the adaptation (its adapt section): numbers, no prompt text
    from classifier.evaluation import adapt_sections

    record = adapt_sections._adaptation(manifest.extra)
    md = adapt_sections.render_markdown({"adaptation": record})
    assert str(tiny_bundle) in md and f"| adapted | {m['adapted']['auroc']:.3f} |" in md
    assert f"| parent | {m['parent']['auroc']:.3f} |" in md and "release gate passed" in md
    assert record["clusters"] and all("examples" not in c for c in record["clusters"])
    assert "cheap succeeds" in md and not any(w in md for w in ("password", "story", "poem"))
    versions = tracking.client(mlflow_store).search_model_versions("name='tierwise-adapted'")
    # MLflow 3 gives versions as int here; tierwise keeps them as the registry's string form
    assert [str(v.version) for v in versions] == [result.model_version]

    # the served router routes by the new head: hard prompts go frontier far more often
    test = _rows(300, seed=7)
    with Router.load(out) as router:
        p = router.predict_proba(test["text"].tolist())["tier"][:, 1]
        decisions = router.route(test["text"].tolist())
        threshold = router.policy.tier_threshold
        other = router.predict_proba(test["text"].tolist())["task"]
    hard = test["text"].str.contains(HARD).to_numpy()
    assert p[hard].mean() > p[~hard].mean() + 0.3
    assert threshold == pytest.approx(m["threshold"]["threshold"])
    assert {d.tier for d in decisions} <= {"cheap", "frontier", "self_hosted"}
    with Router.load(tiny_bundle) as parent_router:  # other heads are the parent's, untouched
        assert other == pytest.approx(parent_router.predict_proba(test["text"].tolist())["task"], abs=1e-5)
    # the held-out misroute at the calibrated threshold is within the budget (up to sampling noise)
    assert m["holdout_threshold"]["misroute_rate"] <= 0.2 + 0.05


@pytest.mark.slow
def test_gate_failure_writes_nothing(tiny_bundle, tmp_path):
    """Outcomes that reverse between the fitted and the held-out rows (drift): the head learns
    HARD -> frontier, the held-out rows say HARD -> cheap, so it ranks them far worse than the
    parent (which knows nothing of HARD): the gate fails and no bundle is written."""
    from classifier.training.adapt import _split_rows

    rows = _rows(600)
    cfg = AdaptConfig(n_clusters=4)
    held = _split_rows(len(rows), 0.2, 0.2, cfg.seed) == "holdout"  # the split adapt_bundle makes
    rows.loc[held, "cheap_correct"] = 1.0 - rows.loc[held, "cheap_correct"]
    rows["tier"] = np.where(rows["cheap_correct"] > 0, "cheap", "frontier")
    out = tmp_path / "never"
    result = adapt_bundle(tiny_bundle, rows, out, config=cfg, threads=1, progress=False, mlflow=False)
    assert not result.gate["passed"] and not out.exists()
    assert result.metrics["adapted"]["auroc"] < 0.3  # it did learn HARD -> frontier, which the held-out rows reverse


def test_adapt_cli_rejects_same_out_and_bad_rows(tiny_bundle, tmp_path, capsys):
    from classifier.cli import main as cli_main

    rows = _rows(50)
    rows.loc[3, "cheap_correct"] = 2.0
    path = tmp_path / "rows.jsonl"
    rows.to_json(path, orient="records", lines=True)
    rc = cli_main(["adapt", "--bundle", str(tiny_bundle), "--rows", str(path), "--out", str(tiny_bundle),
                   "--no-mlflow"])
    assert rc == 2 and "--out must differ" in capsys.readouterr().err
    from classifier.training.feedback import load_training_rows

    loaded = load_training_rows(path, rejects_path=tmp_path / "rej.jsonl")
    assert len(loaded) == 49
    rej = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert rej[0]["row"] == 3 and rej[0]["field"] == "cheap_correct" and "not in [0, 1]" in rej[0]["reason"]
    assert Path(rej[0]["file"]) == path


@pytest.mark.slow
def test_adapt_int8_bundle_graph_matches_the_fitted_head(tiny_model_dir, tmp_path):
    """An int8 bundle quantises activations per batch, so served logits move with batch company;
    adapt still writes a graph that computes exactly the fitted head (checked on the same
    features), and the adapted bundle loads and routes. A wrong head would fail the graph check."""
    from classifier.serving.runtime import Router
    from classifier.training.export import ExportConfig, export_model

    parent = tmp_path / "int8"
    export_model(ExportConfig(model_dir=tiny_model_dir, out_dir=parent, int8=True, dataset=None,
                              policy=Path(__file__).resolve().parents[1] / "serving" / "policy.example.yaml",
                              log_to_mlflow=False))
    rows = _rows(900)
    result = adapt_bundle(parent, rows, tmp_path / "adapted", config=AdaptConfig(n_clusters=8), threads=1,
                          progress=False, alpha=0.2, delta=0.1, force=True, mlflow=False)
    m = result.metrics
    assert m["parity_graph_max_abs_diff"] < 1e-3
    assert "parity_max_abs_diff" in m  # reported, not a gate, for int8
    with Router.load(tmp_path / "adapted") as router:
        p = router.predict_proba(_rows(50, seed=3)["text"].tolist())["tier"]
    assert p.shape == (50, 2) and np.allclose(p.sum(axis=1), 1.0)
