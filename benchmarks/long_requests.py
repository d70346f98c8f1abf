"""Latency of whole requests: chat bodies of ~2k and ~8k tokens and time against length.

``python -m benchmarks.long_requests [--bundle B]`` (``make bench``) loads a bundle with one
thread and measures ``Router.route`` end to end (parsing, tokenising, every window of the model
view, pooling and the policy) on

- the ~120-token plain prompt of ``classifier.bench`` (the sub-millisecond goal of today);
- OpenAI chat bodies of ~2k and ~8k tokens (a system prompt of benign test prompts, then the
  request), p50 / p99, with the share of the time spent parsing and tokenising, twice:
  **cold**, every call a request the router has never seen (its system prompt starts with the
  call's number, so every model row and every scanned piece is new), and **warm**, an agent's
  traffic: the same system prompt on every call and a new user turn (the runtime's scan and row
  caches then skip the repeated prefix);
- a length sweep up to 32k characters (cold): p50 per request, tokens, model rows, ms per 1k
  tokens (at most linear growth means that figure stays flat).

No figure repeats one request: the 120-token prompt is one row and under the scan cache's
minimum, so nothing of it is reused, and the chat bodies differ on every call as said.

Each figure is given as wall-clock and as the calling thread's CPU time (``*_cpu_*``; the shares
and per-token figures use CPU time, which a machine shared with other jobs does not inflate).

Writes ``evaluation/bench_long_requests.json``. The default bundle is ``bundles/student``, else
``bundles/quick-student``. It asserts nothing: goals are compared in the README.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = ("Explain how a hash map handles collisions, compare open addressing with chaining, and say "
            "which one you would pick for a cache with many deletions. ")
REQUEST = "Now write a Python function that merges two sorted lists in linear time and explain why it is correct."


def _filler() -> str:
    path = ROOT / "data" / "build" / "dataset.parquet"
    if path.is_file():
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["text", "split", "sensitivity"]).to_pydict()
        texts = [x for x, s, c in zip(t["text"], t["split"], t["sensitivity"], strict=True)
                 if s == "test" and c == "none"]
        if texts:
            out, n = [], 0
            for x in texts:
                out.append(x)
                n += len(x)
                if n > 80_000:
                    break
            return "\n\n".join(out)
    return FALLBACK * 800


def _body(system: str, request: str = REQUEST) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": system},
                                                 {"role": "user", "content": request}]}


def _cold(system: str) -> Any:
    """The i-th call's body: a system prompt never seen before (it starts with the call's number)."""
    return lambda i: _body(f"Session {i}. {system}")


def _warm(system: str) -> Any:
    """The i-th call's body: the same system prompt, a new user turn."""
    return lambda i: _body(system, f"{REQUEST} (case {i})")


def _chars_for_tokens(router: Any, filler: str, tokens: int) -> int:
    lo, hi = 100, len(filler)
    while lo < hi:  # the shortest prefix of the filler with at least `tokens` tokens
        mid = (lo + hi) // 2
        if len(router._tok_full.encode(filler[:mid], add_special_tokens=False).ids) < tokens:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _time(fn: Any, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and this thread's CPU milliseconds of ``fn(item)`` for every item but the first,
    which is the warm-up (a cold item timed twice would be warm). With one ONNX Runtime thread the work runs on the calling thread, so CPU time is
    the cost even on a machine shared with other jobs (wall time there includes waiting for a core)."""
    fn(items[0])
    wall, cpu = np.empty(len(items) - 1), np.empty(len(items) - 1)
    for i, item in enumerate(items[1:]):
        t, c = time.perf_counter(), time.thread_time()
        fn(item)
        cpu[i] = time.thread_time() - c
        wall[i] = time.perf_counter() - t
    return wall * 1e3, cpu * 1e3


def _measure(router: Any, make: Any, repeats: int) -> dict[str, Any]:
    """``make(i)``: the i-th call's request (call 0 is the warm-up, never timed)."""
    items = [make(i) for i in range(repeats + 1)]
    item = items[0]
    req = router.parse(item)[0]
    clean = router._clean_request(req)[0]
    ids, _ = router._tokenise(clean)
    rows, _, flags = router._rows([clean])
    total, total_cpu = _time(router.route, items)
    # tokenising is timed on requests the route pass has not seen (its caches would answer those)
    fresh = [make(repeats + 1 + i) for i in range(repeats + 1)]
    tok, tok_cpu = _time(lambda x: router._tokenise(router._clean_request(router.parse(x)[0])[0]), fresh)
    p50 = float(np.percentile(total, 50))
    cpu50 = float(np.percentile(total_cpu, 50))
    return {
        "chars": len(clean.full_text), "tokens": len(ids), "model_rows": len(rows), "flags": flags[0],
        "route_p50_ms": round(p50, 3), "route_p99_ms": round(float(np.percentile(total, 99)), 3),
        "route_cpu_p50_ms": round(cpu50, 3),
        "parse_tokenise_p50_ms": round(float(np.percentile(tok, 50)), 3),
        "parse_tokenise_cpu_p50_ms": round(float(np.percentile(tok_cpu, 50)), 3),
        "tokenise_share": round(float(np.percentile(tok_cpu, 50)) / cpu50, 3) if cpu50 > 0 else None,
        "ms_per_1k_tokens": round(cpu50 / max(len(ids), 1) * 1000, 3),
    }


def run(bundle: Path, quick: bool = False) -> dict[str, Any]:
    from classifier.serving.runtime import Router

    router = Router.load(bundle, threads=1)
    filler = _filler()
    reps = (lambda n: max(5, n // 10)) if quick else (lambda n: n)
    out: dict[str, Any] = {"bundle": str(bundle), "kind": router.manifest.kind, "threads": 1,
                           "view": router.view.to_dict(), "python": platform.python_version(),
                           "machine": platform.machine()}
    short = " ".join(filler.split()[:90])  # ~120 tokens
    out["string_120_tokens"] = _measure(router, lambda i: short, reps(2000))
    for label, tokens, n in (("messages_2k_tokens", 2000, 300), ("messages_8k_tokens", 8000, 60)):
        chars = _chars_for_tokens(router, filler, tokens - 25)
        out[label] = _measure(router, _cold(filler[:chars]), reps(n))
        out[f"{label}_warm"] = _measure(router, _warm(filler[:chars]), reps(n))
    sweep = []
    for chars in (500, 1000, 2000, 4000, 8000, 16000, 32000):
        sweep.append(_measure(router, _cold(filler[:chars]), reps(max(20, 40_000 // chars))))
    out["length_sweep"] = sweep
    per_k = [s["ms_per_1k_tokens"] for s in sweep if s["tokens"] >= 1000]
    out["ms_per_1k_tokens_max_over_min"] = round(max(per_k) / min(per_k), 3) if per_k else None
    router.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default bundles/student, else bundles/quick-student")
    parser.add_argument("--out", type=Path, default=ROOT / "evaluation" / "bench_long_requests.json")
    parser.add_argument("--quick", action="store_true", help="a tenth of the repeats")
    args = parser.parse_args(argv)
    bundle = args.bundle
    if bundle is None:
        for name in ("bundles/student", "bundles/quick-student"):
            if (ROOT / name / "manifest.json").is_file():
                bundle = ROOT / name
                break
    if bundle is None:
        sys.stderr.write("no bundle: pass --bundle (bundles/student and bundles/quick-student are missing)\n")
        return 2
    result = run(bundle, quick=args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
