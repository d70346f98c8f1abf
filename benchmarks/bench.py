"""``make bench``: speed and memory of training and serving, written to ``evaluation/bench.json``.

Every figure is a median (or a percentile) over repeated runs in one process, and the bundles are
measured in the same run so their ratios are comparable; each bundle is measured in a child
process so its peak RSS is its own. What it measures:
- training throughput (prompts/s) and peak RSS of fine-tuning the real MiniLM for a few steps;
- per bundle (teacher fp32, teacher int8, student): single-prompt latency (p50/p99, 1 thread,
  tokenisation included) for ~30- and ~120-token prompts, batch throughput on 2 threads, bundle
  size and peak RSS;
- HTTP: round-trip latency and throughput of ``tierwise serve`` under a bounded local load.
It asserts nothing: goals are compared in the README, not in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FALLBACK_SHORT = "Write a short poem about the sea at night, in four lines, with a gentle rhyme scheme please."
FALLBACK_LONG = (
    "I maintain a Python service that reads CSV exports from our billing system, joins them with a "
    "Postgres table of customers, and writes a monthly revenue report. Recently the job started "
    "taking forty minutes instead of five. Explain how you would profile it, which parts are likely "
    "slow (pandas merges, row-wise apply, database round trips), and propose concrete changes with "
    "code, including how to batch the queries and vectorise the transformations."
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _prompts(n_tokens: int, count: int, tokenizer) -> list[str]:
    """Real prompts from the test split whose length is close to ``n_tokens`` (tokens incl. specials)."""
    path = ROOT / "data" / "build" / "dataset.parquet"
    picked: list[str] = []
    if path.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["text", "split"]).to_pydict()
        texts = [t for t, s in zip(table["text"], table["split"], strict=True) if s in ("test", "ood")]
        tokenizer.no_truncation()
        tokenizer.no_padding()
        for t in texts:
            if abs(len(tokenizer.encode(t).ids) - n_tokens) <= max(2, n_tokens // 20):
                picked.append(t)
            if len(picked) >= count:
                break
    if not picked:
        picked = [FALLBACK_SHORT if n_tokens < 60 else FALLBACK_LONG]
    return picked


def bench_bundle(path: str, repeats: int = 2000) -> dict:
    """Measure one bundle (run in a child process)."""
    from classifier.serving.runtime import Router

    out: dict = {"bundle": path}
    size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    out["bundle_mb"] = round(size / 1e6, 2)
    tar = Path(str(path).rstrip("/") + ".tar.gz")
    if tar.is_file():
        out["bundle_tar_gz_mb"] = round(tar.stat().st_size / 1e6, 2)
    rss0 = _peak_rss_mb()
    router = Router.load(path, threads=1)
    out["load_rss_mb"] = round(_peak_rss_mb() - rss0, 1)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    for label, n_tokens in (("short", 30), ("long", 120)):
        prompts = _prompts(n_tokens, 200, tok)
        lengths = [len(tok.encode(p).ids) for p in prompts]
        for _ in range(50):  # warm-up
            router.route(prompts[0])
        times = np.empty(repeats)
        for i in range(repeats):
            p = prompts[i % len(prompts)]
            t = time.perf_counter()
            router.route(p)
            times[i] = time.perf_counter() - t
        ptimes = np.empty(repeats)
        for i in range(repeats):
            p = prompts[i % len(prompts)]
            t = time.perf_counter()
            router.predict_proba([p])
            ptimes[i] = time.perf_counter() - t
        out[label] = {
            "tokens_median": float(np.median(lengths)),
            "n_distinct_prompts": len(prompts),
            "route_p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
            "route_p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4),
            "predict_p50_ms": round(float(np.percentile(ptimes, 50)) * 1e3, 4),
            "predict_p99_ms": round(float(np.percentile(ptimes, 99)) * 1e3, 4),
        }
    router2 = Router.load(path, threads=2)
    batch = (_prompts(120, 64, tok) * 64)[:64]
    router2.predict_proba(batch)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        router2.predict_proba(batch)
        runs.append(len(batch) / (time.perf_counter() - t))
    out["batch64_2threads_prompts_per_s"] = round(float(np.median(runs)), 1)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return out


def bench_training(steps: int = 12, batch_size: int = 16, max_length: int = 128) -> dict:
    """Fine-tuning throughput of the real MiniLM on real training prompts (child process)."""
    import torch

    from classifier.data.schema import LabelSchema
    from classifier.training.model import MultiHeadEncoder, load_pretrained_encoder, load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(max_length=max_length)
    model = MultiHeadEncoder(load_pretrained_encoder(), LabelSchema.default())
    model.train()
    texts = _prompts(80, steps * batch_size, load_tokenizer(max_length=max_length)) * (steps * batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    times, n_tokens, widths = [], [], []
    for s in range(steps + 2):
        chunk = texts[s * batch_size : (s + 1) * batch_size] or texts[:batch_size]
        enc = tok.encode_batch(chunk)
        ids = torch.tensor([e.ids for e in enc])
        mask = torch.tensor([e.attention_mask for e in enc])
        t = time.perf_counter()
        outs = model(ids, mask)
        loss = sum(torch.nn.functional.cross_entropy(z, torch.zeros(len(chunk), dtype=torch.long)) for z in outs)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if s >= 2:  # skip warm-up steps
            times.append(time.perf_counter() - t)
            n_tokens.append(int(mask.sum()))
            widths.append(int(ids.shape[1]))
    return {
        "model": "all-MiniLM-L6-v2 + 3 heads",
        "batch_size": batch_size,
        "padded_length_median": float(np.median(widths)),
        "note": "real training prompts of ~80 tokens, dynamic padding, all layers trained, forward+backward+AdamW",
        "train_prompts_per_s": round(batch_size / float(np.median(times)), 1),
        "train_tokens_per_s": round(float(np.median(n_tokens)) / float(np.median(times)), 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(bundle: str, seconds: float = 10.0, concurrency: int = 4) -> dict:
    """Start ``tierwise serve`` on loopback and drive it with a bounded closed-loop load."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "classifier.cli", "serve", bundle, "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            return {"error": "server did not become ready in 60 s"}
        body = json.dumps({"text": FALLBACK_LONG}).encode()
        lat: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop = time.time() + seconds

        def worker() -> None:
            while time.time() < stop:
                req = urllib.request.Request(url + "/v1/route", data=body, headers={"content-type": "application/json"})
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        r.read()
                        ok = r.status == 200
                except OSError:
                    ok = False
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    if not ok:
                        errors[0] += 1

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        arr = np.array(lat)
        return {
            "bundle": bundle, "concurrency": concurrency, "seconds": round(wall, 1), "requests": len(lat),
            "errors": errors[0], "throughput_rps": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(arr, 50)) * 1e3, 2), "p99_ms": round(float(np.percentile(arr, 99)) * 1e3, 2),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _child(kind: str, arg: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench", "--child", kind, arg]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=ROOT)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def default_bundles() -> dict[str, str]:
    found = {}
    for label, names in {
        "teacher_fp32": ["bundles/teacher", "bundles/quick-teacher"],
        "teacher_int8": ["bundles/teacher-int8", "bundles/quick-teacher-int8"],
        "student": ["bundles/student", "bundles/quick-student"],
    }.items():
        for n in names:
            if (ROOT / n / "manifest.json").is_file():
                found[label] = str(ROOT / n)
                break
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "evaluation" / "bench.json"))
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--http-seconds", type=float, default=10.0)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, arg = args.child
        result = bench_training() if kind == "train" else bench_bundle(arg)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    results: dict = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    bundles = default_bundles()
    results["bundles"] = {}
    for label, path in bundles.items():
        sys.stderr.write(f"bench: {label} ({path})\n")
        results["bundles"][label] = _child("bundle", path)
    if "student" in bundles:
        sys.stderr.write("bench: HTTP round trip (student)\n")
        results["http"] = bench_http(bundles["student"], seconds=args.http_seconds)
    if not args.no_training:
        sys.stderr.write("bench: training throughput\n")
        results["training"] = _child("train", "-")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
