"""Outcome feedback: the outcome record, joining decisions + prompts + outcomes into training rows.

**Outcome record** (one JSON object per line, what a team's evaluation writes back)::

    {"request_id": "r-17",              # or "prompt_sha256": "<64 hex>" (sha256 of the UTF-8 prompt)
     "tier": "cheap",                   # tier that answered (or "model": "<model name>", mapped by --tiers)
     "success": 1,                      # 0/1, or "score": 0.0..1.0 (judge score, tests passed share)
     "shadow": false,                   # optional: a shadow call on the other tier (not served)
     "cost_usd": 0.0004, "input_tokens": 812, "output_tokens": 120}   # optional

**Decision logs**: the audit log (``tierwise serve --audit-log``: ``request_id``, ``prompt_sha256``,
the decision, optionally the prompt) and ``tierwise route --output`` files (``id``, the decision).
A decision's ``exploration`` entry (``classifier.serving.exploration``; in an audit log under
``extra.exploration``, written by ``AuditLog.append(..., exploration=decision.exploration)``) gives
the propensity of the tier it chose; without one the propensity is 1 (no exploration: no counterfactual to weigh).

**Prompt store**: JSONL/CSV/Parquet with ``text`` and ``id`` (or ``request_id``) columns: the texts
of the prompts a log names only by hash or id.

``join_feedback`` produces **training rows** for ``tierwise adapt``: ``text``, ``request_id``,
``cheap_correct`` / ``frontier_correct`` (the outcome of the tier that answered; the other is null
unless a shadow call scored it), ``tier_served``, ``propensity`` and ``weight`` = 1/propensity
(inverse-propensity weighting; ``weight_cap`` bounds it). Every row that cannot be joined
is reported as a ``RejectedRow`` (file, row, reason, hint), like ``tierwise data validate``; the
good rows are kept. ``load_training_rows`` reads and checks a training-row file for ``adapt``.

Left out: fetching outcomes from anywhere (teams export them), and the doubly robust estimator
(``adapt`` uses inverse-propensity weights; a DR variant would add the base model's prediction
for the unobserved tier).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.data.validation import RejectedRow, write_rejects
from classifier.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "FEEDBACK_HINTS",
    "JoinResult",
    "add_join_arguments",
    "join_feedback",
    "load_training_rows",
    "run_join",
]

# problem kind -> how to fix it (feedback problems; data-set problems are in validation.REJECT_KINDS)
FEEDBACK_HINTS: dict[str, str] = {
    "malformed_json": "make the line one JSON object",
    "missing_key": "give the outcome a 'request_id' or a 'prompt_sha256' of the prompt",
    "unknown_request": "the id/hash is in no decision log given; pass the log that routed it (--decisions)",
    "no_prompt": "the prompt text is neither in the log (store_text) nor in the prompt store (--prompts)",
    "bad_outcome": "give 'success' as 0/1 or 'score' as a number in [0, 1]",
    "unknown_tier": "give 'tier' as one of the policy's tiers, or map the model with --tiers MODEL=TIER",
    "bad_propensity": "the decision's exploration.propensity must be a number in (0, 1]",
    "duplicate": "one outcome per request and tier; later duplicates are dropped",
    "missing_text": "give the row a non-empty 'text' string",
    "bad_weight": "give 'weight' as a finite number > 0",
}


def _reject(file: str, row: int, kind: str, reason: str, raw: Any, field_: str | None = None,
            unit: str = "line") -> RejectedRow:
    return RejectedRow(file=file, row=row, field=field_, reason=reason, raw=raw, kind=kind,
                       hint=FEEDBACK_HINTS[kind], unit=unit)


def _read_jsonl(path: Path, rejects: list[RejectedRow]) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    out = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rejects.append(_reject(str(path), lineno, "malformed_json", f"malformed JSON: {exc.msg}", line.strip()))
                continue
            if not isinstance(obj, dict):
                rejects.append(_reject(str(path), lineno, "malformed_json", "line is not a JSON object", obj))
                continue
            out.append((lineno, obj))
    return out


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=True)
    raise DataError(f"{path}: use a .parquet, .csv or .jsonl file")


# -- training rows (input of tierwise adapt) -------------------------------------------------------
def load_training_rows(path: str | Path, *, rejects_path: str | Path | None = None) -> pd.DataFrame:
    """Read training rows for ``adapt`` and check them; bad rows are dropped and reported.

    Required: ``text`` (non-empty) and ``cheap_correct`` in [0, 1]; optional ``frontier_correct``
    in [0, 1], ``weight`` > 0, ``tier``, ``task``, ``group``, cost columns. Raises ``DataError``
    when no row is usable.
    """
    path = Path(path)
    frame = _read_table(path)
    if "text" not in frame.columns or "cheap_correct" not in frame.columns:
        raise DataError(f"{path}: training rows need 'text' and 'cheap_correct' columns "
                        f"(got {sorted(map(str, frame.columns))}); 'tierwise feedback join' writes them")
    rejects: list[RejectedRow] = []
    keep = np.ones(len(frame), dtype=bool)
    cheap = pd.to_numeric(frame["cheap_correct"], errors="coerce").to_numpy(dtype=np.float64)
    # a request only the strong tier answered says nothing about the cheap tier: skipped, not bad
    unobserved = frame["cheap_correct"].isna().to_numpy()
    if unobserved.any():
        logger.info("%d row(s) without a cheap-tier outcome skipped (no counterfactual)", int(unobserved.sum()))
    front = (pd.to_numeric(frame["frontier_correct"], errors="coerce").to_numpy(dtype=np.float64)
             if "frontier_correct" in frame.columns else None)
    weight = (pd.to_numeric(frame["weight"], errors="coerce").to_numpy(dtype=np.float64)
              if "weight" in frame.columns else None)
    for i, text in enumerate(frame["text"].tolist()):
        problem = None
        if unobserved[i]:
            keep[i] = False
            continue
        if not isinstance(text, str) or not text.strip():
            problem = ("missing_text", "text", "text is missing or empty")
        elif not (np.isfinite(cheap[i]) and 0 <= cheap[i] <= 1):
            problem = ("bad_outcome", "cheap_correct", f"cheap_correct {frame['cheap_correct'].iloc[i]!r} is not in [0, 1]")
        elif front is not None and not (np.isnan(front[i]) or 0 <= front[i] <= 1):
            problem = ("bad_outcome", "frontier_correct", f"frontier_correct {front[i]!r} is not in [0, 1]")
        elif weight is not None and not (np.isfinite(weight[i]) and weight[i] > 0):
            problem = ("bad_weight", "weight", f"weight {frame['weight'].iloc[i]!r} is not a finite number > 0")
        if problem is not None:
            keep[i] = False
            rejects.append(_reject(str(path), i, problem[0], problem[2], None, problem[1], unit="index"))
    if rejects:
        for r in rejects[:5]:
            logger.warning("%s", r)
        logger.warning("%d of %d training rows rejected", len(rejects), len(frame))
        if rejects_path is not None:
            write_rejects(rejects_path, rejects)
    out = frame[keep].reset_index(drop=True)
    out["cheap_correct"] = cheap[keep]
    if front is not None:
        out["frontier_correct"] = front[keep]
    if out.empty:
        raise DataError(f"{path}: no usable training rows ({len(rejects)} rejected; first: {rejects[0] if rejects else '-'})")
    return out


# -- join ---------------------------------------------------------------------------------------
@dataclass
class JoinResult:
    rows: pd.DataFrame
    rejects: list[RejectedRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _decisions(paths: Sequence[Path], rejects: list[RejectedRow]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Decision records by request id and by prompt hash (audit log lines or route --output lines)."""
    by_id: dict[str, dict[str, Any]] = {}
    by_hash: dict[str, dict[str, Any]] = {}
    for path in paths:
        for lineno, obj in _read_jsonl(path, rejects):
            decision = dict(obj.get("decision") if isinstance(obj.get("decision"), dict) else obj)
            extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
            if "exploration" not in decision and isinstance(extra.get("exploration"), dict):
                decision["exploration"] = extra["exploration"]  # audit logs keep it under extra
            rec = {"file": str(path), "line": lineno, "decision": decision,
                   "prompt": obj.get("prompt") if isinstance(obj.get("prompt"), str) else None,
                   "prompt_sha256": obj.get("prompt_sha256")}
            rid = obj.get("request_id", obj.get("id"))
            if rid is not None:
                by_id[str(rid)] = rec
            if isinstance(rec["prompt_sha256"], str):
                by_hash[rec["prompt_sha256"]] = rec
    return by_id, by_hash


def _prompts(path: Path | None) -> tuple[dict[str, str], dict[str, str]]:
    from classifier.serving.audit import prompt_sha256

    if path is None:
        return {}, {}
    frame = _read_table(path)
    if "text" not in frame.columns:
        raise DataError(f"{path}: the prompt store needs a 'text' column")
    id_col = next((c for c in ("request_id", "id") if c in frame.columns), None)
    by_id: dict[str, str] = {}
    by_hash: dict[str, str] = {}
    for i, text in enumerate(frame["text"].tolist()):
        if not isinstance(text, str):
            continue
        by_hash[prompt_sha256(text)] = text
        if id_col is not None and frame[id_col].iloc[i] is not None:
            by_id[str(frame[id_col].iloc[i])] = text
    return by_id, by_hash


def _score(obj: Mapping[str, Any]) -> float | None:
    for key in ("score", "success"):
        if key in obj and obj[key] is not None:
            v = obj[key]
            if isinstance(v, bool):
                return float(v)
            if isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1:
                return float(v)
            return None
    return None


def join_feedback(outcomes: Sequence[str | Path], decisions: Sequence[str | Path], *,
                  prompts: str | Path | None = None, tiers: Sequence[str] = ("cheap", "frontier"),
                  model_tiers: Mapping[str, str] | None = None, weight_cap: float = 50.0) -> JoinResult:
    """Join outcomes with the decisions that routed them and the prompt texts (module docstring).

    ``tiers``: (cheap tier name, strong tier name). One training row per request; an outcome of
    the other tier (shadow call) fills the other column of the same row.
    """
    if len(tiers) != 2:
        raise ConfigError("tiers must be (cheap tier, strong tier)")
    if not weight_cap >= 1:
        raise ConfigError(f"weight_cap must be >= 1, got {weight_cap}")
    cheap_tier, strong_tier = tiers
    model_tiers = dict(model_tiers or {})
    rejects: list[RejectedRow] = []
    by_id, by_hash = _decisions([Path(p) for p in decisions], rejects)
    p_by_id, p_by_hash = _prompts(Path(prompts) if prompts is not None else None)
    rows: dict[str, dict[str, Any]] = {}
    n_outcomes = 0
    for path in map(Path, outcomes):
        for lineno, obj in _read_jsonl(path, rejects):
            n_outcomes += 1
            where = (str(path), lineno)
            rid, digest = obj.get("request_id"), obj.get("prompt_sha256")
            if rid is None and not isinstance(digest, str):
                rejects.append(_reject(*where, "missing_key", "outcome has neither request_id nor prompt_sha256", obj))
                continue
            rec = by_id.get(str(rid)) if rid is not None else by_hash.get(digest)
            if rec is None:
                rejects.append(_reject(*where, "unknown_request",
                                       f"request {rid if rid is not None else digest!r} is in no decision log", obj))
                continue
            digest = digest or rec.get("prompt_sha256")
            text = rec.get("prompt") or (p_by_id.get(str(rid)) if rid is not None else None) or \
                (p_by_hash.get(digest) if isinstance(digest, str) else None)
            if text is None:
                rejects.append(_reject(*where, "no_prompt", f"no prompt text for request {rid or digest!r}", obj))
                continue
            score = _score(obj)
            if score is None:
                rejects.append(_reject(*where, "bad_outcome", f"success/score {obj.get('score', obj.get('success'))!r} "
                                       "is not 0/1 or a number in [0, 1]", obj, "success"))
                continue
            tier = obj.get("tier") or model_tiers.get(str(obj.get("model")))
            if tier not in (cheap_tier, strong_tier):
                rejects.append(_reject(*where, "unknown_tier", f"tier {tier!r} (model {obj.get('model')!r}) is not "
                                       f"{cheap_tier!r} or {strong_tier!r}", obj, "tier"))
                continue
            decision = rec["decision"] or {}
            explo = decision.get("exploration") if isinstance(decision.get("exploration"), dict) else None
            served = decision.get("tier")
            shadow = bool(obj.get("shadow", False))
            # propensity of observing THIS tier's outcome: the decision's probability of sending it there
            if explo is not None:
                prop = explo.get("propensities", {}).get(tier) if isinstance(explo.get("propensities"), dict) else None
                prop = explo.get("propensity") if prop is None and tier == served else prop
            else:
                prop = 1.0
            if not isinstance(prop, (int, float)) or isinstance(prop, bool) or not (0 < prop <= 1):
                rejects.append(_reject(*where, "bad_propensity", f"propensity {prop!r} of tier {tier!r}", obj))
                continue
            key = str(rid) if rid is not None else str(digest)
            row = rows.setdefault(key, {"request_id": key, "text": text, "prompt_sha256": digest,
                                        "tier_served": served, "cheap_correct": None, "frontier_correct": None,
                                        "propensity_cheap": None, "propensity_frontier": None, "shadow": False})
            col = "cheap_correct" if tier == cheap_tier else "frontier_correct"
            if row[col] is not None:
                rejects.append(_reject(*where, "duplicate", f"second outcome for request {key!r} tier {tier!r}", obj))
                continue
            row[col] = score
            row["propensity_" + ("cheap" if tier == cheap_tier else "frontier")] = float(prop)
            row["shadow"] = row["shadow"] or shadow
            for extra in ("cost_usd", "input_tokens", "output_tokens"):
                if extra in obj:
                    row[f"{extra}_{'cheap' if tier == cheap_tier else 'frontier'}"] = obj[extra]
    frame = pd.DataFrame(list(rows.values()))
    if not frame.empty:
        pc = pd.to_numeric(frame["propensity_cheap"], errors="coerce")
        frame["weight"] = np.minimum(1.0 / pc, weight_cap)  # rows without a cheap outcome: NaN (not trainable)
    counts = {"outcomes": n_outcomes, "rows": int(len(frame)), "rejected": len(rejects),
              "with_cheap_outcome": int(frame["cheap_correct"].notna().sum()) if len(frame) else 0}
    return JoinResult(frame, rejects, counts)


# -- CLI ------------------------------------------------------------------------------------------
def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outcomes", action="append", required=True, help="outcome JSONL file (repeatable)")
    parser.add_argument("--decisions", action="append", required=True,
                        help="audit log or 'tierwise route --output' JSONL (repeatable)")
    parser.add_argument("--prompts", default=None, help="prompt store (.jsonl/.csv/.parquet with text and id)")
    parser.add_argument("--tiers", action="append", default=[], metavar="MODEL=TIER",
                        help="map a model name in outcomes to a tier (repeatable)")
    parser.add_argument("--cheap-tier", default="cheap", help="name of the cheap tier (default cheap)")
    parser.add_argument("--strong-tier", default="frontier", help="name of the strong tier (default frontier)")
    parser.add_argument("--weight-cap", type=float, default=50.0, help="largest inverse-propensity weight (50)")
    parser.add_argument("--out", required=True, help="training rows (.parquet or .jsonl)")
    parser.add_argument("--rejects", default=None, help="rejected rows JSONL (default: <out>.rejects.jsonl)")


def run_join(args: argparse.Namespace) -> int:
    mapping = {}
    for spec in args.tiers:
        model, sep, tier = spec.partition("=")
        if not sep or not model or not tier:
            raise ConfigError(f"--tiers {spec!r}: write MODEL=TIER")
        mapping[model] = tier
    result = join_feedback(args.outcomes, args.decisions, prompts=args.prompts,
                           tiers=(args.cheap_tier, args.strong_tier), model_tiers=mapping, weight_cap=args.weight_cap)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        result.rows.to_parquet(out, index=False)
    else:
        result.rows.to_json(out, orient="records", lines=True, force_ascii=False)
    rejects_path = Path(args.rejects) if args.rejects else out.with_name(out.name + ".rejects.jsonl")
    if result.rejects:
        write_rejects(rejects_path, result.rejects)
    lines = [f"joined {result.counts['outcomes']} outcome(s) into {result.counts['rows']} training row(s) "
             f"({result.counts['with_cheap_outcome']} with a cheap-tier outcome) -> {out}"]
    if result.rejects:
        lines.append(f"{len(result.rejects)} rejected -> {rejects_path}; first:")
        lines += [f"  {r}" for r in result.rejects[:5]]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
