"""``make bench-scale``: routing and drift statistics over a large log, Ray Data against one process.

Builds ``--n`` labelled prompts (the test split's rows repeated, each copy's text with a different
suffix so no two are the same; labels, tier outcomes and token counts are the row's), routes them
with the student bundle once in a single process (``tierwise route --input``, ``--single-n`` of
them) and once through Ray Data on a local cluster of ``--cpus`` CPUs (``--engine ray``, Parquet
decisions), checks that every single-process decision is identical to the Ray decision of the
same id (``parity``: tier, rule, blocked, probabilities to the last bit), then runs ``tierwise drift --engine ray`` over the Ray decisions against the
single-process ones and ``tierwise report --engine ray`` (the report's statistics) over the
labelled prompts. Every step is a child process: wall time, throughput and peak memory (the
driver's own peak RSS, and the peak of the summed RSS of the driver and every process it started:
for Ray the GCS, raylet and workers) and the machine's load average are written to
``evaluation/bench_scale.json`` (``--steps`` reruns some steps and keeps the others' results).
It asserts nothing; the README and docs/scale.md quote the numbers.

What it leaves out: multi-node clusters (docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = (ROOT / "bundles" / "student", ROOT / "bundles" / "quick-student")


def _tree_rss_mb(pid: int) -> float:
    """Summed RSS (MB) of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total / 1e6


def _run(argv: list[str], label: str) -> dict:
    """Run ``tierwise ARGV`` in a child; wall time, its own peak RSS and its process tree's peak."""
    code = ("import resource, sys, json\nfrom classifier.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "sys.stderr.write('PEAK_RSS_KB ' + str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) + '\\n')\n"
            "raise SystemExit(rc)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    load0 = os.getloadavg()[0]
    sampler.start()
    out, err = proc.communicate()
    done.set()
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{err[-3000:]}")
    driver_kb = next((int(line.split()[1]) for line in err.splitlines() if line.startswith("PEAK_RSS_KB")), 0)
    sys.stderr.write(f"{label}: {wall:.1f}s, driver peak RSS {driver_kb / 1e3:.0f} MB, tree peak {peak[0]:.0f} MB\n")
    return {"wall_s": wall, "driver_peak_rss_mb": driver_kb / 1e3, "tree_peak_rss_mb": peak[0],
            "load_average_1min": [load0, os.getloadavg()[0]],
            "stdout_tail": out[-400:], "stderr_tail": "\n".join(ln for ln in err.splitlines() if "INFO" not in ln)[-600:]}


LABEL_COLUMNS = ("tier", "task", "sensitivity", "source_task", "cheap_correct", "frontier_correct", "cheap_model",
                 "frontier_model", "input_tokens", "output_tokens")


def build_prompts(n: int, out: Path, data: Path) -> int:
    import pandas as pd

    frame = pd.read_parquet(data)
    frame = frame[frame["split"] == "test"].reset_index(drop=True)
    cols = [c for c in LABEL_COLUMNS if c in frame.columns]
    rows = [{c: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for c, v in zip(cols, values, strict=True)}
            for values in frame[cols].itertuples(index=False)]
    texts, ids = frame["text"].tolist(), frame["id"].tolist()
    with open(out, "w", encoding="utf-8") as fh:
        for i in range(n):
            k = i % len(texts)
            fh.write(json.dumps({"id": f"{ids[k]}#{i // len(texts)}", "text": f"{texts[k]} (ref {i // len(texts)})",
                                 "split": "test", **rows[k]}) + "\n")
    return len(texts)


def decision_parity(single: Path, ray_dir: Path) -> dict[str, Any]:
    """Compare every decision of the single-process run with the Ray run's decision of the same id:
    tier, rule, blocked and the probabilities (parsed JSON floats, compared exactly)."""
    import pyarrow.parquet as pq

    want: dict[str, tuple[Any, ...]] = {}
    with open(single, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            want[d["id"]] = (d["tier"], d["rule"], d["blocked"], d["probabilities"])
    compared = same = 0
    first_diff: dict[str, Any] | None = None
    for f in sorted(ray_dir.glob("*.parquet")):
        table = pq.read_table(f, columns=["id", "tier", "rule", "blocked", "probabilities"])
        for rec in table.to_pylist():
            ref = want.get(rec["id"])
            if ref is None:
                continue
            compared += 1
            got = (rec["tier"], rec["rule"], rec["blocked"], json.loads(rec["probabilities"]))
            if got == ref:
                same += 1
            elif first_diff is None:
                first_diff = {"id": rec["id"], "single": ref[:3], "ray": got[:3]}
    return {"single_decisions": len(want), "compared": compared, "identical": same, "first_difference": first_diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="prompts to route (default 1,000,000)")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle (default: the student bundle)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "build" / "dataset.parquet")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per router (both engines)")
    parser.add_argument("--single-n", type=int, default=None, help="prompts for the single-process run (default --n)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tierwise-bench-scale"))
    parser.add_argument("--out", type=Path, default=ROOT / "evaluation" / "bench_scale.json")
    parser.add_argument("--steps", default="single,ray,parity,drift,report",
                        help="steps to run (default all); the others' results are kept from --out")
    args = parser.parse_args(argv)
    steps = set(args.steps.split(","))
    bundle = args.bundle or next((b for b in DEFAULT_BUNDLES if (b / "manifest.json").is_file()), None)
    if bundle is None:
        raise SystemExit("no student bundle found: pass --bundle")
    args.work.mkdir(parents=True, exist_ok=True)
    prompts = args.work / f"prompts-{args.n}.jsonl"
    if not prompts.is_file():
        build_prompts(args.n, prompts, args.data)
    single_n = min(args.single_n or args.n, args.n)
    single_in = prompts
    if single_n < args.n:
        single_in = args.work / f"prompts-{single_n}.jsonl"
        with open(prompts, encoding="utf-8") as src, open(single_in, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= single_n:
                    break
                dst.write(line)
    ray_out = args.work / "ray-decisions.parquet"
    single_out = args.work / "single-decisions.jsonl"
    result = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() and steps != {
        "single", "ray", "parity", "drift", "report"} else {}
    result.update({
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "bundle": str(bundle), "n": args.n, "ray_cpus": args.cpus, "threads": args.threads,
        "note": "wall times include process start, Ray cluster start and actor start (bundle load); the "
                "machine is shared (see load_average_1min, start and end of each step), so compare the "
                "ratio more than the absolute numbers",
    })
    common = ["--threads", str(args.threads), "--no-progress"]

    def save() -> None:  # after every step: a run stopped part way keeps what it measured
        if "single_process" in result and "ray" in result:
            result["ray_vs_single_throughput"] = (result["ray"]["prompts_per_s"]
                                                  / result["single_process"]["prompts_per_s"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")

    if "single" in steps:
        single = _run(["route", "--bundle", str(bundle), "--input", str(single_in), "--output", str(single_out),
                       *common], "single process")
        single["prompts"] = single_n
        single["prompts_per_s"] = single_n / single["wall_s"]
        result["single_process"] = single
        save()
    if "ray" in steps:
        subprocess.run(["rm", "-rf", str(ray_out)], check=True)
        ray = _run(["route", "--bundle", str(bundle), "--input", str(prompts), "--output", str(ray_out),
                    "--engine", "ray", "--ray-cpus", str(args.cpus), *common], "ray data")
        ray["prompts"] = args.n
        ray["prompts_per_s"] = args.n / ray["wall_s"]
        result["ray"] = ray
        save()
    if "parity" in steps and single_out.is_file() and ray_out.is_dir():
        result["parity"] = decision_parity(single_out, ray_out)
        sys.stderr.write(f"parity: {result['parity']}\n")
        save()
    if "drift" in steps:
        subprocess.run(["rm", "-rf", str(args.work / "drift")], check=True)
        drift = _run(["drift", "--engine", "ray", "--ray-cpus", str(args.cpus), "--reference", str(single_out),
                      "--current", str(ray_out), "--bundle", str(bundle), "--out", str(args.work / "drift")],
                     "drift (ray)")
        drift["decisions"] = args.n + single_n
        result["drift_ray"] = drift
        save()
    if "report" in steps:
        report = _run(["report", "--engine", "ray", "--ray-cpus", str(args.cpus), "--bundle", str(bundle),
                       "--data", str(prompts), "--split", "test", "--threads", str(args.threads),
                       "--out", str(args.work / "report" / "report.html"), "--no-mlflow"], "report (ray)")
        report["prompts"] = args.n
        report["prompts_per_s"] = args.n / report["wall_s"]
        stats = json.loads((args.work / "report" / "report_stats.json").read_text(encoding="utf-8"))
        report["metrics"] = stats["metrics"]
        result["report_ray"] = report
        save()
    save()
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
