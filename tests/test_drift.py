"""``tierwise drift``: flags a shifted tier mix and a PSI above threshold, stays quiet on identical
logs, and proposes thresholds as a well-formed, reviewable YAML diff. Decision logs are built from
the real policy engine on seeded probabilities; prompt logs are routed by the tiny bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from classifier.cli import main as cli_main
from classifier.data.schema import LabelSchema
from classifier.errors import DataError
from classifier.evaluation.drift import (
    DriftConfig,
    compare,
    load_decisions,
    propose_thresholds,
    psi,
    two_proportion_p,
)
from classifier.serving.audit import AuditLog
from classifier.serving.policy import Policy, PolicyEngine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = ROOT / "serving" / "policy.example.yaml"
TASKS = ["chat_writing", "code", "math_reasoning", "knowledge"]


def _policy() -> Policy:
    # no uncertainty band and confident gates: the tier threshold alone decides cheap vs frontier
    raw = yaml.safe_load(EXAMPLE_POLICY.read_text(encoding="utf-8"))
    raw["uncertainty"] = {"tier_band": 0.0, "min_confidence": {}, "action": "escalate"}
    raw["task_overrides"] = {}
    return Policy.from_dict(raw)


def _decisions(n: int, *, frontier_mean: float, code_share: float, seed: int, uncertain_share: float = 0.0) -> list[dict]:
    """Decisions from the real policy engine on seeded probabilities (route --output format)."""
    rng = np.random.default_rng(seed)
    p = np.clip(rng.beta(8 * frontier_mean, 8 * (1 - frontier_mean), size=n), 1e-3, 1 - 1e-3)
    task = np.full((n, 4), 0.05)
    which = np.where(rng.random(n) < code_share, 1, rng.choice([0, 2, 3], size=n))
    task[np.arange(n), which] = 0.85
    sens = np.tile([0.96, 0.02, 0.02], (n, 1))
    probs = {"tier": np.column_stack([1 - p, p]), "task": task, "sensitivity": sens}
    flags = [["uncertain"] if rng.random() < uncertain_share else [] for _ in range(n)]
    engine = PolicyEngine(_policy(), LabelSchema.default())
    out = []
    for i, d in enumerate(engine.decide_batch(probs, flags=flags)):
        rec = d.to_dict()
        rec["text"] = "word " * int(rng.integers(5, 400))
        rec["id"] = f"r{seed}-{i}"
        out.append(rec)
    return out


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def logs(tmp_path):
    ref = _write_jsonl(tmp_path / "reference.jsonl", _decisions(400, frontier_mean=0.3, code_share=0.1, seed=1))
    same = _write_jsonl(tmp_path / "same.jsonl", _decisions(400, frontier_mean=0.3, code_share=0.1, seed=1))
    shifted = _write_jsonl(tmp_path / "shifted.jsonl", _decisions(400, frontier_mean=0.55, code_share=0.45, seed=2,
                                                                  uncertain_share=0.15))
    return ref, same, shifted


def test_statistics():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    # hand-computed: (0.8-0.5) ln(0.8/0.5) + (0.2-0.5) ln(0.2/0.5)
    assert psi([0.5, 0.5], [0.8, 0.2]) == pytest.approx(0.3 * np.log(1.6) - 0.3 * np.log(0.4))
    assert two_proportion_p(50, 100, 50, 100) == pytest.approx(1.0)
    assert two_proportion_p(10, 100, 40, 100) < 1e-5
    assert two_proportion_p(0, 0, 1, 10) == 1.0


@pytest.mark.slow
def test_identical_logs_stay_quiet(logs):
    ref, same, _ = logs
    r, c = load_decisions(ref), load_decisions(same)
    out = compare(r, c, policy=_policy(), tier_order=_policy().tier_names).result
    assert out["drift"] is False and out["findings"] == []
    assert all(v["psi"] == pytest.approx(0.0) for v in out["psi"].values())
    proposal, note = propose_thresholds(r, c, out["tier_rule"], _policy().to_dict()["thresholds"], policy=_policy())
    assert proposal is None and "nothing to propose" in note


@pytest.mark.slow
def test_shifted_logs_flag_tier_mix_psi_flags_and_slices_in_words(logs):
    ref, _, shifted = logs
    r, c = load_decisions(ref), load_decisions(shifted)
    cfg = DriftConfig(psi_threshold=0.2)
    out = compare(r, c, config=cfg, policy=_policy(), tier_order=_policy().tier_names).result
    assert out["drift"] is True
    # recompute the tier mix from the logs themselves
    ref_front = np.mean([d["tier"] == "frontier" for d in map(json.loads, ref.read_text().splitlines())])
    cur_front = np.mean([d["tier"] == "frontier" for d in map(json.loads, shifted.read_text().splitlines())])
    mix = {m["tier"]: m for m in out["tier_mix"]}
    assert mix["frontier"]["reference"] == pytest.approx(ref_front) and mix["frontier"]["current"] == pytest.approx(cur_front)
    messages = [f["message"] for f in out["findings"]]
    assert f"prompts routed to the frontier tier rose from {100 * ref_front:.1f}% to {100 * cur_front:.1f}% of all prompts" in messages
    assert out["psi"]["tier"]["psi"] > 0.2 and out["psi"]["tier"]["drift"] is True
    assert any(m.startswith("the tier head's p(frontier) distribution shifted (PSI") for m in messages)
    assert out["psi"]["task:predicted"]["drift"] is True
    assert any(m.startswith("decisions flagged uncertain rose from 0.0% to") for m in messages)
    assert any(re.match(r"\w+ prompts \(by predicted task\) reaching the frontier tier rose from", m) for m in messages)
    # a looser PSI threshold than the observed PSI silences the PSI finding, not the others
    loose = compare(r, c, config=DriftConfig(psi_threshold=50.0), policy=_policy()).result
    assert not any(f["kind"] == "psi" for f in loose["findings"]) and loose["drift"] is True


def _apply_unified_diff(old: str, diff: str) -> str:
    """A minimal unified-diff applier: checks every context and removed line against ``old``."""
    old_lines = old.splitlines(keepends=True)
    out: list[str] = []
    pos = 0
    lines = diff.splitlines(keepends=True)
    assert lines[0].startswith("--- ") and lines[1].startswith("+++ ")
    i = 2
    while i < len(lines):
        m = re.match(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", lines[i])
        assert m, f"not a hunk header: {lines[i]!r}"
        start = int(m.group(1)) - 1
        out.extend(old_lines[pos:start])
        pos = start
        i += 1
        while i < len(lines) and not lines[i].startswith("@@"):
            tag, body = lines[i][0], lines[i][1:]
            if tag in " -":
                assert old_lines[pos] == body, f"diff does not match the old text at line {pos + 1}"
                pos += 1
            if tag in " +":
                out.append(body)
            i += 1
    out.extend(old_lines[pos:])
    return "".join(out)


@pytest.mark.slow
def test_proposal_is_a_well_formed_yaml_diff_that_keeps_the_reference_cheap_share(logs):
    ref, _, shifted = logs
    policy = _policy()
    r, c = load_decisions(ref), load_decisions(shifted)
    out = compare(r, c, policy=policy).result
    proposal, _ = propose_thresholds(r, c, out["tier_rule"], policy.to_dict()["thresholds"], policy=policy)
    assert proposal is not None
    new_text = _apply_unified_diff(proposal["old_yaml"], proposal["diff"])
    assert new_text == proposal["new_yaml"]
    assert yaml.safe_load(proposal["old_yaml"])["thresholds"] == policy.to_dict()["thresholds"]
    section = yaml.safe_load(new_text)["thresholds"]
    assert section["tier"] == proposal["proposed_threshold"] != policy.tier_threshold
    assert section["provenance"]["drift_proposal"]["method"] == "keep_reference_cheap_share"
    raw = policy.to_dict()
    raw["thresholds"] = section
    Policy.from_dict(raw)  # the proposed section is a valid policy
    # recomputed from the logs: the proposed threshold restores the reference cheap share
    p_ref = np.array([d["probabilities"]["tier"]["frontier"] for d in map(json.loads, ref.read_text().splitlines())])
    p_cur = np.array([d["probabilities"]["tier"]["frontier"] for d in map(json.loads, shifted.read_text().splitlines())])
    ref_share = np.mean(p_ref < policy.tier_threshold)
    assert np.mean(p_cur < policy.tier_threshold) < ref_share - 0.1
    assert abs(np.mean(p_cur < section["tier"]) - ref_share) <= 1 / len(p_cur) + 1e-12


@pytest.mark.slow
def test_cli_on_audit_and_route_logs_writes_files_and_fails_on_drift(logs, tmp_path, capsys):
    ref, _, shifted = logs
    # the reference as a real hash-chained audit log (decision nested under "decision")
    audit = AuditLog(tmp_path / "audit.jsonl", store_text=True)
    for d in map(json.loads, ref.read_text().splitlines()):
        audit.append(d, request_id=d["id"], prompt=d["text"])
    out_dir = tmp_path / "drift"
    policy_path = tmp_path / "policy.yaml"
    _policy().to_yaml(policy_path)
    rc = cli_main(["drift", "--reference", str(tmp_path / "audit.jsonl"), "--current", str(shifted),
                   "--policy", str(policy_path), "--out", str(out_dir), "--fail-on-drift"])
    assert rc == 1
    stdout = capsys.readouterr().out
    assert "routing drift detected" in stdout and "proposed thresholds (not applied)" in stdout
    result = json.loads((out_dir / "drift.json").read_text())
    assert result["meta"]["n_reference"] == result["meta"]["n_current"] == 400
    assert all(f["message"] in (out_dir / "drift.md").read_text() for f in result["findings"])
    html = (out_dir / "drift.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "<script" not in html
    diff = (out_dir / "proposed_thresholds.diff").read_text()
    assert diff.startswith("# Proposed change") and "\n--- a/policy.yaml#thresholds\n" in diff
    assert policy_path.read_text() == _policy().to_yaml()  # never applied


@pytest.mark.slow
def test_cli_routes_prompt_logs_with_a_bundle_and_is_quiet_on_the_same_traffic(tiny_bundle, tmp_path, capsys):
    from test_report import make_dataset

    frame = make_dataset({"test": 120}, seed=3)
    frame.to_parquet(tmp_path / "dataset.parquet")
    frame[["text", "source"]].to_parquet(tmp_path / "traffic.parquet")
    out_dir = tmp_path / "drift"
    rc = cli_main(["drift", "--reference", str(tmp_path / "dataset.parquet"), "--reference-split", "test",
                   "--current", str(tmp_path / "traffic.parquet"), "--bundle", str(tiny_bundle),
                   "--out", str(out_dir), "--fail-on-drift", "--threads", "1"])
    assert rc == 0
    assert "no routing drift detected" in capsys.readouterr().out
    result = json.loads((out_dir / "drift.json").read_text())
    assert result["meta"]["reference_kind"] == result["meta"]["current_kind"] == "prompts"
    assert result["findings"] == [] and result["proposal"] is None
    assert set(result["psi"]) >= {"tier", "task", "sensitivity", "task:predicted"}


def test_bad_logs_get_errors_that_name_the_line(tmp_path, logs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tier": "cheap", "rule": "x", "flags": []}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        load_decisions(bad)
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"text": "hello"}])
    rc = cli_main(["drift", "--reference", str(logs[0]), "--current", str(prompts), "--out", str(tmp_path / "o")])
    assert rc == 2  # a prompt log without --bundle: ConfigError, exit 2
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="no 'text' or 'prompt' column"):
        load_decisions(tmp_path / "nope.parquet")
