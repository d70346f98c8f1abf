"""Metrics per head against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from classifier.data.schema import LabelSchema
from classifier.errors import SchemaError
from classifier.evaluation.metrics import (
    bootstrap_ci,
    confusion,
    evaluate_heads,
    flatten_metrics,
    recall_at_precision,
    wilson_interval,
)

SCHEMA = LabelSchema.default()


def _random_case(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)]})
    probs = {}
    for head in SCHEMA.heads:
        y = rng.integers(0, head.num_classes, n)
        logits = rng.normal(size=(n, head.num_classes))
        logits[np.arange(n), y] += 1.0  # informative but imperfect
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labels = np.array(head.classes, dtype=object)[y]
        labels[rng.random(n) < 0.2] = None  # null labels: not evaluated
        frame[head.column] = labels
        probs[head.name] = p
    return frame, probs


def test_matches_sklearn_on_labelled_rows_only():
    frame, probs = _random_case()
    result = evaluate_heads(SCHEMA, frame, probs)
    for head in SCHEMA.heads:
        mask = frame[head.column].notna().to_numpy()
        y = np.array([head.classes.index(v) for v in frame.loc[mask, head.column]])
        pred = probs[head.name][mask].argmax(1)
        m = result[head.name]
        assert m["n"] == mask.sum() < len(frame)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        rec = recall_score(y, pred, average=None, labels=range(head.num_classes))
        prec = precision_score(y, pred, average=None, labels=range(head.num_classes))
        for i, cls in enumerate(head.classes):
            assert m[f"recall_{cls}"] == pytest.approx(rec[i])
            assert m[f"precision_{cls}"] == pytest.approx(prec[i])
    tier_mask = frame["tier"].notna().to_numpy()
    y_tier = (frame.loc[tier_mask, "tier"] == "frontier").astype(int)
    assert result["tier"]["auroc"] == pytest.approx(roc_auc_score(y_tier, probs["tier"][tier_mask, 1]))
    # gate head: "flagged at all" against 1 - P(none)
    s_mask = frame["sensitivity"].notna().to_numpy()
    y_flag = (frame.loc[s_mask, "sensitivity"] != "none").astype(int)
    assert result["sensitivity"]["auroc"] == pytest.approx(
        roc_auc_score(y_flag, 1 - probs["sensitivity"][s_mask, 0])
    )
    assert "auroc" not in result["task"]  # plain multi-class head


def test_hand_computed_case():
    frame = pd.DataFrame({"tier": ["cheap", "frontier", None, "frontier"]})
    probs = {"tier": np.array([[0.8, 0.2], [0.3, 0.7], [0.0, 1.0], [0.6, 0.4]])}
    m = evaluate_heads(SCHEMA, frame, probs)["tier"]
    # predictions on labelled rows: cheap, frontier, cheap -> 2 of 3 right
    assert m["n"] == 3
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["recall_frontier"] == pytest.approx(0.5)
    assert m["precision_cheap"] == pytest.approx(0.5)
    assert m["precision_frontier"] == pytest.approx(1.0)
    assert m["auroc"] == pytest.approx(1.0)  # scores 0.7, 0.4 both above 0.2
    assert set(evaluate_heads(SCHEMA, frame, probs)) == {"tier"}  # heads without probs skipped


def test_one_class_split_omits_undefined_metrics():
    frame = pd.DataFrame({"sensitivity": ["none"] * 5, "tier": [None] * 5})
    probs = {
        "sensitivity": np.tile([0.9, 0.05, 0.05], (5, 1)),
        "tier": np.tile([0.5, 0.5], (5, 1)),
    }
    result = evaluate_heads(SCHEMA, frame, probs)
    s = result["sensitivity"]
    assert s["accuracy"] == 1.0 and s["recall_none"] == 1.0
    assert "auroc" not in s and "recall_pii" not in s and "precision_pii" not in s
    assert result["tier"] == {"n": 0.0}


def test_unknown_label_and_bad_shape_are_clear_errors():
    frame = pd.DataFrame({"id": ["a", "b"], "tier": ["cheap", "expensive"]})
    with pytest.raises(SchemaError, match=r"expensive.*'b'"):
        evaluate_heads(SCHEMA, frame, {"tier": np.full((2, 2), 0.5)})
    frame = pd.DataFrame({"tier": ["cheap", "frontier"]})
    with pytest.raises(SchemaError, match=r"shape"):
        evaluate_heads(SCHEMA, frame, {"tier": np.full((2, 3), 0.3)})


def test_confusion_matches_sklearn():
    frame, probs = _random_case(seed=1)
    mats = confusion(SCHEMA, frame, probs)
    for head in SCHEMA.heads:
        mask = frame[head.column].notna().to_numpy()
        y = [head.classes.index(v) for v in frame.loc[mask, head.column]]
        expected = confusion_matrix(y, probs[head.name][mask].argmax(1), labels=range(head.num_classes))
        np.testing.assert_array_equal(mats[head.name], expected)
    empty = confusion(SCHEMA, pd.DataFrame({"tier": [None, None]}), {"tier": np.full((2, 2), 0.5)})
    assert empty["tier"].sum() == 0 and empty["tier"].shape == (2, 2)


def test_recall_at_precision_hand_case_and_brute_force():
    # sorted scores .9(+) .5(-) .4(+) .1(-): precision 1.0 only at the top -> recall 1/2
    assert recall_at_precision([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.5], 0.95) == (0.5, 0.9)
    assert recall_at_precision([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.5], 0.6)[0] == 1.0
    assert recall_at_precision([1, 0], [0.1, 0.9], 0.95) == (0.0, float("inf"))
    r, t = recall_at_precision([0, 0], [0.1, 0.9], 0.95)
    assert np.isnan(r) and np.isnan(t)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(y * 0.3 + rng.random(200), 2)  # with ties
    for floor in (0.6, 0.8, 0.9):
        best = 0.0
        for thr in np.unique(s):
            flagged = s >= thr
            if y[flagged].mean() >= floor:
                best = max(best, y[flagged].sum() / y.sum())
        recall, thr = recall_at_precision(y, s, floor)
        assert recall == pytest.approx(best)
        if recall > 0:
            assert y[s >= thr].mean() >= floor


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(50, 100, conf=0.99)[0] < wilson_interval(50, 100, conf=0.9)[0]
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bootstrap_ci_brackets_point_and_survives_one_class_resamples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    point, lo, hi = bootstrap_ci(np.mean, x, n_boot=300, seed=1)
    assert point == pytest.approx(x.mean()) and lo < point < hi
    assert (lo, hi) == bootstrap_ci(np.mean, x, n_boot=300, seed=1)[1:]
    # AUROC on 3 rows: many resamples hold one class only (sklearn raises ValueError)
    y, s = np.array([0, 1, 1]), np.array([0.2, 0.8, 0.6])
    point, lo, hi = bootstrap_ci(roc_auc_score, y, s, n_boot=100)
    assert point == 1.0 and lo == hi == 1.0


def test_flatten_metrics():
    assert flatten_metrics({"tier": {"accuracy": 0.5}}, prefix="test/") == {"test/tier/accuracy": 0.5}


def test_gate_heads_report_recall_at_precision_095_per_flagged_class():
    frame, probs = _random_case(n=400, seed=5)
    out = evaluate_heads(SCHEMA, frame, probs)
    sens = SCHEMA.head("sensitivity")
    mask = frame[sens.column].notna().to_numpy()
    y = frame.loc[mask, sens.column].map(sens.classes.index).to_numpy()
    for i, cls in enumerate(sens.classes):
        key = f"recall_at_p95_{cls}"
        if cls == sens.negative_class:
            assert key not in out["sensitivity"]
            continue
        expected = recall_at_precision(y == i, probs["sensitivity"][mask][:, i], 0.95)[0]
        assert out["sensitivity"][key] == pytest.approx(expected)
    # tier is not a gate head: no such keys
    assert not any(k.startswith("recall_at_p95") for k in out["tier"])
