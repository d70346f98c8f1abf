"""``tierwise calibrate`` end to end on the tiny bundle: temperatures and thresholds land in the
bundle (manifest still verifies), the report's test numbers match an independent recount."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier.cli import main as cli_main
from classifier.evaluation.thresholds import DEFAULT_MIN_PRECISION

TIERS = np.array(["cheap", "frontier"])
TASKS = np.array(["chat_writing", "code", "math_reasoning", "knowledge"])
SENS = np.array(["none", "pii", "credential"])
WORDS = ("write a python function to sort an array please explain the answer to this math question "
         "my email password is secret call john smith at london street api key token").split()


@pytest.fixture()
def bundle(request, tmp_path) -> Path:
    try:
        source = request.getfixturevalue("tiny_bundle")
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_bundle fixture (tests/conftest.py) is not available")
    dest = tmp_path / "bundle"
    shutil.copytree(source, dest)  # calibrate rewrites files in place: never touch the shared one
    return dest


def _sample(rng: np.random.Generator, logits: np.ndarray, sharpness: float) -> np.ndarray:
    """Labels drawn from a sharpened softmax of the model's own (centred) logits, so that the
    untrained model carries real signal about them."""
    z = sharpness * (logits - logits.mean(axis=0))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.minimum((rng.random(len(z))[:, None] > np.cumsum(p, axis=1)).sum(axis=1), z.shape[1] - 1)


@pytest.fixture()
def dataset(bundle, tmp_path) -> Path:
    import pandas as pd

    from classifier.serving.runtime import Router

    rng = np.random.default_rng(0)
    n = 1200
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 16)))) + f" {i}" for i in range(n)]
    with Router.load(bundle) as router:
        z = router.logits(texts)
    # sharpness scaled to the logit spread: an untrained encoder's logits barely vary
    frame = pd.DataFrame({
        "id": [f"{i:016x}" for i in range(n)], "text": texts, "source": "synthetic", "source_task": "synthetic",
        "split": np.where(np.arange(n) % 2 == 0, "calibration", "test"), "group": [str(i) for i in range(n)],
        "tier": TIERS[_sample(rng, z["tier"], 3 / z["tier"].std())],
        "task": TASKS[_sample(rng, z["task"], 3 / z["task"].std())],
        "sensitivity": SENS[_sample(rng, z["sensitivity"], 3 / z["sensitivity"].std())],
        "cheap_model": "mistralai/Mixtral-8x7B-Instruct-v0.1", "frontier_model": "gpt-4-1106-preview",
        "input_tokens": rng.integers(20, 400, n), "output_tokens": rng.integers(50, 600, n),
    })
    frame.loc[np.isin(frame.index % 20, [4, 7]), ["tier", "task"]] = None  # 60 sensitivity-only rows per split
    out = tmp_path / "data"
    out.mkdir()
    frame.to_parquet(out / "dataset.parquet")
    return out


@pytest.mark.slow
def test_calibrate_writes_bundle_and_reports(bundle, dataset, tmp_path, capsys):
    import pandas as pd

    from classifier.serving.bundle import verify_bundle
    from classifier.serving.runtime import Router

    out = tmp_path / "report"
    rc = cli_main(["calibrate", "--bundle", str(bundle), "--data", str(dataset), "--alpha", "0.05",
                   "--delta", "0.1", "--pii-recall", "0.9", "--credential-recall", "0.9", "--out", str(out),
                   "--threads", "1"])
    assert rc == 0
    stdout = capsys.readouterr().out
    for alpha in ("0.02", "0.05", "0.10"):
        assert f"\n  {alpha:>6}" in stdout
    assert "Sensitivity gates" in stdout and "saving" in stdout
    assert "test prec" in stdout and "test R@P" in stdout and "precision floor 0.8" in stdout

    verify_bundle(bundle)  # both rewritten files went through the manifest
    report = json.loads((out / "calibration_report.json").read_text())
    cal = json.loads((bundle / "calibration.json").read_text())
    assert set(cal["temperatures"]) == {"tier", "task", "sensitivity"}
    assert cal["temperatures"] == pytest.approx(report["temperatures"])
    for head in cal["temperatures"]:  # fitting can only lower the calibration-split NLL
        m = report["calibration"]["heads"][head]
        assert m["after"]["nll"] <= m["before"]["nll"] + 1e-9
    for name in ("reliability_tier.png", "reliability_task.png", "reliability_sensitivity.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    for c, gate in report["calibration"]["sensitivity"].items():  # the default floor was applied
        assert gate["min_precision"] == DEFAULT_MIN_PRECISION
        measured = report["test"]["sensitivity"][c]
        assert "precision" in measured and "recall_at_min_precision" in measured
        if gate["precision_floor_binding"]:
            assert gate["recall_target_met"] is False and f"WARNING: {c}: precision floor" in stdout

    fitted = report["calibration"]["tier_threshold"]
    assert fitted["misroute_upper"] <= 0.05 and fitted["n"] == 540  # 600 calibration rows, 60 of them without a tier

    with Router.load(bundle) as router:
        assert router.temperatures == pytest.approx(cal["temperatures"])
        policy = router.policy
        assert policy.tier_threshold == pytest.approx(fitted["threshold"])
        assert policy.threshold_provenance["tier"]["alpha"] == 0.05
        assert policy.threshold_provenance["tier"]["n"] == 540
        assert set(policy.sensitivity_thresholds) == {"pii", "credential"}
        assert "+cal." in policy.version
        # independent recount of the test-split misroute rate with the calibrated bundle
        frame = pd.read_parquet(dataset / "dataset.parquet")
        test = frame[(frame["split"] == "test") & frame["tier"].notna()]
        p_frontier = router.predict_proba(test["text"].tolist())["tier"][:, 1]
    need = (test["tier"] == "frontier").to_numpy()
    cheap = p_frontier < policy.tier_threshold
    measured = report["test"]["tier_threshold"]
    assert measured["n"] == len(test)
    assert measured["misroute_rate"] == pytest.approx(np.mean(cheap & need))
    assert measured["cheap_share"] == pytest.approx(np.mean(cheap))
    assert 0 < measured["saving"] < 1


@pytest.mark.slow
def test_target_cheap_share_mode(bundle, dataset, tmp_path, capsys):
    rc = cli_main(["calibrate", "--bundle", str(bundle), "--data", str(dataset), "--target-cheap-share", "0.4",
                   "--out", str(tmp_path / "r"), "--threads", "1"])
    assert rc == 0
    assert "target cheap share 0.4" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "calibration_report.json").read_text())
    assert report["calibration"]["tier_threshold"]["cheap_share"] == pytest.approx(0.4, abs=0.01)


def test_missing_calibration_split_is_a_clear_error(bundle, tmp_path, capsys):
    import pandas as pd

    data = tmp_path / "d"
    data.mkdir()
    pd.DataFrame({"text": ["a", "b"], "split": ["train", "test"]}).to_parquet(data / "dataset.parquet")
    rc = cli_main(["calibrate", "--bundle", str(bundle), "--data", str(data), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "no rows with split == 'calibration'" in capsys.readouterr().err


@pytest.mark.slow
def test_precision_floor_conflict_is_reported(bundle, dataset, tmp_path, capsys):
    """A near-useless (untrained) model cannot reach recall 0.99 at precision 0.5: the floor
    raises the gate threshold above the recall threshold and the output says the target is missed."""
    import pandas as pd

    from classifier.evaluation.thresholds import fit_recall_threshold
    from classifier.serving.runtime import Router

    args = ["calibrate", "--bundle", str(bundle), "--data", str(dataset), "--pii-recall", "0.99",
            "--credential-recall", "0.99", "--threads", "1"]
    assert cli_main(args + ["--min-precision", "0", "--out", str(tmp_path / "off")]) == 0
    off = json.loads((tmp_path / "off" / "calibration_report.json").read_text())["calibration"]["sensitivity"]
    capsys.readouterr()
    assert cli_main(args + ["--min-precision", "0.5", "--out", str(tmp_path / "on")]) == 0
    stdout = capsys.readouterr().out
    on = json.loads((tmp_path / "on" / "calibration_report.json").read_text())["calibration"]["sensitivity"]
    assert set(on) == set(off) == {"pii", "credential"}
    for c in on:
        assert off[c]["precision_threshold"] is None and not off[c]["precision_floor_binding"]
        # the floor never lowers a threshold; the recall threshold itself is unchanged by it
        assert on[c]["recall_threshold"] == pytest.approx(off[c]["threshold"])
        assert on[c]["threshold"] >= off[c]["threshold"]
    binding = [c for c in on if on[c]["precision_floor_binding"]]
    assert binding, "the synthetic labels should make recall 0.99 and precision 0.5 conflict"
    for c in binding:
        g = on[c]
        assert g["recall_target_met"] is False and g["recall"] < off[c]["recall"]
        assert g["threshold"] == pytest.approx(g["precision_threshold"]) and g["precision"] >= 0.5
        assert f"WARNING: {c}: precision floor 0.5 conflicts with recall target 0.99" in stdout
        assert "recall_target_met: false" in stdout
    # the policy carries the raised threshold; an independent refit on the calibration split agrees
    frame = pd.read_parquet(dataset / "dataset.parquet")
    cal = frame[(frame["split"] == "calibration") & frame["sensitivity"].notna()]
    with Router.load(bundle) as router:
        assert router.biases == {}
        assert router.policy.sensitivity_thresholds[binding[0]] == pytest.approx(on[binding[0]]["threshold"])
        assert router.policy.threshold_provenance["sensitivity"][binding[0]]["recall_target_met"] is False
        p = router.predict_proba(cal["text"].tolist())["sensitivity"]
    j = ["none", "pii", "credential"].index(binding[0])
    refit = fit_recall_threshold(p[:, j], (cal["sensitivity"] == binding[0]).to_numpy(), 0.99, delta=0.1,
                                 min_precision=0.5)
    assert refit.threshold == pytest.approx(on[binding[0]]["threshold"], rel=1e-5)
