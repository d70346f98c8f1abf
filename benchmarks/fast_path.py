"""The fast path's quality and speed: student variants, the teacher, and the cascade, in one run.

Writes ``evaluation/bench_fast_path.json`` and prints a Markdown table. Per bundle (each through
the torch-free runtime, calibrated probabilities, exactly what is served), on the ``test``
(template-disjoint) and ``ood`` splits:

- sensitivity: recall of ``pii`` and ``credential`` at argmax and at precision >= 0.95 (the
  best threshold on that split: what the scores can do at that precision);
- tier AUROC and task macro-F1;
- latency of ``route`` (tokenising, inference, calibration and the policy decision) on ~120-token
  prompts of the test/ood splits, one prompt per call, 1 thread: p50, p99, mean.

The cascade (a student bundle with ``cascade.json``, see ``classifier/serving/cascade.py``) is
measured the same way: its escalation share per split, its recall at precision >= 0.95 on the
composite score (``cascade.composite_scores``), the recall and precision of its actual gate
decisions at the shipped thresholds, and route latency (p50, p99, mean) with the share of the
timed prompts that escalated, plus the mean expected on each split's own mix.

What it leaves out: detectors (measured by their own bench once they are in the runtime), HTTP,
and memory (``make bench``). It asserts nothing: the goals are compared in the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.fast_path")
MIN_PRECISION = 0.95
SPLITS = ("test", "ood")


def _prompts(tokenizer_path: Path, frame, n_tokens: int = 120, count: int = 200) -> list[str]:
    """Prompts of the test/ood splits whose length is within 5% of ``n_tokens`` (specials included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_truncation()
    tok.no_padding()
    picked = []
    for t in frame[frame["split"].isin(SPLITS)]["text"].tolist():
        if abs(len(tok.encode(t).ids) - n_tokens) <= max(2, n_tokens // 20):
            picked.append(t)
            if len(picked) >= count:
                break
    return picked


def _probs(router, texts: list[str], desc: str) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    parts = [router.predict_proba(texts[i:i + 256])
             for i in tqdm(range(0, len(texts), 256), desc=desc, leave=False, disable=len(texts) <= 256)]
    return {h: np.concatenate([p[h] for p in parts]) for h in router.head_names}


def _quality(schema, frame, probs: dict[str, np.ndarray]) -> dict[str, float | None]:
    from classifier.evaluation.metrics import evaluate_heads, recall_at_precision

    m = evaluate_heads(schema, frame, probs)
    sens = schema.head("sensitivity")
    y = frame[sens.column].to_numpy()
    labelled = frame[sens.column].notna().to_numpy()
    out: dict[str, float | None] = {
        "tier_auroc": m.get("tier", {}).get("auroc"),
        "task_macro_f1": m.get("task", {}).get("macro_f1"),
    }
    for cls in ("pii", "credential"):
        out[f"{cls}_recall_argmax"] = m.get("sensitivity", {}).get(f"recall_{cls}")
        r, _ = recall_at_precision(y[labelled] == cls, probs["sensitivity"][labelled, sens.index(cls)], MIN_PRECISION)
        out[f"{cls}_recall_at_p95"] = None if np.isnan(r) else r
    return out


def _latency(fn, prompts: list[str], repeats: int) -> dict[str, float]:
    for p in prompts[:20]:  # warm-up
        fn(p)
    times = np.empty(repeats)
    for i in range(repeats):
        p = prompts[i % len(prompts)]
        t = time.perf_counter()
        fn(p)
        times[i] = time.perf_counter() - t
    ms = times * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4), "n_calls": repeats}


def bench_bundle(name: str, path: str, splits: dict, prompts: list[str], repeats: int,
                 timed: bool = True) -> tuple[dict, dict]:
    from classifier.serving.runtime import Router

    with Router.load(path, threads=1) as router:
        probs = {s: _probs(router, f["text"].tolist(), f"{name} ({s})") for s, f in splits.items()}
        row = {"name": name, "bundle": path, "kind": router.manifest.kind,
               "quantization": router.manifest.quantization,
               "splits": {s: _quality(router.schema, f, probs[s]) for s, f in splits.items()}}
        if timed:
            row["latency_120_tokens"] = _latency(router.route, prompts, repeats)
    return row, probs


def bench_cascade(path: str, strong: str | None, splits: dict, prompts: list[str], repeats: int,
                  fast_probs: dict | None = None) -> dict:
    from classifier.evaluation.metrics import recall_at_precision
    from classifier.serving.cascade import FLAG_ESCALATED, Cascade, composite_scores

    with Cascade.load(path, strong, threads=1) as cascade:
        head = cascade.head
        sens = cascade.fast.schema.head(head)
        out: dict = {"name": "cascade", "bundle": path, "strong": str(cascade.strong.source),
                     "bands": cascade.spec.to_dict()["bands"], "fit": cascade.spec.fit, "splits": {}}
        fast_thr = cascade.fast.policy.sensitivity_thresholds
        strong_thr = cascade.strong.policy.sensitivity_thresholds
        for s, f in splits.items():
            fp = fast_probs[s] if fast_probs and s in fast_probs else _probs(cascade.fast, f["text"].tolist(), f"fast ({s})")
            esc = cascade.escalation_mask(fp)
            sp = np.zeros_like(fp[head])
            if esc.any():
                sp[esc] = _probs(cascade.strong, [f["text"].iloc[i] for i in np.flatnonzero(esc)], f"strong ({s})")[head]
            y = f[sens.column].to_numpy()
            labelled = f[sens.column].notna().to_numpy()
            res: dict = {"share_escalated": float(esc.mean()), "n": len(f)}
            for cls, band in cascade.spec.bands.items():
                k = sens.index(cls)
                comp = composite_scores(fp[head][:, k], sp[:, k], esc, band)
                res[f"{cls}_recall_at_p95"] = recall_at_precision(y[labelled] == cls, comp[labelled], MIN_PRECISION)[0]
                flag = np.where(esc, sp[:, k] >= strong_thr.get(cls, 0.5), fp[head][:, k] >= fast_thr.get(cls, 0.5))
                pos = labelled & (y == cls)
                res[f"{cls}_gate_recall"] = float(flag[pos].mean()) if pos.any() else None
                res[f"{cls}_gate_precision"] = float(pos[flag & labelled].mean()) if (flag & labelled).any() else None
            out["splits"][s] = res
        # timed: one prompt per call through Cascade.route, as served
        n_esc = [0]

        def call(p: str) -> None:
            d = cascade.route(p)
            n_esc[0] += FLAG_ESCALATED in d.flags

        lat = _latency(call, prompts, repeats)
        lat["share_escalated"] = n_esc[0] / (repeats + min(20, len(prompts)))
        strong_lat = _latency(cascade.strong.route, prompts, max(50, repeats // 10))
        fast_lat = _latency(cascade.fast.route, prompts, repeats)
        lat["strong_mean_ms"] = strong_lat["mean_ms"]
        lat["fast_mean_ms"] = fast_lat["mean_ms"]
        for res in out["splits"].values():
            res["expected_mean_ms_120_tokens"] = round(fast_lat["mean_ms"] + res["share_escalated"] * strong_lat["mean_ms"], 4)
        out["latency_120_tokens"] = lat
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def table(result: dict) -> str:
    lines = ["| option | split | pii argmax / @P.95 | credential argmax / @P.95 | tier AUROC | task macro-F1 | "
             "p50 / p99 / mean ms (120 tok) |", "|---|---|---|---|---|---|---|"]
    for row in result["bundles"]:
        lat = row.get("latency_120_tokens", {})
        for s, q in row["splits"].items():
            lines.append(f"| {row['name']} | {s} | {_fmt(q['pii_recall_argmax'])} / {_fmt(q['pii_recall_at_p95'])} | "
                         f"{_fmt(q['credential_recall_argmax'])} / {_fmt(q['credential_recall_at_p95'])} | "
                         f"{_fmt(q['tier_auroc'])} | {_fmt(q['task_macro_f1'])} | "
                         f"{_fmt(lat.get('p50_ms'))} / {_fmt(lat.get('p99_ms'))} / {_fmt(lat.get('mean_ms'))} |")
    c = result.get("cascade")
    if c:
        lat = c["latency_120_tokens"]
        for s, q in c["splits"].items():
            lines.append(f"| cascade (escalated {q['share_escalated']:.1%}, gate recall pii {_fmt(q['pii_gate_recall'])}, "
                         f"cred {_fmt(q.get('credential_gate_recall'))}) | {s} | - / {_fmt(q.get('pii_recall_at_p95'))} | "
                         f"- / {_fmt(q.get('credential_recall_at_p95'))} | (student) | (student) | "
                         f"{_fmt(lat['p50_ms'])} / {_fmt(lat['p99_ms'])} / {_fmt(lat['mean_ms'])} "
                         f"(timed share {lat['share_escalated']:.1%}; mix mean {_fmt(q['expected_mean_ms_120_tokens'])}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", action="append", default=[], metavar="NAME=BUNDLE",
                        help="a student bundle to measure (repeatable)")
    parser.add_argument("--teacher", default=None, metavar="BUNDLE", help="teacher bundle measured alongside (e.g. int8)")
    parser.add_argument("--cascade", default=None, metavar="BUNDLE", help="student bundle with cascade.json")
    parser.add_argument("--strong", default=None, help="escalation bundle (default: the one cascade.json names)")
    parser.add_argument("--data", default=str(ROOT / "data" / "build"))
    parser.add_argument("--out", default=str(ROOT / "evaluation" / "bench_fast_path.json"))
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=None, help="at most this many rows per split (seeded)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    data = Path(args.data)
    frame = pd.read_parquet(data / "dataset.parquet" if data.is_dir() else data)
    splits = {}
    for s in SPLITS:
        part = frame[frame["split"] == s]
        if args.limit and len(part) > args.limit:
            part = part.sample(n=args.limit, random_state=0)
        splits[s] = part.reset_index(drop=True)
    students = [tuple(s.split("=", 1)) if "=" in s else (Path(s).name, s) for s in args.student]
    if not students and not args.cascade:
        parser.error("give at least one --student NAME=BUNDLE or --cascade BUNDLE")
    tok_path = Path(students[0][1] if students else args.cascade) / "tokenizer.json"
    prompts = _prompts(tok_path, frame)
    result: dict = {"meta": {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                             "threads": 1, "min_precision": MIN_PRECISION, "n_timed_prompts": len(prompts),
                             "split_rows": {s: len(f) for s, f in splits.items()}, "limit": args.limit},
                    "bundles": []}
    cached: dict = {}
    for name, path in students:
        row, probs = bench_bundle(name, path, splits, prompts, args.repeats)
        result["bundles"].append(row)
        cached[str(Path(path).resolve())] = probs
        log.info("%s: %s", name, json.dumps(row["splits"]))
    if args.teacher:
        row, _ = bench_bundle("teacher", args.teacher, splits, prompts, max(100, args.repeats // 10))
        result["bundles"].append(row)
    if args.cascade:
        result["cascade"] = bench_cascade(args.cascade, args.strong, splits, prompts, args.repeats,
                                          cached.get(str(Path(args.cascade).resolve())))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(table(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
