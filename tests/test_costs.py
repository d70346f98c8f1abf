"""Prices, cost sweeps, reference routers, APGR / CPT and cost at quality on constructed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classifier.errors import ConfigError, DataError
from classifier.evaluation.costs import (
    RoutingOutcomes,
    apgr,
    apgr_defined,
    apply_threshold,
    cost_at_quality,
    cpt,
    frontier_quality_target,
    oracle_scores,
    quality_gap,
    random_router,
    reference_routers,
    route_metrics,
    summarize_router,
    threshold_sweep,
)
from classifier.evaluation.prices import DEFAULT_PRICES_PATH, Prices, row_costs

ROOT = Path(__file__).resolve().parents[1]


def _four() -> RoutingOutcomes:
    """Row 0 easy (both right), rows 1-2 need the frontier, row 3 unsolved (labelled frontier)."""
    return RoutingOutcomes(
        cheap_correct=np.array([1.0, 0.0, 0.0, 0.0]),
        frontier_correct=np.array([1.0, 1.0, 1.0, 0.0]),
        cost_cheap=np.full(4, 1.0),
        cost_frontier=np.full(4, 10.0),
        needs_frontier=np.array([False, True, True, True]),
    )


GOOD = np.array([0.1, 0.9, 0.8, 0.7])


def test_reference_routers_known_values():
    refs = reference_routers(_four())
    assert refs["all_cheap"]["quality"] == 0.25 and refs["all_cheap"]["cost"] == 4.0
    assert refs["all_cheap"]["misroute_rate"] == 0.75 and refs["all_cheap"]["conditional_misroute_rate"] == 1.0
    assert refs["all_frontier"]["quality"] == 0.75 and refs["all_frontier"]["cost"] == 40.0
    assert refs["all_frontier"]["misroute_rate"] == 0.0
    oracle = refs["oracle"]
    assert (oracle["quality"], oracle["cost"], oracle["cheap_share"]) == (0.75, 22.0, 0.5)
    # the unsolved row stays on cheap: a misroute by the label, no loss in quality
    assert oracle["misroute_rate"] == 0.25 and oracle["conditional_misroute_rate"] == pytest.approx(1 / 3)
    rnd = refs["random"]
    assert (rnd["quality"], rnd["cost"], rnd["misroute_rate"]) == (0.5, 22.0, 0.375)
    # random reaches 95% of 0.75 = 0.7125 with cheap share (0.75 - 0.7125) / 0.5 = 0.075
    assert rnd["cost_at_quality"]["cost"] == pytest.approx(0.075 * 4 + 0.925 * 40)
    assert rnd["cost_at_quality"]["saving"] == pytest.approx(1 - 37.3 / 40)
    assert oracle["cost_at_quality"]["saving"] == pytest.approx(1 - 22 / 40)
    assert refs["all_cheap"]["cost_at_quality"]["reachable"] is False
    assert refs["all_frontier"]["cost_at_quality"]["saving"] == 0.0


def test_sweep_known_values():
    sweep = threshold_sweep(_four(), GOOD)
    assert list(sweep["threshold"]) == [0.1, 0.7, 0.8, 0.9, np.inf]
    assert list(sweep["frontier_share"]) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert list(sweep["quality"]) == [0.75, 0.75, 0.75, 0.5, 0.25]
    assert list(sweep["cost"]) == [40.0, 31.0, 22.0, 13.0, 4.0]
    assert list(sweep["misroute_rate"]) == [0.0, 0.0, 0.25, 0.5, 0.75]
    assert list(sweep["pgr"]) == [1.0, 1.0, 1.0, 0.5, 0.0]
    at = apply_threshold(_four(), GOOD, 0.8)
    assert (at["quality"], at["cost"], at["relative_cost"]) == (0.75, 22.0, 0.55)


def test_apgr_cpt_and_cost_at_quality_known_values():
    o = _four()
    # PGR over frontier share 0, .25, .5, .75, 1 is 0, .5, 1, 1, 1 -> trapezoid 0.75
    assert apgr(o, GOOD) == pytest.approx(0.75)
    # oracle needs f* = 0.5 of frontier calls: APGR = 1 - f*/2 (it is the ceiling, not 1)
    assert apgr(o, oracle_scores(o)) == pytest.approx(0.75)
    assert apgr(o, np.zeros(4)) == pytest.approx(0.5)  # constant = random
    assert apgr(o, -GOOD) < 0.5  # an inverted router is worse than random
    points = cpt(o, GOOD)
    assert points["pgr_50"]["cheap_share"] == 0.75 and points["pgr_50"]["cost"] == 13.0
    assert points["pgr_80"]["cheap_share"] == 0.5 and points["pgr_80"]["threshold"] == 0.8
    assert points["pgr_95"]["cost"] == 22.0
    target = frontier_quality_target(o, 0.95)
    assert target == pytest.approx(0.7125)
    cq = cost_at_quality(o, GOOD, target)
    assert cq["reachable"] and cq["cost"] == 22.0 and cq["threshold"] == 0.8
    assert cq["saving"] == pytest.approx(0.45) and cq["saving_usd"] == pytest.approx(18.0)
    assert cost_at_quality(o, GOOD, 0.9) == {"target_quality": 0.9, "reachable": False}
    summary = summarize_router(o, GOOD)
    assert summary["apgr"] == pytest.approx(0.75) and summary["cost_at_quality"]["cost"] == 22.0


def _random_outcomes(n: int, seed: int) -> RoutingOutcomes:
    rng = np.random.default_rng(seed)
    qc = (rng.random(n) < 0.5).astype(float)
    qf = np.maximum(qc, (rng.random(n) < 0.8).astype(float))
    qf[rng.random(n) < 0.05] = 0.0  # the cheap tier sometimes wins
    return RoutingOutcomes(qc, qf, rng.uniform(0.1, 1, n), rng.uniform(2, 20, n), qc < 1)


def test_sweep_is_monotone_and_matches_brute_force():
    o = _random_outcomes(400, seed=0)
    rng = np.random.default_rng(1)
    scores = np.round(rng.random(400), 2)  # ties on purpose
    sweep = threshold_sweep(o, scores)
    assert (np.diff(sweep["cheap_share"]) >= 0).all()
    assert (np.diff(sweep["cost"]) <= 1e-9).all()  # frontier costs more on every row here
    assert (np.diff(sweep["misroute_rate"]) >= 0).all()
    assert sweep["frontier_share"].iloc[0] == 1.0 and sweep["cheap_share"].iloc[-1] == 1.0
    for _, row in sweep.sample(10, random_state=0).iterrows():
        expected = route_metrics(o, scores >= row["threshold"])
        for key in ("quality", "cost", "misroute_rate", "conditional_misroute_rate", "cheap_share"):
            assert row[key] == pytest.approx(expected[key])


def test_apgr_random_about_half_oracle_on_top():
    o = _random_outcomes(20_000, seed=2)
    rng = np.random.default_rng(3)
    assert apgr(o, rng.random(len(o))) == pytest.approx(0.5, abs=0.03)
    informative = (o.frontier_correct - o.cheap_correct) + rng.normal(0, 0.5, len(o))
    oracle = apgr(o, oracle_scores(o))
    assert 0.5 < apgr(o, informative) < oracle
    # the oracle recovers the whole gap, and more where the cheap tier wins
    assert oracle > 1 - np.mean(o.frontier_correct > o.cheap_correct) / 2 - 1e-9
    refs = reference_routers(o)
    assert refs["oracle"]["pgr"] > 1.0
    # the oracle's cost at 95% quality is a floor for real routers
    target = frontier_quality_target(o)
    floor = refs["oracle"]["cost_at_quality"]["cost"]
    assert floor <= cost_at_quality(o, informative, target)["cost"]
    assert floor <= cost_at_quality(o, oracle_scores(o), target)["cost"]
    assert refs["oracle"]["cost_at_quality"]["quality"] >= target


def test_random_router_is_linear():
    o = _four()
    assert random_router(o, 0.0)["quality"] == 0.75 and random_router(o, 1.0)["cost"] == 4.0
    with pytest.raises(ValueError):
        random_router(o, 1.5)


def test_outcomes_validation():
    with pytest.raises(DataError, match="cheap_correct"):
        RoutingOutcomes(np.array([1.5]), np.array([1.0]), np.array([1.0]), np.array([1.0]), np.array([True]))
    with pytest.raises(DataError, match="non-finite"):
        RoutingOutcomes(np.array([np.nan]), np.array([1.0]), np.array([1.0]), np.array([1.0]), np.array([True]))
    with pytest.raises(ValueError, match="scores"):
        threshold_sweep(_four(), np.zeros(3))


# -- prices ----------------------------------------------------------------------------------------
def test_shipped_prices_load():
    prices = Prices.from_yaml(DEFAULT_PRICES_PATH)
    gpt4 = prices.get("gpt-4-1106-preview")
    assert gpt4.tier == "frontier" and gpt4.cost(1_000_000, 0) == pytest.approx(gpt4.input_per_million)


PRICES = Prices.from_dict({"models": {
    "small": {"input_per_million": 1.0, "output_per_million": 2.0, "tier": "cheap"},
    "big": {"input_per_million": 10.0, "output_per_million": 30.0, "tier": "frontier"},
}}, source="prices-test.yaml")


def _priced_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": ["a", "b", "c"],
        "tier": ["cheap", "frontier", None],
        "cheap_model": ["small", "small", None],
        "frontier_model": ["big", "big", None],
        "input_tokens": [1000, 2000, 50],
        "output_tokens": [500, 0, None],
        "cheap_correct": [1.0, 0.0, None],
        "frontier_correct": [1.0, 1.0, None],
    })


def test_row_costs_and_outcomes_from_frame():
    cheap, frontier = row_costs(_priced_frame(), PRICES)
    assert cheap[:2] == pytest.approx([(1000 * 1 + 500 * 2) / 1e6, 2000 / 1e6])
    assert frontier[:2] == pytest.approx([(1000 * 10 + 500 * 30) / 1e6, 2000 * 10 / 1e6])
    assert np.isnan(cheap[2]) and np.isnan(frontier[2])
    o = RoutingOutcomes.from_frame(_priced_frame(), PRICES)
    assert len(o) == 2 and list(o.rows) == [0, 1] and list(o.needs_frontier) == [False, True]


def test_unknown_model_names_model_and_file():
    frame = _priced_frame()
    frame.loc[1, "frontier_model"] = "gpt-9"
    with pytest.raises(ConfigError, match=r"gpt-9.*prices-test\.yaml"):
        row_costs(frame, PRICES)


def test_negative_tokens_are_a_data_error():
    frame = _priced_frame()
    frame.loc[0, "input_tokens"] = -5
    with pytest.raises(DataError, match=r"input_tokens.*'a'"):
        row_costs(frame, PRICES)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input_per_million": -1, "output_per_million": 1, "tier": "cheap"}, "non-negative"),
        ({"input_per_million": 1, "output_per_million": 1, "tier": "medium"}, "tier must be"),
        ({"input_per_million": 1, "tier": "cheap"}, "missing"),
        ({"input_per_million": 1, "output_per_million": 1, "tier": "cheap", "pirce": 3}, "unknown keys"),
        ({"input_per_million": "ten", "output_per_million": 1, "tier": "cheap"}, "non-negative number"),
    ],
)
def test_price_validation_errors(entry, message, tmp_path):
    path = tmp_path / "p.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"models": {"m": entry}}))
    with pytest.raises(ConfigError, match=message) as info:
        Prices.from_yaml(path)
    assert str(path) in str(info.value)


def test_price_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Prices.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        Prices.from_yaml(bad)
    with pytest.raises(ConfigError, match="models is missing"):
        Prices.from_dict({"currency": "USD"})


def test_apgr_is_defined_only_when_the_tiers_differ_beyond_sampling_error():
    # a clear gap (frontier right on 70% more prompts): defined
    assert apgr_defined(_random_outcomes(400, seed=3))
    # 1,000 prompts, frontier and cheap differ on 20 each way: the gap is 0, APGR would be noise
    rng = np.random.default_rng(0)
    qc = (rng.random(1000) < 0.5).astype(float)
    qf = qc.copy()
    flip = rng.permutation(1000)[:40]
    qf[flip[:20]], qc[flip[:20]] = 1.0, 0.0
    qf[flip[20:]], qc[flip[20:]] = 0.0, 1.0
    o = RoutingOutcomes(qc, qf, np.ones(1000), np.full(1000, 5.0), qc < 1)
    gap, se = quality_gap(o)
    assert gap == pytest.approx(0.0) and se > 0
    assert not apgr_defined(o)
    # the same flips all one way: a 2-point gap on 1,000 prompts is 4.5 standard errors
    qf2 = np.maximum(qc, qf)
    assert apgr_defined(RoutingOutcomes(qc, qf2, np.ones(1000), np.full(1000, 5.0), qc < 1))
    assert quality_gap(RoutingOutcomes(qc[:1], qf[:1], np.ones(1), np.ones(1), qc[:1] < 1))[1] == np.inf
