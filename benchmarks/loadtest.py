"""``make load``: a bounded load and soak test of ``tierwise serve`` on loopback.

Starts ``tierwise serve`` on 127.0.0.1 (a free port) with a bundle: the one given, else
``bundles/student``, else ``bundles/quick-student``, else a tiny random bundle built in a
temporary folder (needs the ``train`` extra). Then drives it for a bounded time (``--seconds``,
default ``$LOAD_SECONDS`` or 180) with a Python load generator: ``--concurrency`` threads, each
on its own keep-alive connection, either closed-loop (as fast as the server answers) or open-loop
at ``--rate`` requests per second (latency counted from each request's scheduled send time, so a
server that falls behind shows it). The traffic is a mix of what a router sends and what it
should survive: single prompts of every length, batches, prompts with PII and credential
look-alikes, control characters, emoji and mixed scripts, empty prompts, invalid UTF-8 inside the
JSON, malformed bodies and oversized batches. Every answer is checked against the status it must
have (200 with well-formed decisions, 400, 413); anything else, a 5xx or a transport error is an
error, and there must be none.

Every ``--sample-s`` seconds the server's resident memory is read from ``/proc/<pid>/status``;
the report gives RSS after the warm-up and at the end, the growth, and the least-squares slope
(MiB per minute) over the run. ``evaluation/load.json`` gets requests served, errors,
throughput, p50/p90/p99/max latency, the RSS series and the verdict. Exit status 1 when there
was an error or the RSS grew by more than ``--max-rss-growth-mib``.

Traffic goes to 127.0.0.1 only and is bounded in time (and by the count, ``--max-requests``).
``ServeProcess`` and ``build_tiny_bundle`` are also used by the tests that need a real
``tierwise serve`` process. What this module leaves out: multi-host load, TLS, and capacity
planning (the numbers depend on the machine and on what else runs on it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLES = ("bundles/student", "bundles/quick-student")
DEFAULT_OUT = ROOT / "evaluation" / "load.json"

logger = logging.getLogger(__name__)


# -- the server process ---------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (Linux ``/proc``), None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class ServeProcess:
    """``tierwise serve BUNDLE --host 127.0.0.1 --port <free>`` in a child process.

    stdout and stderr go to files under ``log_dir`` (read them with :meth:`logs`). Use as a
    context manager; :meth:`stop` sends SIGTERM (uvicorn shuts down gracefully) and kills after
    ``grace`` seconds.
    """

    def __init__(self, bundle: str | Path, *extra: str, log_dir: str | Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.bundle = Path(bundle)
        self.extra = [str(a) for a in extra]
        self._tmp = None if log_dir is not None else tempfile.TemporaryDirectory(prefix="tierwise-serve-")
        self.log_dir = Path(log_dir if log_dir is not None else self._tmp.name)  # type: ignore[union-attr]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server is not started")
        return self.proc.pid

    def start(self) -> ServeProcess:
        self.port = free_port()
        cmd = [sys.executable, "-m", "classifier.cli", "serve", str(self.bundle), "--host", "127.0.0.1",
               "--port", str(self.port), *self.extra]
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        with open(self.log_dir / "serve.stdout", "wb") as out, open(self.log_dir / "serve.stderr", "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=env)
        return self

    def status(self, path: str, timeout: float = 2.0) -> int | None:
        """HTTP status of ``GET path``, None when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except OSError:
            return None
        finally:
            conn.close()

    def wait_for(self, path: str = "/readyz", status: int = 200, timeout: float = 60.0) -> bool:
        """Wait until ``GET path`` answers ``status``; False when the process exits or time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self.status(path) == status:
                return True
            time.sleep(0.1)
        return False

    def wait_exit(self, timeout: float = 60.0) -> int | None:
        """The exit status once the process ends by itself, None if it still runs after ``timeout``."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid)

    def logs(self) -> str:
        parts = []
        for name in ("serve.stdout", "serve.stderr"):
            path = self.log_dir / name
            if path.is_file():
                parts.append(path.read_bytes().decode("utf-8", "replace"))
        return "\n".join(parts)

    def stop(self, grace: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


# -- a bundle to load -----------------------------------------------------------------------------
def build_tiny_bundle(out_dir: str | Path, seed: int = 0) -> Path:
    """A random 2-layer, 32-wide encoder exported to a verified bundle with the example policy
    (the same recipe as the tests' ``tiny_bundle``). Needs torch and transformers."""
    from classifier.data.schema import LabelSchema
    from classifier.training.export import ExportConfig, export_model
    from classifier.training.model import MultiHeadEncoder, load_tokenizer
    from classifier.training.tiny import build_tiny_encoder, build_tiny_tokenizer

    out_dir = Path(out_dir)
    work = out_dir.parent / f".{out_dir.name}-work"
    tokenizer = load_tokenizer(build_tiny_tokenizer(work / "tokenizer.json"), max_length=64)
    encoder = build_tiny_encoder(tokenizer.get_vocab_size(), seed=seed)
    MultiHeadEncoder(encoder, LabelSchema.default(), dropout=0.1).save(
        work / "model", tokenizer=tokenizer, info={"max_length": 64})
    export_model(ExportConfig(model_dir=work / "model", out_dir=out_dir, policy=ROOT / "serving" / "policy.example.yaml",
                              dataset=None, log_to_mlflow=False, pack=False))
    return out_dir


def pick_bundle(given: str | None) -> Path | None:
    """The bundle to load: ``given``, else the first default bundle that exists, else None."""
    if given:
        return Path(given)
    for name in DEFAULT_BUNDLES:
        if (ROOT / name / "manifest.json").is_file():
            return ROOT / name
    return None


# -- the traffic ----------------------------------------------------------------------------------
PROMPTS = (
    "What is the capital of Australia?",
    "hi",
    "Write a haiku about the first snow of winter.",
    "Prove that there are infinitely many primes of the form 4k+3, with every step justified.",
    "Refactor this Python function to stream the file instead of reading it whole: def load(p): return open(p).read()",
    "Please draft a reply to Maria Gonzalez (maria.gonzalez@examplemail.com, +1 415 555 0199) about her refund.",
    "Our deploy fails: AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY what is wrong?",
    "Solve for x: 3x + 7 = 22, and explain each step to a twelve year old.",
    "Résumé en français: le chat est sur la table. 你好，世界。 مرحبا بالعالم 🚀🔥👩‍💻",
    "Tool output:\n\x1b[31mERROR\x1b[0m build failed\x00 at step 3\n\tretrying...",
    "Summarise the following meeting notes into five bullet points. " * 12,
    "x" * 3000,
)


def _body(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


def make_request(rng: random.Random, max_batch: int = 256) -> tuple[str, bytes, int]:
    """(kind, JSON body, the status it must get) for a server whose batch limit is ``max_batch``."""
    roll = rng.random()
    if roll < 0.70:
        return "single", _body({"text": rng.choice(PROMPTS)}), 200
    if roll < 0.85:
        return "batch", _body({"texts": rng.sample(PROMPTS, rng.randint(2, 8))}), 200
    if roll < 0.90:
        return "unclassifiable", _body({"texts": ["", "   ", "\ud800 lone surrogate", "ok"]}), 200
    if roll < 0.93:
        return "invalid_utf8", b'{"text": "caf\xe9 \xff\xfe bytes"}', 200
    if roll < 0.97:
        return "malformed", rng.choice([b'{"text": ', b'{"text": 5}', b'{"texts": [null]}', b'[]', b'{"text": "a", "x": 1}']), 400
    return "oversized_batch", _body({"texts": ["a"] * (max_batch + 1)}), 413


def _check(kind: str, status: int, want: int, payload: bytes) -> str | None:
    """Why an answer is wrong, or None."""
    if status != want:
        return f"{kind}: status {status}, expected {want}: {payload[:200]!r}"
    try:
        doc = json.loads(payload)
    except ValueError:
        return f"{kind}: the answer is not JSON: {payload[:200]!r}"
    if want != 200:
        return None if isinstance(doc, dict) and set(doc) == {"error"} else f"{kind}: not an error document"
    decisions = [doc.get("decision")] if "decision" in doc else doc.get("decisions")
    if not decisions or not all(isinstance(d, dict) and "tier" in d and "flags" in d for d in decisions):
        return f"{kind}: no well-formed decisions in {payload[:200]!r}"
    return None


class _Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies_ms: list[float] = []
        self.kinds: Counter[str] = Counter()
        self.flags: Counter[str] = Counter()
        self.errors = 0
        self.error_samples: list[str] = []

    def record(self, kind: str, latency_ms: float, error: str | None, flags: Sequence[str] = ()) -> None:
        with self.lock:
            self.latencies_ms.append(latency_ms)
            self.kinds[kind] += 1
            self.flags.update(flags)
            if error is not None:
                self.errors += 1
                if len(self.error_samples) < 20:
                    self.error_samples.append(error)


def _flags(payload: bytes) -> list[str]:
    try:
        doc = json.loads(payload)
    except ValueError:
        return []
    decisions = [doc["decision"]] if "decision" in doc else doc.get("decisions") or []
    return [f for d in decisions for f in d.get("flags", ())]


def _worker(port: int, stop_at: float, results: _Results, seed: int, schedule: Any, max_requests: int,
            max_batch: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while True:
            start = time.perf_counter()
            if schedule is not None:
                due = schedule()
                if due is None:
                    return
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                start = due  # open loop: latency from the scheduled send time
            if time.perf_counter() >= stop_at:
                return
            with results.lock:
                if len(results.latencies_ms) >= max_requests:
                    return
            kind, body, want = make_request(rng, max_batch)
            try:
                conn.request("POST", "/v1/route", body, {"content-type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                results.record(kind, (time.perf_counter() - start) * 1e3, f"{kind}: {type(exc).__name__}: {exc}")
                continue
            latency = (time.perf_counter() - start) * 1e3
            error = _check(kind, status, want, payload)
            results.record(kind, latency, error, _flags(payload) if status == 200 else ())
    finally:
        conn.close()


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return float(sorted_values[k])


def _slope_mib_per_min(samples: Sequence[tuple[float, int]]) -> float | None:
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mr = sum(r for _, r in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return None
    cov = sum((t - mt) * (r - mr) for t, r in samples)
    return cov / var * 60.0 / 1024.0


def run_load(port: int, pid: int, *, seconds: float, concurrency: int = 4, rate: float | None = None,
             warmup_s: float = 5.0, sample_s: float = 5.0, max_requests: int = 10_000_000,
             seed: int = 0, max_batch: int = 256) -> dict[str, Any]:
    """Drive the server on ``port`` (process ``pid``, batch limit ``max_batch``) and return the
    measurements."""
    # warm-up: the first requests pay for lazy imports and allocations; not part of the figures
    warm = _Results()
    warm_stop = time.perf_counter() + warmup_s
    threads = [threading.Thread(target=_worker,
                                args=(port, warm_stop, warm, seed + 1000 + i, None, 10_000_000, max_batch))
               for i in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    results = _Results()
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    schedule: Callable[[], float | None] | None = None
    if rate:
        lock = threading.Lock()
        counter = [0]

        def next_due() -> float | None:  # the open-loop send times: t0 + k / rate
            with lock:
                k = counter[0]
                counter[0] += 1
            due = t0 + k / rate
            return None if due >= stop_at else due

        schedule = next_due

    done = threading.Event()

    def sampler() -> None:
        while True:
            value = rss_kib(pid)
            if value is not None:
                samples.append((time.perf_counter() - t0, value))
            if done.wait(sample_s):
                return

    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    threads = [threading.Thread(target=_worker,
                                args=(port, stop_at, results, seed + i, schedule, max_requests, max_batch))
               for i in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    done.set()
    sampler_thread.join()
    final = rss_kib(pid)
    if final is not None:
        samples.append((wall, final))

    lat = sorted(results.latencies_ms)
    rss_start = samples[0][1] if samples else None
    rss_end = samples[-1][1] if samples else None
    return {
        "seconds": round(wall, 1),
        "mode": f"open loop at {rate:g} req/s" if rate else "closed loop",
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": results.errors,
        "error_samples": results.error_samples,
        "warmup_requests": len(warm.latencies_ms),
        "warmup_errors": warm.errors,
        "throughput_rps": round(len(lat) / wall, 1) if wall > 0 else None,
        "requests_by_kind": dict(sorted(results.kinds.items())),
        "decision_flags": dict(sorted(results.flags.items())),
        "latency_ms": {
            "p50": round(_percentile(lat, 50), 3), "p90": round(_percentile(lat, 90), 3),
            "p99": round(_percentile(lat, 99), 3), "max": round(lat[-1], 3) if lat else None,
        },
        "rss_kib": {
            "start": rss_start, "end": rss_end, "max": max((r for _, r in samples), default=None),
            "growth": None if rss_start is None or rss_end is None else rss_end - rss_start,
            "slope_mib_per_min": None if (s := _slope_mib_per_min(samples)) is None else round(s, 3),
            # the first samples include the allocator settling in: the second half shows a leak
            "slope_second_half_mib_per_min":
                None if (s2 := _slope_mib_per_min(samples[len(samples) // 2:])) is None else round(s2, 3),
            "samples": [[round(t, 1), r] for t, r in samples],
        },
    }


def _max_batch(server: ServeProcess) -> int:
    """The served bundle's batch limit, from ``/readyz``."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        doc = json.loads(conn.getresponse().read())
        return int(doc["bundle"]["input_limits"]["max_batch"])
    finally:
        conn.close()


def _audit_args(mode: str, tmp: Path) -> list[str]:
    """``tierwise serve`` flags for an audit log in ``tmp`` (keys and checkpoints in their own folders)."""
    if mode == "off":
        return []
    args = ["--audit-log", str(tmp / "audit" / "audit.jsonl")]
    if mode == "keyed":
        from classifier.serving.audit import generate_key

        args += ["--audit-key", str(generate_key(tmp / "secrets" / "audit.key")),
                 "--prompt-key", str(generate_key(tmp / "secrets" / "prompt.key")),
                 "--audit-checkpoints", str(tmp / "anchor" / "checkpoints.jsonl")]
    return args


# -- CLI ------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=None,
                        help=f"bundle to serve (default: {' or '.join(DEFAULT_BUNDLES)}, else a tiny built one)")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("LOAD_SECONDS", "180")),
                        help="measured duration (default $LOAD_SECONDS or 180)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads / connections (default 4)")
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop at this many requests/s (default: closed loop, as fast as answered)")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="unmeasured warm-up (default 5)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period (default 5)")
    parser.add_argument("--max-requests", type=int, default=10_000_000, help="stop after this many requests")
    parser.add_argument("--max-rss-growth-mib", type=float, default=50.0,
                        help="RSS growth over the run that fails it (default 50 MiB)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report (default {DEFAULT_OUT})")
    parser.add_argument("--audit", choices=("off", "plain", "keyed"), default=os.environ.get("LOAD_AUDIT", "off"),
                        help="serve with an audit log: plain (unkeyed chain) or keyed (HMAC chain, prompt key, "
                             "checkpoints); default $LOAD_AUDIT or off")
    args = parser.parse_args(argv)
    for name in ("seconds", "concurrency", "warmup_s", "sample_s", "max_requests"):
        if not getattr(args, name) > 0 and not (name == "warmup_s" and args.warmup_s == 0):
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.rate is not None and not args.rate > 0:
        parser.error("--rate must be > 0")
    if args.seconds > 3600:
        parser.error("--seconds is bounded to 3600")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="tierwise-load-") as tmp:
        bundle = pick_bundle(args.bundle)
        label = str(bundle) if bundle else "tiny (built for this run)"
        if bundle is None:
            sys.stdout.write("no student bundle found: building a tiny random one\n")
            bundle = build_tiny_bundle(Path(tmp) / "tiny")
        server = ServeProcess(bundle, "--threads", "1", *_audit_args(args.audit, Path(tmp)), log_dir=Path(tmp) / "logs")
        with server:
            if not server.wait_for("/readyz", 200, timeout=120):
                sys.stderr.write(f"the server did not become ready:\n{server.logs()[-4000:]}\n")
                return 1
            mode = f"open loop at {args.rate:g} req/s" if args.rate else "closed loop"
            sys.stdout.write(f"serving {label} at {server.url} (pid {server.pid}); load for {args.seconds:g} s, "
                             f"{args.concurrency} connections, "
                             f"{mode}\n")
            sys.stdout.flush()
            result = run_load(server.port, server.pid, seconds=args.seconds, concurrency=args.concurrency,
                              rate=args.rate, warmup_s=args.warmup_s, sample_s=args.sample_s,
                              max_requests=args.max_requests, max_batch=_max_batch(server))
            alive = server.proc is not None and server.proc.poll() is None
        exit_code = server.proc.returncode if server.proc is not None else None
    growth_mib = (result["rss_kib"]["growth"] or 0) / 1024.0
    result.update({
        "bundle": label,
        "audit": args.audit,
        "server_alive_at_end": alive,
        "server_exit_code": exit_code,  # after our SIGTERM: uvicorn re-raises it once shut down (-15)
        "rss_growth_mib": round(growth_mib, 2),
        "max_rss_growth_mib": args.max_rss_growth_mib,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    })
    ok = result["errors"] == 0 and alive and growth_mib <= args.max_rss_growth_mib
    result["verdict"] = "pass" if ok else "fail"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lat = result["latency_ms"]
    rss = result["rss_kib"]
    sys.stdout.write(
        f"{result['requests']} requests in {result['seconds']} s ({result['throughput_rps']} req/s), "
        f"{result['errors']} errors; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
        f"RSS {rss['start']} -> {rss['end']} KiB ({growth_mib:+.1f} MiB; slope {rss['slope_mib_per_min']} MiB/min, "
        f"second half {rss['slope_second_half_mib_per_min']}); "
        f"{result['verdict']} -> {args.out}\n")
    for sample in result["error_samples"][:5]:
        sys.stdout.write(f"  error: {sample}\n")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
