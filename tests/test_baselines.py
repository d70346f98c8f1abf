"""Baselines: sklearn shape, rules, beating the majority class, and the ``tierwise baseline`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classifier.cli import main
from classifier.data.schema import DEFAULT_SCHEMA_PATH, LabelSchema
from classifier.evaluation.baselines import (
    KeywordBaseline,
    MajorityBaseline,
    TfidfLogRegBaseline,
    evaluate_baselines,
    keyword_frontier_score,
)
from classifier.evaluation.prices import DEFAULT_PRICES_PATH, Prices

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = LabelSchema.default()
PRICES = Prices.from_yaml(DEFAULT_PRICES_PATH)

NAMES = ["anna", "boris", "chen", "dara", "emil", "fatima"]
TOPICS = ["rivers", "autumn", "friendship", "the sea", "a city at night", "old trains"]


def _row(kind: str, rng: np.random.Generator, i: int) -> dict:
    n1, n2 = int(rng.integers(2, 99)), int(rng.integers(2, 99))
    name, topic = NAMES[i % len(NAMES)], TOPICS[i % len(TOPICS)]
    if kind == "code":
        text = f"Write a python function `f{i}(xs)` that returns the sorted list; def f{i}(xs): return xs"
        task, tier, qc, qf = "code", "frontier", 0.0, 1.0
    elif kind == "math":
        text = f"Solve: {name} has {n1} apples and buys {n2} more. How many apples in total? Calculate it."
        task, tier, qc, qf = "math_reasoning", "frontier", 0.0, 1.0
    elif kind == "knowledge":
        text = f"Which of the following rivers is longest?\nA) {topic}\nB) Nile\nC) Rhine\nD) Po"
        task, tier, qc, qf = "knowledge", "cheap", 1.0, 1.0
    elif kind == "chat":
        text = f"Write a short poem about {topic} for my friend {name}."
        task, tier, qc, qf = "chat_writing", "cheap", 1.0, 1.0
    elif kind == "pii":
        text = f"Please update the contact for {name}: {name}.{i}@example.com, phone 555-{n1:03d}-{1000 + i}."
        return {"text": text, "sensitivity": "pii", "source": "presidio"}
    else:  # credential
        key = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"), 16))
        text = f"deploy failed, config has aws_access_key_id = AKIA{key} please check"
        return {"text": text, "sensitivity": "credential", "source": "gitleaks"}
    return {
        "text": text, "task": task, "tier": tier, "sensitivity": "none", "source": "synthetic",
        "cheap_correct": qc, "frontier_correct": qf,
        "cheap_model": "mistralai/Mixtral-8x7B-Instruct-v0.1", "frontier_model": "gpt-4-1106-preview",
        "input_tokens": len(text.split()) * 2, "output_tokens": 200,
    }


def synthetic_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """A small, separable frame with the design.md columns (tier/task null on sensitivity rows)."""
    rng = np.random.default_rng(seed)
    kinds = ["code", "math", "knowledge", "chat", "knowledge", "chat", "pii", "credential"]
    rows = [_row(kinds[i % len(kinds)], rng, i) for i in range(n)]
    frame = pd.DataFrame(rows)
    frame["id"] = [f"{i:016x}" for i in range(n)]
    frame["split"] = rng.choice(["train", "validation", "test", "ood"], size=n, p=[0.55, 0.15, 0.2, 0.1])
    frame["input_tokens"] = frame["input_tokens"].astype("Int64")
    frame["output_tokens"] = frame["output_tokens"].astype("Int64")
    return frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_frame()


@pytest.mark.parametrize("cls", [MajorityBaseline, KeywordBaseline, TfidfLogRegBaseline])
def test_sklearn_shape(cls, frame):
    model = cls(SCHEMA)
    train = frame[frame["split"] == "train"]
    assert model.fit(train) is model
    assert any(k.endswith("_") and not k.startswith("_") for k in vars(model))
    probs = model.predict_proba(["hello there", "def f(x): return x"])
    assert list(probs) == SCHEMA.head_names
    for head in SCHEMA.heads:
        assert probs[head.name].shape == (2, head.num_classes)
        np.testing.assert_allclose(probs[head.name].sum(1), 1.0, atol=1e-6)


def test_majority_predicts_training_majority(frame):
    train = frame[frame["split"] == "train"]
    probs = MajorityBaseline(SCHEMA).fit(train).predict_proba(["anything"])
    assert SCHEMA.head("sensitivity").classes[probs["sensitivity"][0].argmax()] == train["sensitivity"].mode()[0]


def test_keyword_rules_fire():
    model = KeywordBaseline(SCHEMA).fit(synthetic_frame(80))
    texts = [
        "my github token is ghp_" + "a1B2" * 9,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...",
        "connect with password=hunter2hunter",
        "email me at jane.doe@example.org",
        "my SSN is 123-45-6789",
        "Solve 12 + 30 and calculate the total",
        "```python\nimport os\n```",
    ]
    probs = model.predict_proba(texts)
    sens = [SCHEMA.head("sensitivity").classes[i] for i in probs["sensitivity"].argmax(1)]
    assert sens == ["credential", "credential", "credential", "pii", "pii", "none", "none"]
    task = [SCHEMA.head("task").classes[i] for i in probs["task"].argmax(1)]
    assert task[5:] == ["math_reasoning", "code"]
    assert keyword_frontier_score("Prove step by step that " + "x " * 200) > keyword_frontier_score("hi")


@pytest.mark.slow  # fits every baseline
def test_baselines_beat_majority_and_report_routing(frame):
    report = evaluate_baselines(frame, SCHEMA, PRICES)
    assert set(report["results"]) == {"test", "ood"}
    test = report["results"]["test"]
    for head in ("tier", "task", "sensitivity"):
        majority = test["majority"]["heads"][head]["macro_f1"]
        assert test["tfidf_logreg"]["heads"][head]["macro_f1"] > majority + 0.2
        assert test["keyword"]["heads"][head]["macro_f1"] > majority
    assert test["tfidf_logreg"]["heads"]["tier"]["auroc"] > 0.9
    routing = test["tfidf_logreg"]["routing"]
    assert routing["apgr"] > test["majority"]["routing"]["apgr"] == pytest.approx(0.5)
    cq = routing["cost_at_quality"]
    assert cq["reachable"] and 0.0 < cq["saving"] < 1.0
    assert routing["validation_threshold"] is not None
    flagged = test["tfidf_logreg"]["recall_at_precision"]["sensitivity"]["flagged"]
    assert 0.0 <= flagged["recall"] <= 1.0
    refs = report["references"]["test"]
    assert refs["oracle"]["cost"] <= refs["all_frontier"]["cost"]


@pytest.mark.slow
def test_cli_smoke(tmp_path, capsys):
    data = tmp_path / "build"
    data.mkdir()
    synthetic_frame(160, seed=1).to_parquet(data / "dataset.parquet")
    out = tmp_path / "eval" / "baselines.json"
    rc = main(["baseline", "--data", str(data), "--schema", str(DEFAULT_SCHEMA_PATH),
               "--prices", str(DEFAULT_PRICES_PATH), "--out", str(out), "--no-plot"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["results"]["test"]) == {"majority", "keyword", "tfidf_logreg", "task_prior", "cluster_prior"}
    table = out.with_suffix(".md").read_text()
    assert "| tfidf_logreg |" in table and "APGR" in table
    assert "| tfidf_logreg |" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["baseline", "--data", str(tmp_path / "nope"), "--schema", str(DEFAULT_SCHEMA_PATH)]) == 2
    assert "does not exist" in capsys.readouterr().err
    data = tmp_path / "d.parquet"
    frame = synthetic_frame(40)
    frame["frontier_model"] = frame["frontier_model"].where(frame["frontier_model"].isna(), "gpt-9")
    frame.to_parquet(data)
    assert main(["baseline", "--data", str(data), "--out", str(tmp_path / "b.json"), "--no-plot",
                 "--prices", str(DEFAULT_PRICES_PATH)]) == 2
    err = capsys.readouterr().err
    assert "gpt-9" in err and "prices.yaml" in err
