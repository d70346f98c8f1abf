"""``feedback join --engine ray`` and ``adapt --engine ray`` on a local 2-CPU Ray cluster: the
training rows and rejects equal the in-process join's, and the features, fitted head and adapted
ONNX graph equal the in-process adapt's to the last bit. Needs the optional ``ray`` extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_scale_ray import ray_cluster  # noqa: F401 - the module's local cluster (2 CPUs)

from classifier.serving.audit import prompt_sha256
from classifier.training.feedback import FEEDBACK_HINTS, join_feedback

ROOT = Path(__file__).resolve().parents[1]
N = 240

pytestmark = pytest.mark.slow


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def _fixture(tmp: Path) -> dict:
    """Two decision logs (audit-log and route-output shapes), a prompt store, two outcome files:
    N requests, with every kind of bad row the in-process join rejects and every way to find a text."""
    rng = np.random.default_rng(7)
    texts = [f"request {i}: " + " ".join(rng.choice(["sort", "prove", "email", "poem"], 4)) for i in range(N)]
    audit, routed, store, out1, out2 = [], [], [], [], []
    for i, text in enumerate(texts):
        tier = "cheap" if i % 3 else "frontier"
        explo = {"propensity": 0.8, "propensities": {"cheap": 0.8 if tier == "cheap" else 0.2,
                                                     "frontier": 0.2 if tier == "cheap" else 0.8}}
        if i % 2 == 0:  # audit log: by id and hash, the prompt kept for a third of them
            audit.append({"request_id": f"r{i}", "prompt_sha256": prompt_sha256(text), "decision": {"tier": tier},
                          "extra": {"exploration": explo} if i % 4 == 0 else {},
                          **({"prompt": text} if i % 3 == 0 else {})})
        else:  # route output: id only
            routed.append({"line": i, "id": f"r{i}", "tier": tier, **({"exploration": explo} if i % 5 == 1 else {})})
        if i % 7 == 3:  # the text only by hash (the store has no id for it)
            store.append({"text": text})
        elif i % 11 != 5:  # i % 11 == 5 and no prompt in the log: no_prompt
            store.append({"id": f"r{i}", "text": text})
        outcome = {"request_id": f"r{i}", "tier": tier, "success": int(rng.random() < 0.7)}
        if i % 6 == 1:
            outcome = {"prompt_sha256": prompt_sha256(text), "tier": tier, "score": float(rng.random())}
        if i % 9 == 2:
            outcome = {"request_id": f"r{i}", "model": "small-model", "success": 1, "cost_usd": 0.001}
        (out1 if i < N // 2 else out2).append(outcome)
        if i % 8 == 0:  # a shadow call on the other tier fills the other column
            other = "frontier" if tier == "cheap" else "cheap"
            out2.append({"request_id": f"r{i}", "tier": other, "success": 1, "shadow": True, "input_tokens": 12})
    audit[5]["request_id"] = "r-dup"  # a later record of the same id replaces an earlier one
    audit[9]["request_id"] = "r-dup"
    audit[9]["decision"] = {"tier": "cheap"}
    audit[11]["extra"] = {"exploration": {"propensity": 0}}  # bad_propensity (if its outcome is of its tier)
    store += [{"id": "r2", "text": "a later text for r2"}, {"id": None, "text": "null id"}, {"id": "x", "text": 5}]
    bad = [
        "{not json", "[1, 2]", "",  # malformed_json (twice); a blank line is skipped
        {"tier": "cheap", "success": 1},  # missing_key
        {"request_id": "nope", "tier": "cheap", "success": 1},  # unknown_request
        {"request_id": "r-dup", "tier": "cheap", "success": 1},
        {"request_id": "r4", "tier": "cheap", "success": 3},  # bad_outcome
        {"request_id": "r12", "tier": "medium", "success": 1},  # unknown_tier
        {"request_id": "r22", "tier": "cheap", "success": 0},  # bad_propensity: audit[11]
        {"request_id": "r22", "tier": "frontier", "success": 0},
        {"request_id": "r6", "tier": "frontier", "success": 1},  # duplicate of r6
        {"request_id": "r0", "tier": "frontier", "success": 0},  # duplicate of r0
    ]
    return {"decisions": [_write(tmp / "audit.jsonl", audit + ["not json either"]), _write(tmp / "routed.jsonl", routed)],
            "prompts": _write(tmp / "prompts.jsonl", store),
            "outcomes": [_write(tmp / "outcomes-1.jsonl", out1[:50] + bad + out1[50:]), _write(tmp / "outcomes-2.jsonl", out2)]}


def _assert_same(local, ray) -> None:
    pd.testing.assert_frame_equal(ray.rows, local.rows)  # same rows, columns, values and order
    assert [r.to_dict() for r in ray.rejects] == [r.to_dict() for r in local.rejects]
    assert ray.counts == local.counts


def test_ray_join_equals_the_in_process_join(ray_cluster, tmp_path):  # noqa: F811
    from classifier.scale.feedback import join_feedback_ray

    inputs = _fixture(tmp_path)
    options = {"prompts": inputs["prompts"], "model_tiers": {"small-model": "cheap"}}
    local = join_feedback(inputs["outcomes"], inputs["decisions"], **options)
    # the fixture holds every kind of bad row the join rejects (missing_text and bad_weight are adapt's)
    assert {r.kind for r in local.rejects} == set(FEEDBACK_HINTS) - {"missing_text", "bad_weight"}
    assert local.counts["rows"] > 150 and local.rows["frontier_correct"].notna().sum() > 20
    for parts in (1, 7):  # one partition, and several (texts found by a hash in another partition)
        _assert_same(local, join_feedback_ray(inputs["outcomes"], inputs["decisions"], parts=parts, **options))
    # the prompt store's ids are read as written: "r2" from its later entry, no "nan" id
    assert local.rows.set_index("request_id").loc["r2", "text"] == "a later text for r2"


def test_ray_join_reads_parquet_part_directories_and_the_cli_writes_the_same_file(ray_cluster, tmp_path):  # noqa: F811
    import pyarrow as pa
    import pyarrow.parquet as pq

    from classifier.cli import main

    inputs = _fixture(tmp_path)
    routed = [json.loads(x) for x in inputs["decisions"][1].read_text().splitlines()]
    parts = tmp_path / "decisions.parquet"  # as route --engine ray writes them: part files of flat columns
    parts.mkdir()
    for k in range(2):
        chunk = [{"line": d["line"], "id": d["id"], "tier": d["tier"]} for d in routed[k::2]]
        pq.write_table(pa.Table.from_pylist(chunk), parts / f"part-{k:05d}.parquet")
    flat = _write(tmp_path / "routed-flat.jsonl", [{"line": d["line"], "id": d["id"], "tier": d["tier"]}
                                                   for k in range(2) for d in routed[k::2]])
    common = ["--outcomes", str(inputs["outcomes"][0]), "--outcomes", str(inputs["outcomes"][1]),
              "--decisions", str(inputs["decisions"][0]), "--prompts", str(inputs["prompts"]),
              "--tiers", "small-model=cheap"]
    assert main(["feedback", "join", *common, "--decisions", str(flat), "--out", str(tmp_path / "local.parquet")]) == 0
    assert main(["feedback", "join", *common, "--decisions", str(parts), "--out", str(tmp_path / "ray.parquet"),
                 "--engine", "ray"]) == 0
    local, ray = pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "ray.parquet")
    assert len(local) > 150
    pd.testing.assert_frame_equal(ray, local)
    local_rejects = (tmp_path / "local.parquet.rejects.jsonl").read_text().splitlines()
    ray_rejects = (tmp_path / "ray.parquet.rejects.jsonl").read_text().splitlines()
    assert ray_rejects == local_rejects and len(local_rejects) >= 10


def test_without_engine_ray_feedback_join_never_imports_ray(tmp_path):
    inputs = _fixture(tmp_path)
    code = (
        "import sys\n"
        "from classifier.cli import main\n"
        f"rc = main(['feedback', 'join', '--outcomes', {str(inputs['outcomes'][0])!r}, '--decisions', "
        f"{str(inputs['decisions'][1])!r}, '--prompts', {str(inputs['prompts'])!r}, '--out', "
        f"{str(tmp_path / 'rows.jsonl')!r}])\n"
        "assert rc == 0, rc\n"
        "import argparse\n"
        "from classifier.training.adapt import add_adapt_arguments\n"
        "add_adapt_arguments(argparse.ArgumentParser())\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _adapt_rows(n: int) -> pd.DataFrame:
    """Prompts with the word "password" fail on the cheap tier most of the time."""
    rng = np.random.default_rng(3)
    hard = rng.random(n) < 0.4
    words = "write sort array explain answer question email story list summary".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 40))).tolist() + (["password"] * 3 if h else []))
             + f" {i}" for i, h in enumerate(hard)]
    cheap = (rng.random(n) > np.where(hard, 0.85, 0.15)).astype(float)
    return pd.DataFrame({"text": texts, "cheap_correct": cheap, "frontier_correct": np.ones(n)})


def test_ray_features_and_adapted_bundle_equal_the_in_process_ones(ray_cluster, tiny_bundle, tmp_path):  # noqa: F811
    from classifier.scale.adapt import ray_feature_batches
    from classifier.training.adapt import BundleFeaturizer

    rows = _adapt_rows(600)
    runner = ray_feature_batches(tiny_bundle, actors=2, threads=1)
    feat = BundleFeaturizer(tiny_bundle, threads=1)
    try:
        f_local, z_local = feat.transform(rows["text"].tolist(), progress=False)
        f_ray, z_ray = feat.transform(rows["text"].tolist(), progress=False, run_batches=runner)
    finally:
        feat.close()
    assert f_local.shape == f_ray.shape and f_local.shape[0] == 600 and f_local.dtype == np.float32
    assert np.array_equal(f_ray, f_local)  # bit for bit: the same batches, run elsewhere
    assert z_ray.keys() == z_local.keys() and all(np.array_equal(z_ray[h], z_local[h]) for h in z_local)

    # the command, in process and with --engine ray (2 actors of 1 thread): the same fitted head and graph
    from classifier.cli import main

    rows.to_parquet(tmp_path / "rows.parquet")
    common = ["adapt", "--bundle", str(tiny_bundle), "--rows", str(tmp_path / "rows.parquet"), "--clusters", "4",
              "--alpha", "0.3", "--delta", "0.2", "--threads", "1", "--no-mlflow", "--force"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    local, ray = (json.loads((tmp_path / f"{name}.adapt.json").read_text()) for name in ("local", "ray"))

    def same(doc):  # NaN-safe equality, to the last bit of every float
        return json.dumps(doc, sort_keys=True)

    assert same(ray["head"]) == same(local["head"])  # the coefficients' summary, C, prior weight and blend
    assert same(ray["metrics"]["adapted"]) == same(local["metrics"]["adapted"])
    assert local["metrics"]["rows"]["fit"] > 300
    assert (tmp_path / "ray" / "model.onnx").read_bytes() == (tmp_path / "local" / "model.onnx").read_bytes()
