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

``feedback join --engine ray`` runs the same join on a Ray cluster (``classifier.scale.feedback``);
both call the per-record functions below (``parse_line``, ``decision_record``, ``prompt_entry``,
``resolve_outcome``, ``add_outcome``), so they agree row for row and reject for reject.

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
from collections.abc import Callable, Mapping, Sequence
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
            obj, rejected = parse_line(line, str(path), lineno)
            if rejected is not None:
                rejects.append(rejected)
            elif obj is not None:
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
# The join is written as per-record functions (``parse_line``, ``decision_record``, ``prompt_entry``,
# ``resolve_outcome``, ``add_outcome``, ``training_frame``) that this in-process loop and the Ray
# engine (``classifier.scale.feedback``, the same rules on hash partitions) both call.
@dataclass
class JoinResult:
    rows: pd.DataFrame
    rejects: list[RejectedRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def parse_line(line: str, file: str, lineno: int) -> tuple[dict[str, Any] | None, RejectedRow | None]:
    """One JSONL line: ``(object, None)``, ``(None, reject)``, or ``(None, None)`` for a blank line."""
    if not line.strip():
        return None, None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, _reject(file, lineno, "malformed_json", f"malformed JSON: {exc.msg}", line.strip())
    if not isinstance(obj, dict):
        return None, _reject(file, lineno, "malformed_json", "line is not a JSON object", obj)
    return obj, None


def decision_record(obj: Mapping[str, Any], file: str, lineno: int) -> tuple[str | None, str | None, dict[str, Any]]:
    """``(request id, prompt hash, record)`` of one decision log line (audit log or route output);
    a later record of the same id or hash replaces an earlier one."""
    decision = dict(obj.get("decision") if isinstance(obj.get("decision"), dict) else obj)
    extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
    if "exploration" not in decision and isinstance(extra.get("exploration"), dict):
        decision["exploration"] = extra["exploration"]  # audit logs keep it under extra
    rec = {"file": file, "line": lineno, "decision": decision,
           "prompt": obj.get("prompt") if isinstance(obj.get("prompt"), str) else None,
           "prompt_sha256": obj.get("prompt_sha256")}
    rid = obj.get("request_id", obj.get("id"))
    digest = rec["prompt_sha256"] if isinstance(rec["prompt_sha256"], str) else None
    return (None if rid is None else str(rid)), digest, rec


def prompt_entry(rec: Mapping[str, Any]) -> tuple[str | None, str, str] | None:
    """``(id, sha256 of the text, text)`` of one prompt store record (id: ``request_id``, else
    ``id``); None when its ``text`` is not a string. A later entry replaces an earlier one."""
    from classifier.serving.audit import prompt_sha256

    text = rec.get("text")
    if not isinstance(text, str):
        return None
    rid = rec.get("request_id")
    rid = rec.get("id") if rid is None else rid
    return (None if rid is None else str(rid)), prompt_sha256(text), text


def _store_records(path: Path) -> list[dict[str, Any]]:
    """The prompt store as records: JSON values as written (a JSONL line, a Parquet row), so that
    an id ``"007"`` stays ``"007"`` and a null id stays null (pandas' dtype inference would make
    them ``7.0`` and ``nan``); CSV cells as pandas reads them, empty cells as null."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if suffix in (".jsonl", ".json"):
        return [obj for _, obj in _read_jsonl(path, [])]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        frame = pd.read_csv(path)
        return frame.astype(object).where(frame.notna(), None).to_dict("records")
    raise DataError(f"{path}: use a .parquet, .csv or .jsonl file")


def _decisions(paths: Sequence[Path], rejects: list[RejectedRow]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Decision records by request id and by prompt hash (audit log lines or route --output lines)."""
    by_id: dict[str, dict[str, Any]] = {}
    by_hash: dict[str, dict[str, Any]] = {}
    for path in paths:
        for lineno, obj in _read_jsonl(path, rejects):
            rid, digest, rec = decision_record(obj, str(path), lineno)
            if rid is not None:
                by_id[rid] = rec
            if digest is not None:
                by_hash[digest] = rec
    return by_id, by_hash


def _prompts(path: Path | None) -> tuple[dict[str, str], dict[str, str]]:
    if path is None:
        return {}, {}
    by_id: dict[str, str] = {}
    by_hash: dict[str, str] = {}
    for rec in _store_records(path):
        entry = prompt_entry(rec)
        if entry is not None:
            rid, digest, text = entry
            by_hash[digest] = text
            if rid is not None:
                by_id[rid] = text
    if not by_hash:
        raise DataError(f"{path}: the prompt store has no row with a 'text' string")
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


def outcome_lookup_key(obj: Mapping[str, Any]) -> str | None:
    """The key an outcome is looked up by: ``i:<request id>``, else ``h:<prompt hash>`` (None: neither)."""
    rid, digest = obj.get("request_id"), obj.get("prompt_sha256")
    if rid is not None:
        return f"i:{rid}"
    return f"h:{digest}" if isinstance(digest, str) else None


def resolve_outcome(obj: Mapping[str, Any], where: tuple[str, int], decision: Callable[[str], dict[str, Any] | None],
                    prompt_by_id: Callable[[str], str | None], prompt_by_hash: Callable[[str], str | None], *,
                    tiers: Sequence[str], model_tiers: Mapping[str, str]) -> tuple[dict[str, Any] | None, RejectedRow | None]:
    """One outcome against its decision (``decision(outcome_lookup_key)``) and prompt text: the
    accepted outcome (what :func:`add_outcome` needs) or why it is rejected. ``prompt_by_hash`` is
    asked only when neither the log nor the prompt store by id holds the text."""
    cheap_tier, strong_tier = tiers
    rid, digest = obj.get("request_id"), obj.get("prompt_sha256")
    key = outcome_lookup_key(obj)
    if key is None:
        return None, _reject(*where, "missing_key", "outcome has neither request_id nor prompt_sha256", obj)
    rec = decision(key)
    if rec is None:
        return None, _reject(*where, "unknown_request",
                             f"request {rid if rid is not None else digest!r} is in no decision log", obj)
    digest = digest or rec.get("prompt_sha256")
    text = rec.get("prompt") or (prompt_by_id(str(rid)) if rid is not None else None) or \
        (prompt_by_hash(digest) if isinstance(digest, str) else None)
    if text is None:
        return None, _reject(*where, "no_prompt", f"no prompt text for request {rid or digest!r}", obj)
    score = _score(obj)
    if score is None:
        return None, _reject(*where, "bad_outcome", f"success/score {obj.get('score', obj.get('success'))!r} "
                             "is not 0/1 or a number in [0, 1]", obj, "success")
    tier = obj.get("tier") or model_tiers.get(str(obj.get("model")))
    if tier not in (cheap_tier, strong_tier):
        return None, _reject(*where, "unknown_tier", f"tier {tier!r} (model {obj.get('model')!r}) is not "
                             f"{cheap_tier!r} or {strong_tier!r}", obj, "tier")
    decision_ = rec["decision"] or {}
    explo = decision_.get("exploration") if isinstance(decision_.get("exploration"), dict) else None
    served = decision_.get("tier")
    # propensity of observing THIS tier's outcome: the decision's probability of sending it there
    if explo is not None:
        prop = explo.get("propensities", {}).get(tier) if isinstance(explo.get("propensities"), dict) else None
        prop = explo.get("propensity") if prop is None and tier == served else prop
    else:
        prop = 1.0
    if not isinstance(prop, (int, float)) or isinstance(prop, bool) or not (0 < prop <= 1):
        return None, _reject(*where, "bad_propensity", f"propensity {prop!r} of tier {tier!r}", obj)
    side = "cheap" if tier == cheap_tier else "frontier"
    return {"key": str(rid) if rid is not None else str(digest), "text": text, "digest": digest, "served": served,
            "tier": tier, "side": side, "score": score, "propensity": float(prop),
            "shadow": bool(obj.get("shadow", False)),
            "extras": {f"{x}_{side}": obj[x] for x in ("cost_usd", "input_tokens", "output_tokens") if x in obj}}, None


def add_outcome(rows: dict[str, dict[str, Any]], acc: Mapping[str, Any], where: tuple[str, int],
                obj: Any) -> RejectedRow | None:
    """Add an accepted outcome to its request's training row (made by the request's first
    outcome); a second outcome of the same request and tier is rejected. Call in outcome order."""
    key = acc["key"]
    row = rows.setdefault(key, {"request_id": key, "text": acc["text"], "prompt_sha256": acc["digest"],
                                "tier_served": acc["served"], "cheap_correct": None, "frontier_correct": None,
                                "propensity_cheap": None, "propensity_frontier": None, "shadow": False})
    col = f"{acc['side']}_correct"
    if row[col] is not None:
        return _reject(*where, "duplicate", f"second outcome for request {key!r} tier {acc['tier']!r}", obj)
    row[col] = acc["score"]
    row[f"propensity_{acc['side']}"] = acc["propensity"]
    row["shadow"] = row["shadow"] or acc["shadow"]
    row.update(acc["extras"])
    return None


def training_frame(rows: Sequence[Mapping[str, Any]], weight_cap: float) -> pd.DataFrame:
    """Training rows (in order of their requests' first outcome) as a frame with ``weight``."""
    frame = pd.DataFrame(list(rows))
    if not frame.empty:
        pc = pd.to_numeric(frame["propensity_cheap"], errors="coerce")
        frame["weight"] = np.minimum(1.0 / pc, weight_cap)  # rows without a cheap outcome: NaN (not trainable)
    return frame


def join_counts(n_outcomes: int, frame: pd.DataFrame, n_rejects: int) -> dict[str, int]:
    return {"outcomes": n_outcomes, "rows": int(len(frame)), "rejected": n_rejects,
            "with_cheap_outcome": int(frame["cheap_correct"].notna().sum()) if len(frame) else 0}


def check_join_options(tiers: Sequence[str], weight_cap: float) -> None:
    if len(tiers) != 2:
        raise ConfigError("tiers must be (cheap tier, strong tier)")
    if not weight_cap >= 1:
        raise ConfigError(f"weight_cap must be >= 1, got {weight_cap}")


def join_feedback(outcomes: Sequence[str | Path], decisions: Sequence[str | Path], *,
                  prompts: str | Path | None = None, tiers: Sequence[str] = ("cheap", "frontier"),
                  model_tiers: Mapping[str, str] | None = None, weight_cap: float = 50.0) -> JoinResult:
    """Join outcomes with the decisions that routed them and the prompt texts (module docstring).

    ``tiers``: (cheap tier name, strong tier name). One training row per request; an outcome of
    the other tier (shadow call) fills the other column of the same row.
    """
    check_join_options(tiers, weight_cap)
    model_tiers = dict(model_tiers or {})
    rejects: list[RejectedRow] = []
    by_id, by_hash = _decisions([Path(p) for p in decisions], rejects)
    p_by_id, p_by_hash = _prompts(Path(prompts) if prompts is not None else None)

    def decision(key: str) -> dict[str, Any] | None:
        return (by_id if key[0] == "i" else by_hash).get(key[2:])

    rows: dict[str, dict[str, Any]] = {}
    n_outcomes = 0
    for path in map(Path, outcomes):
        for lineno, obj in _read_jsonl(path, rejects):
            n_outcomes += 1
            where = (str(path), lineno)
            acc, rejected = resolve_outcome(obj, where, decision, p_by_id.get, p_by_hash.get,
                                            tiers=tiers, model_tiers=model_tiers)
            rejected = rejected or add_outcome(rows, acc, where, obj)  # type: ignore[arg-type]
            if rejected is not None:
                rejects.append(rejected)
    frame = training_frame(list(rows.values()), weight_cap)
    return JoinResult(frame, rejects, join_counts(n_outcomes, frame, len(rejects)))


# -- CLI ------------------------------------------------------------------------------------------
def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outcomes", action="append", required=True, help="outcome JSONL file (repeatable)")
    parser.add_argument("--decisions", action="append", required=True,
                        help="audit log or 'tierwise route --output' JSONL (repeatable; with --engine ray also "
                        "Parquet, or a directory of part files)")
    parser.add_argument("--prompts", default=None,
                        help="prompt store (.jsonl/.csv/.parquet with text and id; --engine ray: .jsonl/.parquet)")
    parser.add_argument("--tiers", action="append", default=[], metavar="MODEL=TIER",
                        help="map a model name in outcomes to a tier (repeatable)")
    parser.add_argument("--cheap-tier", default="cheap", help="name of the cheap tier (default cheap)")
    parser.add_argument("--strong-tier", default="frontier", help="name of the strong tier (default frontier)")
    parser.add_argument("--weight-cap", type=float, default=50.0, help="largest inverse-propensity weight (50)")
    parser.add_argument("--out", required=True, help="training rows (.parquet or .jsonl)")
    parser.add_argument("--rejects", default=None, help="rejected rows JSONL (default: <out>.rejects.jsonl)")
    from classifier.scale.engine import add_engine_arguments  # options only: Ray is not imported

    add_engine_arguments(parser, actors=False)


def run_join(args: argparse.Namespace) -> int:
    mapping = {}
    for spec in args.tiers:
        model, sep, tier = spec.partition("=")
        if not sep or not model or not tier:
            raise ConfigError(f"--tiers {spec!r}: write MODEL=TIER")
        mapping[model] = tier
    options = {"prompts": args.prompts, "tiers": (args.cheap_tier, args.strong_tier), "model_tiers": mapping,
               "weight_cap": args.weight_cap}
    if getattr(args, "engine", "local") == "ray":  # the same join on a Ray cluster: classifier/scale/feedback.py
        from classifier.scale.engine import check_engine_args, ray_session
        from classifier.scale.feedback import join_feedback_ray

        check_engine_args(args)
        with ray_session(args.address, args.ray_cpus) as ray:
            ray.data.DataContext.get_current().enable_progress_bars = False
            result = join_feedback_ray(args.outcomes, args.decisions, **options)
    else:
        result = join_feedback(args.outcomes, args.decisions, **options)
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
