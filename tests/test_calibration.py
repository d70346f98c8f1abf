"""Temperature scaling and calibration metrics on synthetic logits with a known calibration."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.data.schema import LabelSchema
from classifier.evaluation.calibration import (
    BiasedTemperatureScaler,
    TemperatureScaler,
    VectorScaler,
    brier,
    calibrate_heads,
    ece,
    ece_positive,
    nll,
    plot_reliability,
    reliability_bins,
)
from classifier.numeric import softmax


def calibrated_set(n: int, c: int, seed: int, scale: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution (perfectly calibrated by design)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * scale
    p = softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(y, c - 1)


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_temperature_scaling_undoes_overconfidence(classes):
    z, y = calibrated_set(6000, classes, seed=classes)
    over = z * 3.0  # a model three times too confident
    fit_z, fit_y, test_z, test_y = over[:3000], y[:3000], over[3000:], y[3000:]
    scaler = TemperatureScaler().fit(fit_z, fit_y)
    assert scaler.temperature_ == pytest.approx(3.0, rel=0.15)
    before = ece(softmax(test_z), test_y)
    after = ece(scaler.predict_proba(test_z), test_y)
    assert after < before / 3, (before, after)
    assert nll(scaler.predict_proba(test_z), test_y) < nll(softmax(test_z), test_y)
    # argmax predictions never change under a temperature
    assert (scaler.predict_proba(test_z).argmax(1) == test_z.argmax(1)).all()


def test_temperature_of_an_underconfident_model_is_below_one():
    z, y = calibrated_set(4000, 3, seed=7)
    scaler = TemperatureScaler().fit(z / 2.0, y)
    assert scaler.temperature_ == pytest.approx(0.5, rel=0.15)


def test_scaler_is_sklearn_shaped_and_checks_input():
    z, y = calibrated_set(100, 2, seed=1)
    scaler = TemperatureScaler()
    with pytest.raises(RuntimeError, match="not fitted"):
        scaler.predict_proba(z)
    assert scaler.fit(z, y) is scaler
    with pytest.raises(ValueError, match="labels must be"):
        TemperatureScaler().fit(z, y[:-1])
    with pytest.raises(ValueError, match="class indices"):
        TemperatureScaler().fit(z, y + 5)
    bad = z.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TemperatureScaler().fit(bad, y)


def test_vector_scaler_fixes_a_per_class_distortion():
    z, y = calibrated_set(6000, 3, seed=3)
    distorted = z * np.array([3.0, 1.0, 0.5]) + np.array([1.0, 0.0, -1.0])
    vs = VectorScaler().fit(distorted[:3000], y[:3000])
    ts = TemperatureScaler().fit(distorted[:3000], y[:3000])
    test_z, test_y = distorted[3000:], y[3000:]
    assert nll(vs.predict_proba(test_z), test_y) < nll(ts.predict_proba(test_z), test_y)
    assert vs.scale_ == pytest.approx([1 / 3, 1.0, 2.0], rel=0.25)


def test_ece_brier_nll_on_known_values():
    # always 90% confident, right half the time: ECE = |0.9 - 0.5| = 0.4
    probs = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0, 1] * 5)
    assert ece(probs, y) == pytest.approx(0.4)
    assert brier(probs, y) == pytest.approx(0.5 * (0.01 + 0.01) + 0.5 * (0.81 + 0.81))
    assert nll(probs, y) == pytest.approx(-(np.log(0.9) + np.log(0.1)) / 2)
    # confident and right: zero
    assert ece(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) == pytest.approx(0.0)
    # positive-class ECE sees miscalibration of p(class 1) that the top-class view folds together
    p_pos = np.array([0.2] * 10)
    assert ece_positive(p_pos, np.array([1] * 5 + [0] * 5)) == pytest.approx(0.3)


def test_bins_are_fifteen_equal_width_with_right_closed_edges():
    conf = np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 0.5, 1.0])
    b = reliability_bins(conf, np.ones(5))
    assert b["edges"].shape == (16,) and b["count"].sum() == 5
    assert b["count"][0] == 2 and b["count"][1] == 1 and b["count"][7] == 1 and b["count"][14] == 1


@pytest.mark.slow
def test_calibrate_heads_report_and_plots(tmp_path):
    schema = LabelSchema.default()
    zt, yt = calibrated_set(2000, 2, seed=11)
    zs, ys = calibrated_set(2000, 3, seed=12)
    ys = ys.copy()
    ys[:500] = -1  # unlabelled rows are ignored
    logits = {"tier": zt * 3, "sensitivity": zs * 0.5, "task": np.zeros((2000, 4))}
    labels = {"tier": yt, "sensitivity": ys, "task": np.full(2000, -1)}
    labels["task"][:5] = 1  # too few rows to fit
    report = calibrate_heads(schema, logits, labels)
    assert list(report.heads) == ["tier", "task", "sensitivity"]
    tier, task, sens = report.heads["tier"], report.heads["task"], report.heads["sensitivity"]
    assert tier.temperature > 2 and sens.temperature < 0.7
    assert tier.after["ece"] < tier.before["ece"] and "ece_positive" in tier.after
    assert "ece_positive" not in sens.after and sens.n == 1500
    assert task.temperature == 1.0 and "only 5 labelled rows" in task.note
    payload = report.calibration_json("unit test")
    assert payload["temperatures"] == report.temperatures and payload["fitted_on"] == "unit test"
    held_out = report.evaluate({"tier": calibrated_set(2000, 2, seed=13)[0] * 3},
                               {"tier": calibrated_set(2000, 2, seed=13)[1]})
    assert held_out["tier"]["after"]["ece"] < held_out["tier"]["before"]["ece"]
    paths = plot_reliability(report, logits, labels, tmp_path / "plots", split="calibration")
    assert [p.name for p in paths] == ["reliability_tier.png", "reliability_task.png", "reliability_sensitivity.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_bias_fixes_a_shifted_positive_class_where_temperature_cannot():
    """Binary head over-confident (x2) AND shifted towards the positive class (+0.8 logit):
    temperature alone cannot undo the shift; T + b (Platt) can, on held-out rows too."""
    z, y = calibrated_set(8000, 2, seed=21)
    shifted = 2.0 * z + np.array([0.0, 0.8])
    fit_z, fit_y, test_z, test_y = shifted[:4000], y[:4000], shifted[4000:], y[4000:]
    ts = TemperatureScaler().fit(fit_z, fit_y)
    bs = BiasedTemperatureScaler().fit(fit_z, fit_y)
    assert bs.nll_after_ < ts.nll_after_ and bs.nll_temperature_ == pytest.approx(ts.nll_after_)
    assert bs.temperature_ == pytest.approx(2.0, rel=0.1)
    assert bs.bias_.sum() == pytest.approx(0.0, abs=1e-9)
    # the positive-minus-negative bias undoes the +0.8 shift (divided by T)
    assert bs.bias_[1] - bs.bias_[0] == pytest.approx(-0.8 / 2.0, abs=0.1)
    p_t, p_b = ts.predict_proba(test_z), bs.predict_proba(test_z)
    assert nll(p_b, test_y) < nll(p_t, test_y)
    assert ece_positive(p_b[:, 1], test_y == 1) < ece_positive(p_t[:, 1], test_y == 1)
    with pytest.raises(RuntimeError, match="not fitted"):
        BiasedTemperatureScaler().predict_proba(test_z)


def test_calibrate_heads_adopts_a_bias_only_where_it_pays():
    schema = LabelSchema.default()
    zt, yt = calibrated_set(4000, 2, seed=31)
    zs, ys = calibrated_set(4000, 3, seed=32)
    # tier: shifted towards frontier; sensitivity: only over-confident (temperature is enough)
    logits = {"tier": 1.5 * zt + np.array([0.0, 1.0]), "sensitivity": 2.0 * zs}
    labels = {"tier": yt, "sensitivity": ys}
    report = calibrate_heads(schema, logits, labels)
    tier, sens = report.heads["tier"], report.heads["sensitivity"]
    assert tier.bias is not None and tier.bias_test["lr_statistic"] > tier.bias_test["critical_value"]
    assert sens.bias is None and sens.bias_test["lr_statistic"] <= sens.bias_test["critical_value"]
    only_t = calibrate_heads(schema, logits, labels, biases=False)
    assert only_t.heads["tier"].bias is None and only_t.heads["tier"].bias_test is None
    assert tier.after["nll"] < only_t.heads["tier"].after["nll"]
    assert tier.after["ece_positive"] < only_t.heads["tier"].after["ece_positive"]
    assert sens.temperature == pytest.approx(only_t.heads["sensitivity"].temperature)
    payload = report.calibration_json("unit test")
    assert payload["biases"] == {"tier": list(tier.bias)} and payload["method"] == "temperature_scaling+bias"
    assert "biases" not in only_t.calibration_json("unit test")
    # held-out rows from the same shifted model: the bias keeps paying
    zh, yh = calibrated_set(4000, 2, seed=33)
    held = {"tier": 1.5 * zh + np.array([0.0, 1.0])}
    with_b = report.evaluate(held, {"tier": yh})["tier"]["after"]
    without_b = only_t.evaluate(held, {"tier": yh})["tier"]["after"]
    assert with_b["nll"] < without_b["nll"] and with_b["ece_positive"] < without_b["ece_positive"]
    probs = report.predict_proba(held)["tier"]
    z = held["tier"] / tier.temperature + np.asarray(tier.bias)
    np.testing.assert_allclose(probs, softmax(z))
