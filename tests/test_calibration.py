"""Temperature scaling and calibration metrics on synthetic logits with a known calibration."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.data.schema import LabelSchema
from classifier.evaluation.calibration import (
    TemperatureScaler,
    VectorScaler,
    brier,
    calibrate_heads,
    ece,
    ece_positive,
    nll,
    plot_reliability,
    reliability_bins,
    softmax,
)


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
