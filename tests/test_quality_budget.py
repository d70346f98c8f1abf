"""The quality-loss budget: same Learn-then-Test guarantee as the misroute budget, more saving
when prompts neither tier solves are common, and ``tierwise calibrate --budget quality-loss``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier.errors import ConfigError, DataError
from classifier.evaluation import quality_budget as qb
from classifier.evaluation.thresholds import fit_tier_threshold


def _draw(rng: np.random.Generator, n: int, *, graded: bool = False):
    """Scores and outcomes: harder prompts (high score) fail on cheap more often; 30% unsolved."""
    s = rng.random(n)
    unsolved = rng.random(n) < 0.3
    frontier = np.where(unsolved, 0.0, 1.0)
    cheap = np.where(unsolved, 0.0, (rng.random(n) > s).astype(float))
    if graded:
        frontier = np.clip(frontier * rng.uniform(0.6, 1.0, n), 0, 1)
        cheap = np.clip(cheap * rng.uniform(0.3, 1.0, n), 0, 1)
    need = ~(cheap >= 0.5)  # labelled frontier unless cheap succeeded (unsolved -> frontier)
    return s, cheap, frontier, need


def test_binary_losses_match_the_misroute_threshold_on_the_same_labels():
    rng = np.random.default_rng(0)
    s, cheap, frontier, _ = _draw(rng, 2000)
    loss = qb.quality_loss(cheap, frontier)
    assert set(np.unique(loss)) <= {0.0, 1.0}
    ql = qb.fit_loss_threshold(s, loss, alpha=0.05, delta=0.05)
    mis = fit_tier_threshold(s, loss.astype(bool), alpha=0.05, delta=0.05)
    assert ql.test == "binomial_exact" and not ql.graded
    assert ql.threshold == pytest.approx(mis.threshold)
    assert ql.loss_rate <= 0.05


@pytest.mark.parametrize("graded", [False, True])
def test_guarantee_holds_over_many_calibration_draws(graded):
    """P(true risk > alpha) <= delta: the true risk is measured on a large fresh sample."""
    rng = np.random.default_rng(1)
    s_pop, c_pop, f_pop, _ = _draw(rng, 50_000, graded=graded)
    order = np.argsort(s_pop)
    cum = np.concatenate([[0.0], np.cumsum(qb.quality_loss(c_pop, f_pop)[order])]) / len(s_pop)
    sorted_s = s_pop[order]
    alpha, delta, violations, reps = 0.05, 0.1, 0, 100
    for _ in range(reps):
        s, c, f, _ = _draw(rng, 400, graded=graded)
        t = qb.fit_loss_threshold(s, qb.quality_loss(c, f), alpha=alpha, delta=delta).threshold
        violations += cum[np.searchsorted(sorted_s, t, side="left")] > alpha
    assert violations / reps <= delta + 0.05


def test_quality_loss_budget_buys_more_saving_than_misroute_when_many_prompts_are_unsolved():
    rng = np.random.default_rng(2)
    parts = {}
    for name in ("cal", "test"):
        s, c, f, need = _draw(rng, 3000)
        parts[name] = {"scores": s, "needs_frontier": need, "cheap_correct": c, "frontier_correct": f,
                       "cost_cheap": np.full(len(s), 1.0), "cost_frontier": np.full(len(s), 10.0)}
    out = qb.compare_budgets(parts["cal"], parts["test"], alpha=0.05)
    mis, ql = out["misroute"]["test"], out["quality-loss"]["test"]
    assert ql["cheap_share"] > mis["cheap_share"] and ql["saving"] > mis["saving"]
    assert ql["quality_loss"] <= 0.05 + 0.02  # measured on fresh rows: within alpha up to noise
    table = qb.budget_table(out)
    assert "| misroute |" in table and "| quality-loss |" in table


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="losses must lie in"):
        qb.fit_loss_threshold([0.1, 0.2], [0.5, 1.5])
    with pytest.raises(ConfigError, match="same length"):
        qb.fit_loss_threshold([0.1, 0.2], [0.5])
    with pytest.raises(DataError, match="missing values"):
        qb.quality_loss([0.1, np.nan], [1.0, 1.0])
    with pytest.raises(ConfigError, match="alpha"):
        qb.fit_loss_threshold([0.1], [0.0], alpha=1.5)


def test_too_few_rows_send_everything_frontier():
    r = qb.fit_loss_threshold([0.1, 0.2, 0.3], [1.0, 0.0, 1.0], alpha=0.05, delta=0.05)
    assert r.threshold == 0.0 and not r.feasible and r.cheap_share == 0.0


# -- the CLI ------------------------------------------------------------------------------------
@pytest.fixture()
def bundle(request, tmp_path) -> Path:
    source = request.getfixturevalue("tiny_bundle")
    dest = tmp_path / "bundle"
    shutil.copytree(source, dest)
    return dest


@pytest.fixture()
def dataset(bundle, tmp_path) -> Path:
    import pandas as pd

    from classifier.serving.runtime import Router

    rng = np.random.default_rng(0)
    n = 1600
    words = "write sort array explain math question email story code list proof".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) + f" {i}" for i in range(n)]
    with Router.load(bundle) as router:
        z = router.logits(texts)["tier"]
    d = (z[:, 1] - z[:, 0]) / (z[:, 1] - z[:, 0]).std()
    unsolved = rng.random(n) < 0.3
    cheap = np.where(unsolved, 0.0, (rng.random(n) > 1 / (1 + np.exp(-2 * d))).astype(float))
    frame = pd.DataFrame({
        "id": [f"{i:016x}" for i in range(n)], "text": texts, "source": "synthetic", "source_task": "synthetic",
        "split": np.where(np.arange(n) % 2 == 0, "calibration", "test"), "group": [str(i) for i in range(n)],
        "tier": np.where(cheap > 0, "cheap", "frontier"), "task": "knowledge", "sensitivity": "none",
        "cheap_correct": cheap, "frontier_correct": np.where(unsolved, 0.0, 1.0),
        "cheap_model": "mistralai/Mixtral-8x7B-Instruct-v0.1", "frontier_model": "gpt-4-1106-preview",
        "input_tokens": rng.integers(20, 400, n), "output_tokens": rng.integers(50, 600, n),
    })
    out = tmp_path / "data"
    out.mkdir()
    frame.to_parquet(out / "dataset.parquet")
    return out


@pytest.mark.slow  # the calibrate command end to end (~3.5 s)
def test_calibrate_budget_quality_loss_writes_its_threshold(bundle, dataset, tmp_path, capsys):
    from classifier.cli import main as cli_main
    from classifier.serving.runtime import Router

    out = tmp_path / "report"
    rc = cli_main(["calibrate", "--bundle", str(bundle), "--data", str(dataset), "--alpha", "0.05",
                   "--budget", "quality-loss", "--out", str(out), "--threads", "1"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "Both budgets" in stdout and "| quality-loss |" in stdout
    report = json.loads((out / "calibration_report.json").read_text())
    budgets = report["budgets"]
    ql, mis = budgets["quality-loss"], budgets["misroute"]
    assert ql["calibration"]["loss_rate"] <= 0.05
    assert ql["test"]["cheap_share"] >= mis["test"]["cheap_share"]  # unsolved prompts may go cheap
    with Router.load(bundle) as router:
        assert router.policy.tier_threshold == pytest.approx(ql["threshold"])
        assert router.policy.threshold_provenance["tier"]["budget"] == "quality-loss"
