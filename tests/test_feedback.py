"""Outcome feedback: exploration recorded in decisions, and ``feedback join`` of a real audit log,
a route --output file, a prompt store and outcomes into weighted training rows, bad rows reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifier.data.schema import LabelSchema
from classifier.errors import PolicyError
from classifier.serving.exploration import Exploration
from classifier.serving.policy import Policy, PolicyEngine
from classifier.training.feedback import join_feedback

ROOT = Path(__file__).resolve().parents[1]


def _engine(exploration: dict | None) -> PolicyEngine:
    import yaml

    data = yaml.safe_load((ROOT / "serving" / "policy.example.yaml").read_text())
    if exploration is not None:
        data["exploration"] = exploration
    return PolicyEngine(Policy.from_dict(data), LabelSchema.default())


def _probs(p_frontier: float) -> dict[str, np.ndarray]:
    return {"tier": np.array([1 - p_frontier, p_frontier]), "task": np.array([0.1, 0.1, 0.1, 0.7]),
            "sensitivity": np.array([0.98, 0.01, 0.01])}


def test_exploration_sends_the_stated_share_and_records_propensities():
    engine = _engine({"share": 0.2, "mode": "send"})
    engine._exploration = Exploration(share=0.2, seed=0)  # seeded for the test; SystemRandom in service
    decisions = [engine.decide(_probs(0.05)) for _ in range(2000)]
    explored = [d for d in decisions if d.exploration["explored"]]
    assert 0.17 < len(explored) / len(decisions) < 0.23
    assert all(d.tier == "frontier" and d.exploration["propensity"] == pytest.approx(0.2) for d in explored)
    kept = next(d for d in decisions if not d.exploration["explored"])
    assert kept.tier == "cheap" and kept.exploration["propensities"] == {"cheap": 0.8, "frontier": 0.2}
    assert kept.to_dict()["exploration"]["propensity"] == pytest.approx(0.8)
    # a sensitivity gate's decision is never explored
    gated = engine.decide({**_probs(0.05), "sensitivity": np.array([0.01, 0.01, 0.98])})
    assert gated.exploration is None
    assert _engine(None).decide(_probs(0.05)).exploration is None
    with pytest.raises(PolicyError, match="exploration.share"):
        _engine({"share": 0.9})
    with pytest.raises(PolicyError, match="exploration.mode"):
        _engine({"share": 0.1, "mode": "sometimes"})


def test_shadow_mode_keeps_the_decision():
    engine = _engine({"share": 0.5, "mode": "shadow"})
    engine._exploration = Exploration(share=0.5, mode="shadow", seed=1)
    ds = [engine.decide(_probs(0.9)) for _ in range(200)]
    assert all(d.tier == "frontier" for d in ds)
    assert any(d.exploration.get("shadow_tier") == "cheap" for d in ds)


def test_join_audit_log_route_output_prompts_and_outcomes(tmp_path):
    from classifier.serving.audit import AuditLog, prompt_sha256

    engine = _engine({"share": 0.1, "mode": "send"})
    engine._exploration = Exploration(share=0.1, seed=3)
    log = AuditLog(tmp_path / "audit.jsonl")
    prompts = [f"prompt number {i}" for i in range(6)]
    decisions = []
    for i, text in enumerate(prompts[:4]):
        d = engine.decide(_probs(0.05))
        decisions.append(d)
        log.append(d, request_id=f"r{i}", prompt=text, exploration=d.exploration)
    route_out = tmp_path / "routed.jsonl"
    d5 = engine.decide(_probs(0.05))
    route_out.write_text(json.dumps({"line": 1, "id": "r5", **d5.to_dict()}) + "\n")
    store = tmp_path / "prompts.jsonl"
    store.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(prompts)))
    outcomes = tmp_path / "outcomes.jsonl"
    lines = [
        {"request_id": "r0", "tier": decisions[0].tier, "success": 1},
        {"prompt_sha256": prompt_sha256(prompts[1]), "tier": decisions[1].tier, "score": 0.25},
        {"request_id": "r2", "model": "mistralai/Mixtral-8x7B-Instruct-v0.1", "success": 0},
        {"request_id": "r5", "tier": d5.tier, "success": 1},
        {"request_id": "nope", "tier": "cheap", "success": 1},
        {"request_id": "r3", "tier": "cheap", "success": 3},
        {"tier": "cheap", "success": 1},
    ]
    outcomes.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{not json\n")
    result = join_feedback([outcomes], [tmp_path / "audit.jsonl", route_out], prompts=store,
                           model_tiers={"mistralai/Mixtral-8x7B-Instruct-v0.1": "cheap"})
    rows = result.rows.set_index("request_id")
    assert set(rows.index) == {"r0", prompt_sha256(prompts[1]), "r2", "r5"}
    assert rows.loc["r0", "text"] == prompts[0]
    assert rows.loc[prompt_sha256(prompts[1]), "text"] == prompts[1]
    if d5.tier == "cheap":
        assert rows.loc["r5", "weight"] == pytest.approx(1 / 0.9)
    if decisions[0].tier == "cheap":
        assert rows.loc["r0", "cheap_correct"] == 1 and rows.loc["r0", "weight"] == pytest.approx(1 / 0.9)
    kinds = sorted(r.kind for r in result.rejects)
    assert kinds == ["bad_outcome", "malformed_json", "missing_key", "unknown_request"]
    bad = next(r for r in result.rejects if r.kind == "unknown_request")
    assert bad.file == str(outcomes) and bad.row == 5 and "nope" in bad.reason and bad.hint


def test_prompt_store_ids_are_read_as_written(tmp_path):
    """A store's ids are JSON values, not pandas dtypes: "007" stays "007" (pandas' read_json made it
    7.0 and a null id "nan", so such requests found no text)."""
    decisions = tmp_path / "routed.jsonl"
    decisions.write_text("".join(json.dumps({"id": rid, "tier": "cheap"}) + "\n" for rid in ("007", 12, "x")))
    store = tmp_path / "prompts.jsonl"
    store.write_text("".join(json.dumps(x) + "\n" for x in (
        {"id": "007", "text": "seven"}, {"id": None, "text": "no id"}, {"id": 12, "text": "twelve"},
        {"request_id": "x", "id": "ignored", "text": "request_id wins"})))
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps({"request_id": rid, "tier": "cheap", "success": 1}) + "\n"
                                for rid in ("007", 12, "x")))
    result = join_feedback([outcomes], [decisions], prompts=store)
    assert not result.rejects
    assert dict(zip(result.rows["request_id"], result.rows["text"], strict=True)) == {
        "007": "seven", "12": "twelve", "x": "request_id wins"}
