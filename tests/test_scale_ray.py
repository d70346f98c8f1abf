"""Ray engine on a local 2-CPU Ray cluster: routing, drift and the report's statistics equal the
single-process ones.

Needs the optional ``ray`` extra (skipped without it). Real prompts come from
``data/build/dataset.parquet``, or on a fresh clone from the shared arena-hard and RouterArena
prompts (drift) and synthetic labelled rows (report). One cluster serves the whole module.
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
    from classifier.scale.engine import start_local

    start_local(ray, num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300_000_000,
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


def test_ray_route_parquet_output_has_flat_columns(ray_cluster, tiny_bundle, prompts, tmp_path):
    import argparse

    import pandas as pd
    import pyarrow.parquet as pq

    from classifier.route_cmd import add_route_arguments, run_route

    parser = argparse.ArgumentParser()
    add_route_arguments(parser)
    out = tmp_path / "decisions.parquet"
    assert run_route(parser.parse_args(["--bundle", str(tiny_bundle), "--input", str(prompts), "--output",
                                        str(out), "--engine", "ray", "--no-progress"])) == 0
    # pyarrow, not pandas: pandas reads a null string as NaN; the file must hold real nulls
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["line"])
    local = [json.loads(x) for x in _local_route(tiny_bundle, prompts, tmp_path / "local.jsonl")]
    assert [r["line"] for r in rows] == [d["line"] for d in local]
    # the routing actors wrote several part files (the read is split in chunks, one per block)
    assert len(list(out.glob("part-*.parquet"))) >= 2
    for row, want in zip(rows, local, strict=True):
        # a blocked or invalid line has tier null and no probabilities: nulls, never NaN or ""
        assert row["tier"] == want["tier"] and row["model"] == want["model"] and row["error"] == want.get("error")
        assert row["blocked"] == want["blocked"] and row["flags"] == want["flags"] and row["rule"] == want["rule"]
        assert row["p::tier::frontier"] == want["probabilities"].get("tier", {}).get("frontier")
        assert json.loads(row["probabilities"]) == want["probabilities"]
    assert any(r["tier"] is None for r in rows) and any(r["p::tier::frontier"] is None for r in rows)
    # pandas users get missing values where the log has nulls
    frame = pd.read_parquet(out).sort_values("line")
    assert frame["tier"].isna().tolist() == [d["tier"] is None for d in local]


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


def test_ray_drift_equals_in_process_drift(ray_cluster, tiny_bundle, prompts, tmp_path):
    import argparse

    import pandas as pd

    from classifier.evaluation.drift import add_drift_arguments, run_drift

    if DATASET.is_file():
        frame = pd.read_parquet(DATASET, columns=["id", "text", "split"])
    else:  # a fresh clone: the shared prompts of the route test, given made-up splits
        rows = [json.loads(x) for x in prompts.read_text(encoding="utf-8").splitlines() if x.startswith("{")]
        rows = [r for r in rows if isinstance(r.get("text"), str)]
        frame = pd.DataFrame({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                              "split": [("test", "ood", "validation")[i % 3] for i in range(len(rows))]})
    ref = tmp_path / "reference.jsonl"
    with open(ref, "w", encoding="utf-8") as fh:
        for rid, text in frame.loc[frame["split"] == "test", ["id", "text"]].head(600).itertuples(index=False):
            fh.write(json.dumps({"id": rid, "text": text}) + "\n")
    # the current side: a Parquet prompt log mixing splits, filtered to one of them
    cur = tmp_path / "current.parquet"
    parts = [frame[frame["split"] == s].head(500) for s in ("ood", "validation")]
    pd.concat(parts).sample(frac=1.0, random_state=0).reset_index(drop=True).to_parquet(cur)

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
    assert results["ray"]["meta"]["n_reference"] == results["local"]["meta"]["n_reference"] == 600
    assert results["ray"]["meta"]["n_current"] == results["local"]["meta"]["n_current"] == 500
    assert _strip_volatile(results["ray"]) == _strip_volatile(results["local"])


def _labelled_frame():
    """Labelled prompts with tier outcomes and token counts: the built test split, else synthetic rows."""
    import pandas as pd

    if DATASET.is_file():
        frame = pd.read_parquet(DATASET)
        return frame[frame["split"] == "test"].head(1500).reset_index(drop=True)
    from test_trainer import make_frame

    frame = make_frame({"test": 1500}, seed=3)
    frame["cheap_model"], frame["frontier_model"] = "llmrouter/cheap-pool", "llmrouter/frontier-pool"
    return frame


def test_ray_report_statistics_equal_the_report(ray_cluster, tiny_bundle, tmp_path):
    """``report --engine ray``: the report's metrics, aggregated over blocks on the cluster, equal
    ``tierwise report``'s (AUROC within the histogram's stated error bound)."""
    import argparse

    from classifier.evaluation.report import (
        ReportConfig,
        add_report_arguments,
        build_report,
        run_report,
    )

    data = tmp_path / "data"
    data.mkdir()
    _labelled_frame().to_parquet(data / "dataset.parquet", row_group_size=400)
    from classifier.evaluation.prices import DEFAULT_PRICES_PATH

    prices = DEFAULT_PRICES_PATH
    local = build_report(ReportConfig(bundle=tiny_bundle, data=data, prices=prices, split="test",
                                      baseline_router=False, n_boot=0, threads=1)).report
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    out = tmp_path / "ray" / "report.html"
    assert run_report(parser.parse_args(["--bundle", str(tiny_bundle), "--data", str(data), "--prices", str(prices),
                                         "--out", str(out), "--engine", "ray", "--threads", "1",
                                         "--no-mlflow"])) == 0
    got = json.loads((out.parent / "report_stats.json").read_text())
    assert got["headline"]["n"] == local["meta"]["n_rows"] == 1500
    want = local["metrics"]
    assert set(got["metrics"]) == set(want)
    for key, value in got["metrics"].items():
        tol = 1e-9 + got["sweep_errors"].get(f"{key}_max_error", 0.0)  # binned: AUROC, APGR, CPT
        assert abs(value - want[key]) <= tol, (key, value, want[key])
    assert got["headline"]["policy_shares"] == pytest.approx(local["headline"]["policy_shares"], abs=1e-12)
    for head, matrix in local["confusion"].items():
        assert got["heads"][head]["confusion"]["matrix"] == matrix["matrix"]
