"""False flags on real traffic: route the held-out real user prompts and list every one that a
sensitivity gate (model threshold or detector) flags, so a person can read each.

The set is ``data/build/eval/real_traffic.parquet`` (``tierwise data build``; arena-hard, RouterArena
and BFCL live user turns, never trained on). Every prompt is labelled ``none`` by construction,
but real users do paste personal data: a flagged prompt is a *false* flag only when a reader finds
no personal data or credential in it. Readers' verdicts live in a review file (prompt id ->
``sensitive`` | ``benign`` and a note; ids only, never text), so the measured rate is

    false-flag rate = flagged prompts judged benign (or not yet reviewed) / all prompts

An unreviewed flag counts as false: the number can only improve by reading, never by omission.

Leaves out: tier/task quality on this set (it has no outcomes); the long-prompt and position
evaluations (``long_prompts``); writing the review file (a person does that).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classifier.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_SET = Path("data/build/eval/real_traffic.parquet")
DEFAULT_REVIEW = Path("evaluation/real_traffic_review.json")
VERDICTS = ("sensitive", "benign")


def flagged_classes(decision: Any, gate_classes: Sequence[str], head: str) -> tuple[list[str], list[str]]:
    """(classes flagged by the model at the policy's thresholds, detector rule names) of one decision."""
    d = decision.to_dict()
    probs = d["probabilities"].get(head, {})
    thresholds = (d.get("thresholds") or {}).get("sensitivity") or {}
    by_model = [c for c in gate_classes if c in probs and c in thresholds and probs[c] >= float(thresholds[c])]
    rules = [h.get("rule", "") for h in d.get("detections") or []]
    return by_model, rules


def load_review(path: Path | None) -> dict[str, dict[str, str]]:
    """The readers' verdicts: ``{id: {"verdict": "sensitive"|"benign", "note": str}}``."""
    if path is None or not Path(path).is_file():
        return {}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for key, value in data.items():
        if not isinstance(value, Mapping) or value.get("verdict") not in VERDICTS:
            raise DataError(f"{path}: entry {key!r} needs a 'verdict' of {list(VERDICTS)}, got {value!r}")
    return {str(k): dict(v) for k, v in data.items()}


def evaluate(router: Any, rows: Sequence[Mapping[str, Any]], review: Mapping[str, Mapping[str, str]] | None = None,
             *, batch: int = 64, progress: bool = True) -> dict[str, Any]:
    """Route every row and summarise the flags; see the module docstring."""
    from tqdm.auto import tqdm

    review = review or {}
    head = router.policy.sensitivity_head
    schema_head = router.schema.head(head)
    gates = [c for c in schema_head.classes if c != schema_head.negative_class]
    flagged: list[dict[str, Any]] = []
    by_source: Counter = Counter()
    for start in tqdm(range(0, len(rows), batch), desc="real traffic", unit="batch", disable=not progress):
        chunk = rows[start:start + batch]
        for row, decision in zip(chunk, router.route([r["text"] for r in chunk]), strict=True):
            by_source[row["source"]] += 1
            model, rules = flagged_classes(decision, gates, head)
            if not model and not rules:
                continue
            verdict = review.get(row["id"], {})
            flagged.append({
                "id": row["id"], "source": row["source"], "model_classes": model, "detectors": rules,
                "p": {c: round(decision.probabilities.get(head, {}).get(c, 0.0), 4) for c in gates},
                "rule": decision.rule, "verdict": verdict.get("verdict", "unreviewed"), "note": verdict.get("note", ""),
                "preview": row["text"][:240].replace("\n", " "),
            })
    n = len(rows)
    false = [f for f in flagged if f["verdict"] != "sensitive"]
    return {
        "n": n, "by_source": dict(by_source), "flagged": len(flagged),
        "flagged_share": len(flagged) / n if n else 0.0,
        "false_flags": len(false), "false_flag_rate": len(false) / n if n else 0.0,
        "unreviewed": sum(f["verdict"] == "unreviewed" for f in flagged),
        "by_class": dict(Counter(c for f in flagged for c in f["model_classes"])),
        "by_detector": dict(Counter(r for f in flagged for r in f["detectors"])),
        "items": flagged,
    }


def add_real_traffic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle directory or .tar.gz")
    parser.add_argument("--data", default=str(DEFAULT_SET), help="held-out real prompts (id, text, source)")
    parser.add_argument("--review", default=str(DEFAULT_REVIEW), help="readers' verdicts (JSON, ids only)")
    parser.add_argument("--out", default="evaluation/real_traffic.json", help="summary + every flagged prompt")
    parser.add_argument("--limit", type=int, default=None, help="route only the first N prompts")


def run_real_traffic(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from classifier.serving.runtime import Router

    path = Path(args.data)
    if not path.is_file():
        raise DataError(f"{path} does not exist: run `tierwise data build` first (it writes the held-out set)")
    rows = pq.read_table(path).to_pylist()[: args.limit]
    with Router.load(args.bundle, threads=2) as router:
        result = evaluate(router, rows, load_review(Path(args.review)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.stdout.write(
        f"{result['n']} real prompts: {result['flagged']} flagged ({result['flagged_share']:.2%}), "
        f"{result['false_flags']} not judged sensitive by a reader ({result['false_flag_rate']:.2%}; "
        f"{result['unreviewed']} unreviewed). By class {result['by_class']}, by detector {result['by_detector']}. "
        f"Every flagged prompt: {out}\n"
    )
    return 0
