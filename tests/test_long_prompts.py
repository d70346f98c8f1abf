"""Long-prompt evaluation sets (built from a fabricated frame and BFCL's multi-turn files only),
their scoring under every view with the tiny bundle, and the position sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classifier.evaluation import long_prompts, wrappers
from classifier.evaluation.long_prompts_section import render_html, render_markdown, section
from classifier.evaluation.prices import DEFAULT_PRICES_PATH
from classifier.serving.request import parse_request
from classifier.serving.runtime import Router

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def fabricated(n_tasks: int = 3, per_task: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for t in range(n_tasks):
        for i in range(per_task):
            text = f"task {t} question {i}: " + " ".join(rng.choice(WORDS, 60)) + f" what is {i} plus {t}?"
            rows.append({"id": f"t{t}q{i}", "text": text, "source": f"src{t % 2}", "source_task": f"task{t}",
                         "split": "test" if i % 3 else "validation", "tier": "frontier" if i % 2 else "cheap",
                         "task": ["math_reasoning", "knowledge"][i % 2], "sensitivity": "none",
                         "cheap_model": "mistralai/Mixtral-8x7B-Instruct-v0.1", "frontier_model": "gpt-4-1106-preview",
                         "cheap_correct": float(i % 2 == 0), "frontier_correct": 1.0,
                         "input_tokens": 80, "output_tokens": 20})
    for c, secret in (("credential", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                      ("pii", "my name is john smith and my phone is 555 123 4567")):
        for i in range(3):
            rows.append({"id": f"{c}{i}", "text": f"{secret} number {i}", "source": c, "source_task": f"{c}:r",
                         "split": "test", "tier": None, "task": None, "sensitivity": c})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def multi_turn_only(shared_data: Path, tmp_path_factory) -> Path:
    """A shared-data folder holding BFCL's multi-turn files and nothing else: building must work
    from it, so the evaluation wrappers never come from the live requests the training uses."""
    root = tmp_path_factory.mktemp("shared")
    src = shared_data / "bfcl"
    shutil.copytree(src / "multi_turn_func_doc", root / "bfcl" / "multi_turn_func_doc")
    shutil.copy(src / "BFCL_v4_multi_turn_base.json", root / "bfcl")
    return root


@pytest.fixture(scope="module")
def built(multi_turn_only: Path) -> tuple[pd.DataFrame, dict]:
    frame = fabricated()
    return frame, wrappers.build_wrapped(frame, multi_turn_only)


@pytest.mark.slow  # needs the shared data set (BFCL)
def test_every_test_prompt_is_wrapped_request_last_with_1000_tokens(built) -> None:
    frame, sets = built
    test_ids = set(frame.loc[frame["split"] == "test", "id"])
    assert set(sets) == set(wrappers.KINDS)
    for kind, records in sets.items():
        assert {r["id"] for r in records} == test_ids, kind
        for r in records:
            req = parse_request(r["body"])
            last = r["body"]["messages"][-1]
            assert last["role"] == "user" and last["content"].endswith(r["request"]), kind
            prefix = req.full_text[:len(req.full_text) - len(r["request"])]
            assert wrappers.count_tokens(prefix) >= wrappers.MIN_PREFIX_TOKENS, (kind, r["id"])
            assert r["prefix_tokens"] >= wrappers.MIN_PREFIX_TOKENS


def test_kshot_shots_come_from_the_prompts_own_task_and_never_the_prompt(built) -> None:
    frame, sets = built
    by_id = frame.set_index("id")
    for r in sets["kshot_turns"]:
        shots = [m["content"] for m in r["body"]["messages"][:-1] if m["role"] == "user"]
        assert r["request"] not in shots
        own = set(by_id.loc[by_id["source_task"] == r["source_task"], "text"])
        if r["sensitivity"] == "none":  # a task with enough prompts of its own
            assert set(shots) <= own
        assert all(m["content"] == wrappers.SHOT_ANSWER for m in r["body"]["messages"] if m["role"] == "assistant")
    # the prefix is shared: prompts of one task see the same shots (but their own)
    firsts = {r["body"]["messages"][0]["content"] for r in sets["kshot_turns"] if r["source_task"] == "task0"}
    assert len(firsts) <= 2


def test_agent_and_history_wrappers_use_multi_turn_suites(built, multi_turn_only: Path) -> None:
    _, sets = built
    suite_tools = {t["function"]["name"] for tools in wrappers.load_suites(multi_turn_only / "bfcl").values()
                   for t in tools}
    for r in sets["agent"]:
        names = {t["function"]["name"] for t in r["body"]["tools"]}
        assert names <= suite_tools and len(r["suites"]) >= 2
    base = (multi_turn_only / "bfcl" / "BFCL_v4_multi_turn_base.json").read_text()
    for r in sets["history"][:3]:
        users = [m["content"] for m in r["body"]["messages"][:-1] if m["role"] == "user"]
        assert users and all(json.dumps(u)[1:-1] in base for u in users)


def test_missing_multi_turn_data_is_a_clear_error(tmp_path: Path) -> None:
    from classifier.errors import DataError

    with pytest.raises(DataError, match="multi_turn_func_doc"):
        wrappers.build_wrapped(fabricated(), tmp_path)


def test_identical_collisions_counts_shared_probabilities() -> None:
    assert long_prompts.identical_collisions(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7])) == 0
    assert long_prompts.identical_collisions(np.array([0.4, 0.4, 0.4]), np.array([0.5, 0.6, 0.5])) == 1
    assert long_prompts.identical_collisions(np.array([0.4, 0.4]), np.array([0.5, 0.5])) == 0


@pytest.mark.slow  # the model over 1000-token prompts (~6 s)
def test_evaluate_and_report_section_with_the_tiny_bundle(built, tiny_bundle: Path, tmp_path: Path) -> None:
    from classifier.evaluation.prices import Prices

    frame, sets = built
    paths = wrappers.write_wrapped({k: v[:10] for k, v in sets.items()}, tmp_path / "eval")
    assert sorted(p.name for p in paths.values()) == sorted(f"wrapped_{k}.jsonl" for k in wrappers.KINDS)
    with Router.load(tiny_bundle) as router:
        doc = long_prompts.evaluate_long_prompts(router, tmp_path / "eval", frame,
                                                 Prices.from_yaml(DEFAULT_PRICES_PATH), sample=8)
        # head-only reading of a shared k-shot prefix: every prompt of a task looks the same
        heads = long_prompts.score_views(router, [r["body"] for r in sets["kshot_turns"] if r["source_task"] == "task0"],
                                         tier_views=("head", "last_user_tail"), sens_views=())
        p_head = heads["tier:head"]["tier"][:, 1]
        p_tail = heads["tier:last_user_tail"]["tier"][:, 1]
        assert np.ptp(p_head) < np.ptp(p_tail)
        sweep = long_prompts.position_sweep(router, _with_filler(frame), n_per_class=2)
    for kind in wrappers.KINDS:
        k = doc["kinds"][kind]
        assert set(k["tier_views"]) == set(long_prompts.TIER_VIEWS) and k["prefix_tokens_min"] >= 1000
        for v in k["tier_views"].values():
            assert 0.0 <= v["wrapped"]["tier_auroc"] <= 1.0 and v["wrapped"]["cheap_share"] is not None
    assert set(sweep["views"]["windows_max"]["positions"]) == {"0%", "25%", "50%", "75%", "100%", "32k_chars"}
    (tmp_path / "lp.json").write_text(json.dumps(doc))
    (tmp_path / "pos.json").write_text(json.dumps(sweep))
    sec = section(tmp_path / "lp.json", tmp_path / "pos.json")
    html = render_html(sec)
    assert 'id="long-prompts"' in html and "32k_chars" in html and "kshot_flat" in html
    assert "| kshot_turns |" in render_markdown(sec)
    assert section(tmp_path / "none.json", tmp_path / "none2.json") is None and render_html(None) == ""


def _with_filler(frame: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    extra = [{"id": f"f{i}", "text": " ".join(rng.choice(WORDS, 120)), "source": "f", "source_task": "f",
              "split": "test", "tier": "cheap", "task": "knowledge", "sensitivity": "none"} for i in range(60)]
    return pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
