"""Risk-controlled tier thresholds and recall-targeted gates hold their guarantees on synthetic data.

Synthetic model: scores ``s ~ Beta(2, 2)`` and ``P(needs frontier | s) = s`` (a calibrated
score). The true misroute risk of threshold ``t`` is then
``R(t) = P(y = 1, s < t) = int_0^t s * 6 s (1 - s) ds = 2 t^3 - 1.5 t^4``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from classifier.errors import ConfigError
from classifier.evaluation.thresholds import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    evaluate_recall_threshold,
    evaluate_tier_threshold,
    fit_recall_threshold,
    fit_tier_threshold,
    max_passing_count,
    threshold_for_cheap_share,
)


def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    s = rng.beta(2, 2, size=n)
    return s, rng.random(n) < s


def true_risk(t: float) -> float:
    return 2 * t**3 - 1.5 * t**4


def test_clopper_pearson_bounds():
    # zero events in n trials: the exact upper bound is 1 - (1 - conf)^(1/n)
    assert clopper_pearson_upper(0, 100, 0.9) == pytest.approx(1 - 0.1 ** (1 / 100))
    assert clopper_pearson_lower(100, 100, 0.9) == pytest.approx(0.1 ** (1 / 100))
    assert clopper_pearson_upper(5, 5, 0.9) == 1.0 and clopper_pearson_lower(0, 5, 0.9) == 0.0
    lo, hi = clopper_pearson_lower(30, 100, 0.95), clopper_pearson_upper(30, 100, 0.95)
    assert lo < 0.3 < hi
    # the upper bound is the rate at which seeing <= k events has probability 1 - conf
    assert binom.cdf(30, 100, hi) == pytest.approx(0.05, abs=1e-6)


@pytest.mark.parametrize(("n", "alpha", "delta"), [(1000, 0.05, 0.1), (300, 0.1, 0.05), (5000, 0.02, 0.1)])
def test_passing_count_is_the_clopper_pearson_boundary(n, alpha, delta):
    c = max_passing_count(n, alpha, delta)
    assert clopper_pearson_upper(c, n, 1 - delta) <= alpha + 1e-12
    assert clopper_pearson_upper(c + 1, n, 1 - delta) > alpha


@pytest.mark.slow  # Monte Carlo over hundreds of calibration splits
def test_ltt_threshold_controls_true_risk_over_repeated_splits():
    """P(misroute risk at the chosen threshold > alpha) <= delta, measured over 200 splits."""
    rng = np.random.default_rng(2024)
    alpha, delta, reps = 0.05, 0.1, 200
    over_true = over_measured = 0
    shares = []
    for _ in range(reps):
        cal_s, cal_y = sample(rng, 1000)
        fitted = fit_tier_threshold(cal_s, cal_y, alpha=alpha, delta=delta)
        test_s, test_y = sample(rng, 20000)
        measured = evaluate_tier_threshold(fitted.threshold, test_s, test_y)
        over_true += true_risk(fitted.threshold) > alpha
        over_measured += measured["misroute_rate"] > alpha
        shares.append(measured["cheap_share"])
    assert over_true / reps <= delta
    assert over_measured / reps <= delta
    # and it is not vacuous: it sends close to the share the oracle threshold t* (R(t*) = alpha)
    # would, 3 t*^2 - 2 t*^3 under Beta(2, 2)
    t_star = brentq(lambda t: true_risk(t) - alpha, 0.0, 1.0)
    assert np.mean(shares) > 0.8 * (3 * t_star**2 - 2 * t_star**3)


@pytest.mark.slow  # Monte Carlo over hundreds of calibration splits
def test_crc_threshold_controls_expected_risk():
    rng = np.random.default_rng(7)
    alpha = 0.05
    reps = 1000
    risks = np.array([true_risk(fit_tier_threshold(*sample(rng, 500), alpha=alpha, method="crc").threshold)
                      for _ in range(reps)])
    # E[R] <= alpha, and CRC is tight (E[R] >= alpha - 2/(n+1)): test the mean within its noise
    se = risks.std() / np.sqrt(reps)
    assert np.mean(risks) <= alpha + 3 * se
    assert np.mean(risks) >= alpha - 2 / 501 - 3 * se
    # CRC controls the mean only, so it is less conservative than the 1 - delta bound
    ltt = [true_risk(fit_tier_threshold(*sample(rng, 500), alpha=alpha, delta=0.1).threshold) for _ in range(100)]
    assert np.mean(risks) > np.mean(ltt)


def test_threshold_is_the_largest_passing_one_and_monotone_in_alpha():
    rng = np.random.default_rng(0)
    s, y = sample(rng, 2000)
    fits = [fit_tier_threshold(s, y, alpha=a, delta=0.1) for a in (0.02, 0.05, 0.10)]
    assert [f.threshold for f in fits] == sorted(f.threshold for f in fits)
    for f in fits:
        assert f.misroute_upper <= f.alpha
        # any larger threshold (the next frontier-needing score) would break the bound
        above = np.sort(s[y & (s > f.threshold)])
        if above.size:
            worse = evaluate_tier_threshold(np.nextafter(above[0], 2), s, y)
            assert worse["misroute_upper"] > f.alpha
        assert f.misroute_rate == pytest.approx(np.mean(y & (s < f.threshold)))
        assert f.misroute_rate_frontier == pytest.approx(np.sum(y & (s < f.threshold)) / y.sum())


def test_too_few_rows_route_everything_frontier():
    rng = np.random.default_rng(1)
    s, y = sample(rng, 30)  # 0.95^30 = 0.21 > delta: not even zero misroutes certify alpha
    fitted = fit_tier_threshold(s, y, alpha=0.05, delta=0.1)
    assert not fitted.feasible and fitted.threshold == 0.0 and fitted.cheap_share == 0.0
    assert "needs n >= 45" in fitted.notes[0]


def test_no_frontier_prompts_sends_everything_cheap():
    s = np.linspace(0, 0.99, 500)
    fitted = fit_tier_threshold(s, np.zeros(500, bool), alpha=0.05, delta=0.1)
    assert fitted.threshold == 1.0 and fitted.cheap_share == 1.0 and fitted.misroute_rate_frontier is None


def test_costs_and_saving():
    rng = np.random.default_rng(3)
    s, y = sample(rng, 1000)
    cheap_cost = np.full(1000, 0.001)
    frontier_cost = np.full(1000, 0.01)
    frontier_cost[0] = np.nan  # rows without a price are left out of the costs
    fitted = fit_tier_threshold(s, y, alpha=0.1, delta=0.1, cost_cheap=cheap_cost, cost_frontier=frontier_cost)
    ok = np.arange(1000) > 0
    cheap = (s < fitted.threshold)[ok]
    expected = np.where(cheap, 0.001, 0.01).mean()
    assert fitted.cost_per_prompt == pytest.approx(expected)
    assert fitted.all_frontier_cost_per_prompt == pytest.approx(0.01)
    assert fitted.saving == pytest.approx(1 - expected / 0.01)
    with pytest.raises(ConfigError, match="one entry per row"):
        fit_tier_threshold(s, y, cost_cheap=cheap_cost[:10], cost_frontier=frontier_cost)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_target_cheap_share_mode(target):
    rng = np.random.default_rng(4)
    s, y = sample(rng, 1000)
    fitted = threshold_for_cheap_share(s, y, target, delta=0.1)
    assert fitted.cheap_share == pytest.approx(target, abs=1e-3)
    assert fitted.alpha is None and fitted.method == "target_cheap_share"
    k = int(np.sum(y & (s < fitted.threshold)))
    assert fitted.misroutes == k and fitted.misroute_upper == pytest.approx(clopper_pearson_upper(k, 1000, 0.9))


@pytest.mark.parametrize("bad", [{"alpha": 0}, {"alpha": 1.5}, {"delta": 0}, {"method": "magic"}])
def test_invalid_settings_are_config_errors(bad):
    s, y = sample(np.random.default_rng(0), 100)
    with pytest.raises(ConfigError):
        fit_tier_threshold(s, y, **bad)
    with pytest.raises(ConfigError, match="same length"):
        fit_tier_threshold(s, y[:-1])


@pytest.mark.slow  # Monte Carlo over repeated splits
def test_recall_gate_reaches_its_target_over_repeated_splits():
    """Recall on fresh positives >= target in at least 1 - delta of 200 calibration draws."""
    rng = np.random.default_rng(11)
    target, delta, reps = 0.95, 0.1, 200
    misses = 0
    flag_rates = []

    def draw(n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
        pos = rng.beta(5, 2, size=n_pos)
        neg = rng.beta(2, 5, size=n_neg)
        return np.concatenate([pos, neg]), np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]

    for _ in range(reps):
        # the recall bound alone (the precision floor is a separate, calibration-split rule)
        fitted = fit_recall_threshold(*draw(300, 1000), target, delta=delta, cls="pii", min_precision=0.0)
        assert fitted.certified and fitted.recall_lower >= target
        measured = evaluate_recall_threshold(fitted.threshold, *draw(20000, 20000))
        misses += measured["recall"] < target
        flag_rates.append(measured["flag_rate_negative"])
    assert misses / reps <= delta
    assert np.mean(flag_rates) < 0.9  # a real gate, not "flag everything"


def test_recall_gate_with_too_few_positives_is_not_certified():
    rng = np.random.default_rng(5)
    s = np.r_[rng.beta(5, 2, size=40), rng.beta(2, 5, size=400)]
    y = np.r_[np.ones(40, bool), np.zeros(400, bool)]
    fitted = fit_recall_threshold(s, y, 0.99, delta=0.1, cls="credential", min_precision=0.0)
    assert not fitted.certified and fitted.recall == 1.0 and not fitted.recall_target_met
    assert fitted.threshold == pytest.approx(s[:40].min())
    needed = math.ceil(math.log(0.1) / math.log(0.99))
    assert f"needs >= {needed}" in fitted.notes[0]
    with pytest.raises(ConfigError, match="no calibration rows of class 'credential'"):
        fit_recall_threshold(s[40:], y[40:], 0.99, cls="credential")


# -- the precision floor of the sensitivity gates ------------------------------------------------
def gate_set(rng: np.random.Generator, n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
    """Positives ~ Beta(5, 2), negatives ~ Beta(2, 5): overlapping, so high recall costs precision."""
    s = np.r_[rng.beta(5, 2, size=n_pos), rng.beta(2, 5, size=n_neg)]
    return s, np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]


def precision_at(t: float, s: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    flagged = s >= t
    return int(np.sum(flagged & y)), int(flagged.sum())


def test_precision_floor_is_respected_and_minimal():
    rng = np.random.default_rng(21)
    s, y = gate_set(rng, 600, 4000)
    floor, delta = 0.9, 0.1
    fitted = fit_recall_threshold(s, y, 0.95, delta=delta, cls="pii", min_precision=floor)
    assert fitted.precision_bound == "point_estimate" and fitted.precision_floor_met
    tp, flagged = precision_at(fitted.threshold, s, y)
    assert tp / flagged >= floor
    assert fitted.precision == pytest.approx(tp / flagged) and fitted.precision >= floor
    # minimal: the next lower score as threshold (one more tie group flagged) fails the floor
    lower = s[s < fitted.threshold].max()
    tp2, flagged2 = precision_at(lower, s, y)
    assert tp2 / flagged2 < floor
    # the recall target alone would flag far more benign prompts: the floor wins and says so
    unfloored = fit_recall_threshold(s, y, 0.95, delta=delta, cls="pii", min_precision=0.0)
    assert unfloored.certified and unfloored.recall_target_met and unfloored.precision < floor
    assert unfloored.threshold == pytest.approx(fitted.recall_threshold)
    assert fitted.threshold > unfloored.threshold and fitted.threshold == fitted.precision_threshold
    assert fitted.flag_rate_negative < unfloored.flag_rate_negative


def test_conflict_between_recall_target_and_precision_floor_is_reported(caplog):
    # the credential situation: too few positives to certify 0.99, fallback "catch every positive"
    rng = np.random.default_rng(5)
    s, y = gate_set(rng, 200, 4000)
    with caplog.at_level("WARNING", logger="classifier.evaluation.thresholds"):
        fitted = fit_recall_threshold(s, y, 0.99, delta=0.1, cls="credential", min_precision=0.95)
    assert not fitted.certified and fitted.precision_floor_binding
    assert fitted.recall_target_met is False and fitted.to_dict()["recall_target_met"] is False
    assert fitted.recall_threshold == pytest.approx(s[y].min()) and fitted.threshold > fitted.recall_threshold
    assert fitted.recall == pytest.approx(np.mean(s[y] >= fitted.threshold)) and fitted.recall < 0.99
    assert fitted.recall == pytest.approx(fitted.recall_at_min_precision)
    assert fitted.precision >= 0.95
    assert any("precision floor 0.95 wins over recall target 0.99" in n for n in fitted.notes)
    assert "recall target NOT met" in caplog.text


def test_precision_floor_that_does_not_bind_changes_nothing():
    rng = np.random.default_rng(8)
    s = np.r_[rng.uniform(0.6, 1.0, 400), rng.uniform(0.0, 0.4, 4000)]  # separable
    y = np.r_[np.ones(400, bool), np.zeros(4000, bool)]
    fitted = fit_recall_threshold(s, y, 0.95, delta=0.1, min_precision=0.95)
    plain = fit_recall_threshold(s, y, 0.95, delta=0.1, min_precision=0.0)
    assert fitted.threshold == plain.threshold and fitted.recall_target_met and not fitted.precision_floor_binding
    assert fitted.precision_threshold <= fitted.threshold and fitted.recall_at_min_precision == 1.0


def test_precision_floor_falls_back_to_the_point_estimate_and_to_the_recall_threshold():
    # 5 positives on top: 5/5 has a CP lower bound of 0.1 ** (1/5) = 0.63 < 0.95 at confidence 0.9
    s = np.r_[np.linspace(0.91, 0.99, 5), np.linspace(0.0, 0.9, 200)]
    y = np.r_[np.ones(5, bool), np.zeros(200, bool)]
    fitted = fit_recall_threshold(s, y, 0.9, delta=0.1, min_precision=0.95)
    assert fitted.precision_bound == "point_estimate" and fitted.precision_threshold == pytest.approx(0.91)
    assert any("point estimate" in n for n in fitted.notes)
    # the highest scores are negatives and precision never reaches the floor: recall threshold kept
    s2 = np.r_[np.linspace(0.5, 0.6, 5), np.linspace(0.7, 0.9, 20), np.linspace(0.0, 0.4, 50)]
    y2 = np.r_[np.ones(5, bool), np.zeros(70, bool)]
    kept = fit_recall_threshold(s2, y2, 0.9, delta=0.1, min_precision=0.95)
    assert not kept.precision_floor_met and kept.precision_threshold is None
    assert kept.threshold == kept.recall_threshold == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="min_precision"):
        fit_recall_threshold(s, y, 0.9, min_precision=1.5)


def test_recall_at_precision_matches_a_brute_force_scan():
    rng = np.random.default_rng(3)
    s, y = gate_set(rng, 150, 900)
    s = np.round(s, 2)  # ties
    best = 0.0
    for t in np.unique(s):
        tp, flagged = precision_at(t, s, y)
        if tp / flagged >= 0.8:
            best = max(best, tp / y.sum())
    from classifier.evaluation.metrics import recall_at_precision

    got, _ = recall_at_precision(y, s, 0.8)
    assert got == pytest.approx(best) and best > 0
    measured = evaluate_recall_threshold(0.5, s, y, min_precision=0.8)
    assert measured["recall_at_min_precision"] == pytest.approx(best)
