"""``tierwise report``: files written, every headline number recomputed from the JSON, the release
gate, redaction, and logging to a real MLflow store. A tiny random bundle on a small synthetic data
set (design.md columns) in tmp; the policy threshold is set to the calibration split's median so
both tiers are used."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from classifier.cli import main as cli_main
from classifier.errors import ConfigError, DataError
from classifier.evaluation.report import (
    GATE_EXIT,
    ReportConfig,
    build_report,
    check_gate,
    diff_metrics,
    log_to_mlflow,
    metric_direction,
    redact,
)
from classifier.evaluation.report_render import SECTION_IDS

SECRETS = ("AKIAIOSFODNN7EXAMPLE", "sk_live_abcdefghijklmnop1234", "john.smith@example.com", "555 123 4567")
WORDS = {
    "code": "write python code function sort array api".split(),
    "math_reasoning": "solve math equation number sum answer".split(),
    "knowledge": "what is the explain why question".split(),
    "chat_writing": "write story poem essay email list".split(),
}


# -- fixtures shared with test_drift / test_report_browser ------------------------------------------
def make_dataset(sizes: dict[str, int] | None = None, seed: int = 0) -> pd.DataFrame:
    """Prompts with tier outcomes, models and token counts, plus pii / credential rows (null tier)."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 160, "validation": 40, "calibration": 160, "test": 220}
    rows = []
    for split, n in sizes.items():
        for i in range(n):
            if rng.random() < 0.12:
                sens = "pii" if rng.random() < 0.5 else "credential"
                secret = (f"my name is john smith call me at {SECRETS[3]} or {SECRETS[2]}" if sens == "pii"
                          else f"my aws key {SECRETS[0]} and token {SECRETS[1]}")
                src = "presidio" if sens == "pii" else "gitleaks"
                rows.append(dict(text=f"{secret} please help {split} {i}", source=src, source_task=f"{src}:t{i % 3}",
                                 split=split, tier=None, tier_outcome=None, task=None, sensitivity=sens,
                                 cheap_model=None, frontier_model=None, cheap_correct=np.nan, frontier_correct=np.nan,
                                 input_tokens=np.nan, output_tokens=np.nan))
                continue
            task = list(WORDS)[int(rng.integers(4))]
            hard = rng.random() < (0.6 if task in ("code", "math_reasoning") else 0.25)
            words = rng.choice(WORDS[task], size=int(rng.integers(4, 120 if hard else 15)))
            text = " ".join(words) + f" {split} {i}" + (" step by step" if hard else "")
            fc = float(rng.random() < 0.9)
            cc = float(rng.random() < (0.2 if hard else 0.85))
            tier = "frontier" if cc < 1 else "cheap"
            src = {"math_reasoning": "routellm_gsm8k", "code": "llmrouter"}.get(task, "routellm_mmlu")
            rows.append(dict(text=text, source=src, source_task=f"{src}:{task}", split=split, tier=tier,
                             tier_outcome=tier if fc or cc else "unsolved", task=task, sensitivity="none",
                             cheap_model="mistralai/Mixtral-8x7B-Instruct-v0.1", frontier_model="gpt-4-1106-preview",
                             cheap_correct=cc, frontier_correct=fc,
                             input_tokens=float(2 * len(text.split())), output_tokens=float(rng.integers(20, 400))))
    frame = pd.DataFrame(rows)
    frame["id"] = [hashlib.sha256(f"{k}|{t}".encode()).hexdigest()[:16] for k, t in enumerate(frame["text"])]
    frame["group"] = frame["id"]
    return frame


def prepare_bundle(tiny_bundle: Path, dest: Path, data: pd.DataFrame) -> Path:
    """A copy of the tiny bundle with temperatures and a tier threshold at the calibration median."""
    from classifier.serving import bundle as bundle_io
    from classifier.serving.runtime import Router

    shutil.copytree(tiny_bundle, dest)
    temps = {"tier": 0.5, "task": 2.0, "sensitivity": 1.0}
    bundle_io.update_bundle_file(dest, bundle_io.CALIBRATION_FILE, json.dumps(
        {"temperatures": temps, "fitted_on": "test fixture", "metrics": {}}))
    cal = data[(data["split"] == "calibration") & data["tier"].notna()]
    with Router.load(dest) as router:
        p = router.predict_proba(cal["text"].tolist())["tier"][:, 1]
        policy = router.policy.with_thresholds(tier=round(float(np.median(p)), 4),
                                               provenance={"tier": {"method": "ltt", "delta": 0.1, "alpha": 0.05}})
    bundle_io.update_bundle_file(dest, bundle_io.POLICY_FILE, policy.to_yaml())
    return dest


@pytest.fixture(scope="module")
def dataset() -> pd.DataFrame:
    return make_dataset()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, dataset) -> Path:
    out = tmp_path_factory.mktemp("data")
    dataset.to_parquet(out / "dataset.parquet")
    return out


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A real sqlite MLflow store with one finished run; returns (uri, run_id)."""
    from classifier import tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    with tracking.TrackedRun("report-test", "train", uri=uri) as run:
        run_id = run.run_id
    return uri, run_id


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory, dataset, mlflow_store) -> Path:
    from classifier.serving import bundle as bundle_io

    dest = prepare_bundle(tiny_bundle, tmp_path_factory.mktemp("b") / "bundle", dataset)
    bundle_io.update_manifest(dest, training_run_id=mlflow_store[1])
    return dest


@pytest.fixture(scope="module")
def report_run(bundle, data_dir, tmp_path_factory, mlflow_store):
    """One real ``tierwise report`` run; logs to the module's MLflow store."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_store[0])
        rc = cli_main(["report", "--bundle", str(bundle), "--data", str(data_dir), "--out", str(out),
                       "--threads", "1"])
    return rc, out


def _load(out: Path) -> dict:
    return json.loads(out.with_name("report.json").read_text(encoding="utf-8"))


# -- files -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_writes_html_markdown_and_json(report_run):
    rc, out = report_run
    assert rc == 0
    html = out.read_text(encoding="utf-8")
    md = out.with_name("report.md").read_text(encoding="utf-8")
    report = _load(out)
    assert report["format"] == "tierwise-report"
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html
    assert "<link" not in html and "<script" not in html and "http://" not in html and "https://" not in html
    imgs = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(imgs) == len(report["figures"]) >= 1 + 3 + 3  # cost curves, 3 confusion, 3 reliability
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in imgs)
    for sentence in report["headline"]["sentences"]:
        assert sentence in md
        assert sentence.replace("'", "&#39;") in html
    # same numbers in the Markdown tables as in the JSON
    assert f"| model | {report['routing']['routers']['model']['apgr']:.3f} |" in md
    for alpha_row in report["thresholds"]["rows"]:
        assert f"| {alpha_row['alpha']} | {alpha_row['threshold']:.4f}" in md


@pytest.mark.slow
def test_report_never_prints_the_secrets_it_was_given(report_run):
    _, out = report_run
    for path in (out, out.with_name("report.md"), out.with_name("report.json")):
        text = path.read_text(encoding="utf-8")
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {path.name}"
    examples = [x for e in _load(out)["sensitivity"].values() for x in e["worst_examples"]]
    for x in examples:
        assert not re.search(r"\d", x["text"])


# -- every headline number, recomputed ------------------------------------------------------------
def _wilson(k: int, n: int) -> tuple[float, float]:
    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def _apgr(score, cc, fc) -> float:
    """Area under PGR against frontier share, tied scores moving together (linear between)."""
    n = len(score)
    qc, qf = cc.mean(), fc.mean()
    xs, ys = [0.0], [0.0]
    gain = 0.0
    sent = 0
    for s in np.unique(score)[::-1]:
        group = score == s
        gain += float(np.sum(fc[group] - cc[group]))
        sent += int(group.sum())
        xs.append(sent / n)
        ys.append((qc + gain / n - qc) / (qf - qc))
    return float(np.trapezoid(ys, xs))


@pytest.mark.slow
def test_every_headline_number_is_recomputed_from_the_json_rows(report_run, bundle):
    from classifier.serving.policy import Policy

    _, out = report_run
    report = _load(out)
    h, rows = report["headline"], report["rows"]
    policy = Policy.from_yaml(bundle / "policy.yaml")
    t = policy.tier_threshold
    assert h["threshold"] == t  # the bundle policy's threshold, not one chosen here

    routed = np.array(rows["routed"])
    p = np.array(rows["p_frontier"], dtype=float)[routed]
    need = np.array(rows["needs_frontier"], dtype=bool)[routed]
    c_cheap = np.array(rows["cost_cheap"], dtype=float)[routed]
    c_front = np.array(rows["cost_frontier"], dtype=float)[routed]
    q_cheap = np.array(rows["cheap_correct"], dtype=float)[routed]
    q_front = np.array(rows["frontier_correct"], dtype=float)[routed]
    cheap = p < t
    assert 0 < cheap.mean() < 1, "the fixture threshold should split the prompts"
    cost = float(np.where(cheap, c_cheap, c_front).sum())
    ratio = c_front.sum() / cost
    k, n = int(np.sum(need & cheap)), int(need.sum())
    lo, hi = _wilson(k, n)
    quality = float(np.where(cheap, q_cheap, q_front).mean())

    s1, s2, s3, s4, *leak_sentences = h["sentences"]
    m = re.fullmatch(r"At threshold ([\d.]+), ([\d.]+)% of traffic stays on the cheap tier, cost is "
                     r"(?:([\d.]+)x lower than all-frontier|([\d.]+)% of all-frontier), and ([\d.]+)% "
                     r"\(95% CI ([\d.]+)-([\d.]+)%\) of prompts that needed the frontier tier were kept on the cheap one\.",
                     s1)
    assert m, s1
    assert m.group(1) == f"{t:.3f}"
    assert m.group(2) == f"{100 * cheap.mean():.1f}"
    if m.group(3) is not None:
        assert m.group(3) == f"{ratio:.1f}"
    else:
        assert m.group(4) == f"{100 * cost / c_front.sum():.0f}"
    assert m.group(5) == f"{100 * k / n:.1f}"
    assert (m.group(6), m.group(7)) == (f"{100 * lo:.1f}", f"{100 * hi:.1f}")
    assert h["cost"] == pytest.approx(cost) and h["cost_ratio"] == pytest.approx(ratio)
    assert (h["misroutes"], h["n_needs_frontier"]) == (k, n)

    m = re.fullmatch(r"Quality \(mean correctness of the tier each prompt is sent to\) is ([\d.]+), against "
                     r"([\d.]+) all-frontier and ([\d.]+) all-cheap \(([\d.]+) vs ([\d.]+) USD for (\d+) prompts\)\.", s2)
    assert m, s2
    assert m.groups() == (f"{quality:.3f}", f"{q_front.mean():.3f}", f"{q_cheap.mean():.3f}", f"{cost:.4f}",
                          f"{c_front.sum():.4f}", str(int(routed.sum())))

    base = np.array(rows["p_frontier_baseline"], dtype=float)[routed]
    m = re.fullmatch(r"Over all thresholds the router's APGR is ([\d.]+) \(random 0\.500, oracle ([\d.]+), "
                     r"TF-IDF baseline ([\d.]+)\)\.", s3)
    assert m, s3
    assert m.groups() == (f"{_apgr(p, q_cheap, q_front):.3f}", f"{_apgr(q_front - q_cheap, q_cheap, q_front):.3f}",
                          f"{_apgr(base, q_cheap, q_front):.3f}")

    tiers = np.array(rows["policy_tier"], dtype=object)
    expected = ", ".join(f"{name} {100 * np.mean(tiers == name):.1f}%" for name in [*policy.tier_names, "blocked"])
    assert s4 == (f"With the whole policy (task overrides, uncertainty band, sensitivity gates) on all "
                  f"{len(tiers)} prompts of the split: {expected}.")

    labels = np.array(rows["sensitivity_label"], dtype=object)
    allowed = {"pii": ["self_hosted"], "credential": []}  # serving/policy.example.yaml: restrict / block
    assert report["meta"]["sensitivity_allowed_tiers"] == allowed
    assert len(leak_sentences) == 2
    for sentence, cls_name in zip(leak_sentences, ("pii", "credential"), strict=True):
        mine = tiers[labels == cls_name]
        leaked = int(sum(1 for x in mine if x != "blocked" and x not in allowed[cls_name]))
        assert sentence == (f"{100 * leaked / len(mine):.1f}% of {cls_name} prompts ({leaked} of {len(mine)}) "
                            "would reach a tier their class may not reach.")


@pytest.mark.slow
def test_report_policy_routing_matches_the_served_router(report_run, bundle, dataset):
    from classifier.serving.runtime import Router

    _, out = report_run
    rows = _load(out)["rows"]
    by_id = dataset.set_index("id")
    texts = [by_id.loc[i, "text"] for i in rows["id"][:60]]
    with Router.load(bundle) as router:
        served = ["blocked" if d.blocked else d.tier for d in router.route(texts)]
    assert served == rows["policy_tier"][:60]


# -- baseline diff and release gate ----------------------------------------------------------------
def _baseline(out: Path, tmp_path: Path, **overrides: float) -> Path:
    old = _load(out)
    for key, value in overrides.items():
        old["metrics"][key] = value
    old["meta"]["bundle"] = "bundles/previous"
    path = tmp_path / "old_report.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    return path


@pytest.mark.slow
def test_release_gate_fails_with_exit_3_on_a_regression(report_run, bundle, data_dir, tmp_path, capsys):
    _, out = report_run
    auroc = _load(out)["metrics"]["tier_auroc"]
    old = _baseline(out, tmp_path, tier_auroc=auroc + 0.05)
    new_out = tmp_path / "new" / "report.html"
    rc = cli_main(["report", "--bundle", str(bundle), "--data", str(data_dir), "--out", str(new_out),
                   "--baseline", str(old), "--gate-metric", "tier_auroc", "--max-regression", "0.01",
                   "--no-mlflow", "--no-baseline-router"])
    assert rc == GATE_EXIT == 3
    err = capsys.readouterr().err
    assert "release gate FAILED" in err and "tier_auroc" in err and "0.01" in err
    report = _load(new_out)
    assert report["gate"]["passed"] is False
    row = next(r for r in report["diff"]["rows"] if r["metric"] == "tier_auroc")
    assert row["delta"] == pytest.approx(-0.05) and row["worse_by"] == pytest.approx(0.05)
    assert 'id="diff"' in new_out.read_text(encoding="utf-8")


@pytest.mark.slow
def test_release_gate_passes_with_exit_0_when_the_metric_holds(report_run, bundle, data_dir, tmp_path):
    _, out = report_run
    # lower-is-better metric: the old report had a higher misroute rate, so the new one improved
    rate = _load(out)["metrics"]["misroute_rate_frontier"]
    old = _baseline(out, tmp_path, misroute_rate_frontier=rate + 0.02)
    new_out = tmp_path / "new" / "report.html"
    rc = cli_main(["report", "--bundle", str(bundle), "--data", str(data_dir), "--out", str(new_out),
                   "--baseline", str(old), "--gate-metric", "misroute_rate_frontier", "--max-regression", "0",
                   "--no-mlflow", "--no-baseline-router"])
    assert rc == 0
    gate = _load(new_out)["gate"]
    assert gate["passed"] is True and gate["worse_by"] == pytest.approx(-0.02)


def test_gate_logic_is_direction_aware_and_names_unknown_metrics():
    assert metric_direction("tier_auroc") == 1 and metric_direction("apgr") == 1
    assert metric_direction("misroute_rate_frontier") == -1 and metric_direction("leak_rate_pii") == -1
    assert metric_direction("tier_ece_calibrated") == -1 and metric_direction("relative_cost") == -1
    rows = diff_metrics({"tier_auroc": 0.90, "leak_rate_pii": 0.01}, {"tier_auroc": 0.895, "leak_rate_pii": 0.03})
    assert check_gate(rows, "tier_auroc", 0.01)["passed"] is True
    assert check_gate(rows, "tier_auroc", 0.001)["passed"] is False
    leak = check_gate(rows, "leak_rate_pii", 0.01)
    assert leak["passed"] is False and leak["worse_by"] == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="nope"):
        check_gate(rows, "nope", 0.01)
    with pytest.raises(ConfigError, match="max-regression"):
        check_gate(rows, "tier_auroc", -1)


# -- MLflow ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_is_logged_to_the_bundles_mlflow_run(report_run, mlflow_store):
    from classifier import tracking

    uri, run_id = mlflow_store
    client = tracking.client(uri)
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "report")}
    assert {"report.html", "report.md", "report.json"} <= names
    run = client.get_run(run_id)
    assert run.data.metrics["report/tier_auroc"] == pytest.approx(_load(report_run[1])["metrics"]["tier_auroc"])


def test_unreachable_mlflow_store_warns_and_continues(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with caplog.at_level("WARNING"):
        assert log_to_mlflow("0123abcd", {"json": tmp_path / "r.json"}, {"x": 1.0}) is False
    assert "does not exist" in caplog.text
    assert not (tmp_path / "missing").exists()  # nothing created where no store was


# -- input errors and redaction ---------------------------------------------------------------------
@pytest.mark.slow
def test_bad_inputs_get_clear_errors(bundle, data_dir):
    with pytest.raises(ConfigError, match="limit"):
        ReportConfig(bundle=bundle, limit=0)
    with pytest.raises(DataError, match="no rows with split == 'nope'.*calibration"):
        build_report(ReportConfig(bundle=bundle, data=data_dir, split="nope"))
    with pytest.raises(DataError, match="does not exist"):
        build_report(ReportConfig(bundle=bundle, data=data_dir / "missing"))


def test_redact_removes_digits_emails_long_tokens_and_key_values():
    text = ("mail me at jane.doe@corp.example, card 4111 1111 1111 1111, password=hunter2 "
            "key ghp_1234567890abcdefghijklmnopqrstuvwxyz12 and https://x.io/?t=abc done")
    out = redact(text)
    for secret in ("jane.doe", "4111", "hunter2", "ghp_", "x.io"):
        assert secret not in out
    assert out.startswith("mail me at \u25a0") and out.endswith("done")
    assert len(redact("word " * 200, max_chars=50)) == 50
