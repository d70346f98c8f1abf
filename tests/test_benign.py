"""Traffic-shaped negatives and planted copies (classifier/data/benign.py): what they add, and that
nothing of the held-out real-traffic set or the held-out splits leaks into training."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from classifier.data.benign import (
    BENIGN_FRACTIONS,
    BenignConfig,
    generated_prompts,
    may_be_sensitive,
    other_language_prompts,
    planted,
)
from classifier.data.builder import DEFAULT_CONFIG, REAL_TRAFFIC_COLUMNS, BuildConfig, build_dataset
from classifier.data.named import PUBLIC_FIGURES, curated_bfcl_prompts, public_figure_prompts
from classifier.data.normalize import dedup_key
from classifier.data.splits import find_leaks
from classifier.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NEW_SOURCES = {"real_prompt", "code_negative", "generated_negative", "tool_schema_negative", "named_negative",
               "bfcl_curated_negative"}


@pytest.fixture(scope="module")
def slice_build(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("benign_slice")
    config = BuildConfig.from_yaml(DEFAULT_CONFIG, shared=shared_data, out=out,
                                   limit_per_source=40, progress=False)
    result = build_dataset(config)
    return result, pq.read_table(result.dataset_path).to_pylist(), out


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="benign.real_eval_share"):
        BenignConfig(real_eval_share=1.5)
    with pytest.raises(ConfigError, match="benign.planted_per_class"):
        BenignConfig(planted_per_class=-1)
    with pytest.raises(ConfigError, match="benign"):
        BuildConfig(benign={"no_such_key": 1})


def test_quick_scan_flags_contact_details_and_keys() -> None:
    assert may_be_sensitive("mail me at jane.doe@corp.example.com")
    assert may_be_sensitive("call +1 (415) 555-0134 tomorrow")
    assert may_be_sensitive("token ghp_a8F3kLm29QzXv7BnW4tYp0RsUe6JcHd1")
    assert not may_be_sensitive("write a verilog program to generate a fifo")
    assert not may_be_sensitive("How do I keep internal C struct state in my Kotlin class when using JNI?")


def test_generated_negatives_hold_no_secret_and_are_seeded() -> None:
    config = BenignConfig(generated_per_kind=30, other_language_snippets=40)
    rows = generated_prompts(7, config) + other_language_prompts(7, config)
    assert rows == generated_prompts(7, config) + other_language_prompts(7, config)
    assert {r["sensitivity"] for r in rows} == {"none"}
    assert {r["split"] for r in rows} <= set(BENIGN_FRACTIONS)
    kinds = {r["source_task"] for r in rows}
    assert {"generated:config", "generated:traceback", "generated:log", "generated:hashes",
            "generated:docs"} <= kinds
    assert any(k.startswith("code:") for k in kinds)
    # a unit (generator block or language template) is on one split only
    assert find_leaks(rows, ["group"]) == {}


def test_planted_copies_fit_the_window_and_keep_their_label() -> None:
    sens = [{"text": f"AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCY{i:04d}", "source": "gitleaks",
             "source_task": "gitleaks:aws", "rule_id": "aws", "template_id": "cred_env", "group": "g1",
             "split": "train", "sensitivity": "credential"} for i in range(5)]
    sens.append(dict(sens[0], text="held-out key", split="test"))
    contexts = [{"text": "def f(x):\n    return x + 1\n" * 40, "split": "train"},
                {"text": "SELECT 1;" * 50, "split": "test"}]
    rows = planted(sens, contexts, 3, BenignConfig(planted_per_class=10))
    assert len(rows) == 5 and all(r["split"] == "train" for r in rows)
    for r in rows:
        assert r["sensitivity"] == "credential" and "wJalrXUtnFEMI" in r["text"]
        assert len(r["text"]) <= BenignConfig().planted_max_chars + 2
        assert "SELECT 1" not in r["text"] and "held-out key" not in r["text"]


def test_public_figure_requests_are_benign_named_and_split_by_unit() -> None:
    config = BenignConfig(named_prompts=300)
    rows = public_figure_prompts(5, config)
    assert rows == public_figure_prompts(5, config) and len(rows) == 300
    assert {r["sensitivity"] for r in rows} == {"none"} and {r["split"] for r in rows} <= set(BENIGN_FRACTIONS)
    names = [n for people in PUBLIC_FIGURES.values() for n in people]
    # every row names somebody, and nothing in it is contact data or an id
    assert all(any(n in r["text"] for n in names) for r in rows)
    assert not any(may_be_sensitive(r["text"]) for r in rows)
    assert find_leaks(rows, ["group"]) == {}
    assert len({r["split"] for r in rows}) == len(BENIGN_FRACTIONS)


def test_curated_bfcl_turns_skip_contact_details(tmp_path) -> None:
    (tmp_path / "bfcl").mkdir()
    lines = [
        {"id": "simple_1", "question": [[{"role": "user", "content": "Find movies directed by Sofia Coppola."}]]},
        {"id": "simple_2", "question": [[{"role": "user", "content": "Email bob@corp.example.com the report."}]]},
        {"id": "simple_3", "question": "not a list of turns"},
    ]
    import json

    (tmp_path / "bfcl" / "BFCL_v4_simple_python.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken")
    rows = curated_bfcl_prompts(tmp_path, 1)
    assert [r["text"] for r in rows] == ["Find movies directed by Sofia Coppola."]
    assert rows[0]["sensitivity"] == "none" and rows[0]["source"] == "bfcl_curated_negative"


@pytest.mark.slow
def test_slice_build_adds_negatives_outside_test_and_ood(slice_build) -> None:
    result, rows, _ = slice_build
    new = [r for r in rows if r["source"] in NEW_SOURCES]
    assert {r["source"] for r in new} >= {"code_negative", "generated_negative"}
    assert {r["split"] for r in new} <= set(BENIGN_FRACTIONS)
    assert all(r["sensitivity"] == "none" for r in new)
    plant = [r for r in rows if r["source"].startswith("planted_")]
    assert plant and all(r["split"] == "train" and r["sensitivity"] in ("pii", "credential") for r in plant)
    assert find_leaks(rows, ["text", "group", "template_id", "rule_id"]) == {}
    assert result.stats["benign"]["planted"] == len(plant)


@pytest.mark.slow
def test_real_traffic_eval_set_is_held_out(slice_build) -> None:
    _, rows, out = slice_build
    path = out / "eval" / "real_traffic.parquet"
    held = pq.read_table(path)
    assert tuple(held.column_names) == REAL_TRAFFIC_COLUMNS and held.num_rows > 0
    in_data = {dedup_key(r["text"]) for r in rows}
    assert not any(dedup_key(t) in in_data for t in held.column("text").to_pylist())
