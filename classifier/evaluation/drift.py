"""``tierwise drift``: compare live routing with a reference, say what moved, propose thresholds.

Inputs (``--reference R --current C``), each one of:

- a **decision log**: JSON lines written by ``tierwise route --output`` (``Decision.to_dict()``:
  ``tier``, ``blocked``, ``flags``, ``probabilities``, ``thresholds``...) or the audit log
  (``decision: {tier, blocked}``, ``flags``, ``probabilities``...). A ``text`` / ``prompt`` field,
  when present, gives the length bucket; otherwise it is ``unknown``;
- a **prompt log**: JSONL, CSV or Parquet with a ``text`` (or ``prompt``) column and no
  probabilities; ``--bundle`` then routes every prompt with the torch-free runtime. A ``split``
  column can be filtered with ``--reference-split`` / ``--current-split``.

What is compared: the tier mix (share per tier, blocked included; two-proportion z-test), the
confidence histogram of each head (PSI over 10 equal-width bins of p(positive) for the tier head
and of the top-class probability for the others, plus PSI of each multi-class head's predicted
class mix), the abstain/escalation rates (flags ``uncertain``, ``fallback``, ``invalid_input``,
``blocked``, ``truncated``) and, per slice (predicted task class, prompt length bucket), the
tier shares and flag rates (for slices, the 8 largest movements towards the stronger tiers, to
blocks or in a flag rate are spelled out). A change is reported in plain words ("code prompts (by predicted
task) reaching the frontier tier rose from 8.0% to 19.0%") when it is both large (at least
``--min-change``, default 5 points; 2 points for flag rates) and significant (p < 0.01); a head is
reported when its PSI exceeds ``--psi-threshold`` (default 0.2).

The proposal: the tier threshold that keeps the reference's cheap share on the current traffic
(the ``current`` p(frontier) quantile at the reference cheap share), written as a unified diff of
the policy's ``thresholds`` section to ``<out>/proposed_thresholds.diff`` (and the whole proposed
section to ``proposed_thresholds.yaml``). It is never applied: keeping the cheap share on shifted
traffic trades misroutes for money, which the calibration guarantee no longer covers; re-run
``tierwise calibrate`` on labelled new traffic before adopting it.

Outputs under ``--out`` (default ``evaluation/drift``): ``drift.json``, ``drift.md``,
``drift.html`` (self-contained, figures embedded) and the proposal files. Exit 0, or 1 with
``--fail-on-drift`` when something was flagged (for a monitoring job).

Demo, the shared arena-hard and RouterArena prompts as "new traffic" against the test split::

    tierwise drift --demo --bundle bundles/teacher

which is ``--reference data/build/dataset.parquet --reference-split test --current
data/build/traffic.parquet --limit 2000`` (``traffic.parquet`` is written by ``tierwise data
build``).

With ``--engine ray [--address ADDR]`` each side may also be a directory of JSONL/Parquet files:
Ray Data routes prompt logs with one Router per actor and the statistics are summed from
per-block ``DriftSummary`` counts (the threshold proposal's quantile is found by histogram
refinement), so the driver holds counts, never rows (``classifier.scale.stats``).

What it leaves out: labels (live traffic has none, so no accuracy or misroute rates: those are
``tierwise report``'s job on labelled data), alerting, and applying the proposal.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import difflib
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
from pydantic import Field

from classifier.data.reader import select_split
from classifier.errors import ConfigError, DataError, TypedConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DriftConfig",
    "DriftResult",
    "add_drift_arguments",
    "compare",
    "load_decisions",
    "propose_thresholds",
    "psi",
    "run_drift",
    "two_proportion_p",
]

FLAG_NAMES = ("uncertain", "fallback", "invalid_input", "blocked", "truncated")
BLOCKED = "blocked"
N_BINS = 10
_EPS = 1e-4  # PSI smoothing: an empty bin on one side must not make PSI infinite
_CHUNK = 256
MAX_SLICE_FINDINGS = 8  # the largest slice movements are spelled out; drift.json has them all
DEMO_REFERENCE = Path("data/build/dataset.parquet")
DEMO_CURRENT = Path("data/build/traffic.parquet")


# -- statistics ------------------------------------------------------------------------------------
def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins (each sums to 1).

    ``sum((c - r) * ln(c / r))`` with shares floored at 1e-4. Rule of thumb: < 0.1 stable,
    0.1-0.2 moderate, > 0.2 a real shift.
    """
    r = np.clip(np.asarray(reference, dtype=float), _EPS, None)
    c = np.clip(np.asarray(current, dtype=float), _EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (1.0 when undefined)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k2 / n2 - k1 / n1) / se
    return float(math.erfc(abs(z) / math.sqrt(2)))


# -- configuration -----------------------------------------------------------------------------------
class DriftConfig(TypedConfig):
    """What ``compare`` looks at and how sensitive it is."""

    psi_threshold: float = Field(0.2, ge=0.0, allow_inf_nan=False)
    min_change: float = Field(0.05, ge=0.0, allow_inf_nan=False)
    min_flag_change: float = Field(0.02, ge=0.0, allow_inf_nan=False)
    significance: float = Field(0.01, gt=0.0, lt=1.0)
    min_slice_rows: int = Field(30, ge=1)


@dataclass
class DriftResult:
    """The comparison (plain JSON-able dict) and its figures (name -> PNG data URI)."""

    result: dict[str, Any]
    figures: dict[str, str] = field(default_factory=dict)


# -- loading -------------------------------------------------------------------------------------------
@dataclass
class Decisions:
    """One side of the comparison, normalised: one row per decision.

    ``frame`` columns: ``tier`` (tier name or ``blocked``), ``flag_<name>`` booleans,
    ``length`` (bucket), and ``p::<head>::<class>`` probabilities where the log has them.
    ``thresholds``: the ``thresholds`` field of the first decision that carries one.
    """

    frame: pd.DataFrame
    source: str
    kind: str  # "decisions" or "prompts"
    thresholds: dict[str, Any] = field(default_factory=dict)

    def heads(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for col in self.frame.columns:
            if col.startswith("p::"):
                _, head, cls = col.split("::", 2)
                out.setdefault(head, []).append(cls)
        return out

    def probs(self, head: str, classes: Sequence[str]) -> np.ndarray:
        return self.frame[[f"p::{head}::{c}" for c in classes]].to_numpy(dtype=float)


def _read_table(path: Path, split: str | None) -> tuple[list[dict[str, Any]] | None, pd.DataFrame | None]:
    """JSON lines as records, or a CSV/Parquet file as a frame."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a decision log (JSONL) or a prompt file (JSONL/CSV/Parquet)")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as parquet: {exc}") from None
    elif suffix == ".csv":
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as CSV: {exc}") from None
    else:
        records = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {n}: not valid JSON ({exc.msg}); each line must be one "
                                    "JSON object (a decision or a prompt record)") from None
                if not isinstance(rec, dict):
                    raise DataError(f"{path} line {n}: expected a JSON object, got {type(rec).__name__}")
                records.append(rec)
        if split is not None:
            records = [r for r in records if r.get("split") == split]
        return records, None
    if split is not None:
        if "split" not in frame.columns:
            raise DataError(f"{path} has no 'split' column to filter split {split!r} on")
        frame = frame[frame["split"] == split]
    return None, frame.reset_index(drop=True)


def _is_decision(rec: Mapping[str, Any]) -> bool:
    return "probabilities" in rec or "decision" in rec or ("tier" in rec and "rule" in rec)


def _text_of(rec: Mapping[str, Any]) -> Any:
    for key in ("text", "prompt", "input"):
        if isinstance(rec.get(key), str):
            return rec[key]
    return None


def _normalise(records: Sequence[Mapping[str, Any]], source: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Decision records (route output or audit entries) -> the frame ``Decisions`` holds."""
    from classifier.evaluation.report_common import length_bucket

    rows: list[dict[str, Any]] = []
    thresholds: dict[str, Any] = {}
    for n, rec in enumerate(records, 1):
        inner = rec.get("decision") if isinstance(rec.get("decision"), Mapping) else rec
        blocked = bool(inner.get("blocked", False))
        tier = inner.get("tier")
        if not blocked and not isinstance(tier, str):
            raise DataError(f"{source} record {n}: no tier and not blocked; a decision needs 'tier' "
                            "(or 'decision': {'tier': ...}) or 'blocked': true")
        flags = rec.get("flags") or []
        if not isinstance(flags, list):
            raise DataError(f"{source} record {n}: 'flags' must be a list of strings")
        row: dict[str, Any] = {"tier": BLOCKED if blocked else tier}
        for f in FLAG_NAMES:
            row[f"flag_{f}"] = f in flags or (f == BLOCKED and blocked)
        probs = rec.get("probabilities") or {}
        if not isinstance(probs, Mapping):
            raise DataError(f"{source} record {n}: 'probabilities' must map head -> {{class: p}}")
        for head, dist in probs.items():
            if isinstance(dist, Mapping):
                for cls, p in dist.items():
                    row[f"p::{head}::{cls}"] = float(p) if isinstance(p, (int, float)) else np.nan
        row["text"] = _text_of(rec)
        rows.append(row)
        if not thresholds and isinstance(rec.get("thresholds"), Mapping) and rec["thresholds"]:
            thresholds = dict(rec["thresholds"])
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise DataError(f"{source}: no decisions to compare")
    frame["length"] = length_bucket(frame["text"].tolist())
    frame = frame.drop(columns=["text"])
    return frame, thresholds


def _route_prompts(router: Any, texts: Sequence[Any], desc: str) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    out: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(texts), _CHUNK), desc=desc, unit="chunk", disable=len(texts) <= 4 * _CHUNK):
        chunk = list(texts[start:start + _CHUNK])
        for text, d in zip(chunk, router.route(chunk), strict=True):
            rec = d.to_dict()
            rec["text"] = text if isinstance(text, str) else None
            out.append(rec)
    return out


def load_decisions(path: str | Path, *, router: Any = None, split: str | None = None,
                   limit: int | None = None, seed: int = 0) -> Decisions:
    """Read a decision log, or route a prompt log with ``router`` (see the module docstring)."""
    path = Path(path)
    records, frame = _read_table(path, split)
    texts: list[Any] = []
    if records is not None:
        if not records:
            raise DataError(f"{path}: no records" + (f" with split == {split!r}" if split else ""))
        if limit is not None and len(records) > limit:
            pick = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
            records = [records[i] for i in pick]
        if _is_decision(records[0]):
            norm, thresholds = _normalise(records, str(path))
            return Decisions(norm, str(path), "decisions", thresholds)
        texts = [_text_of(r) for r in records]
        if all(t is None for t in texts):
            raise DataError(f"{path}: the records are neither decisions (no 'tier'/'decision'/'probabilities') "
                            "nor prompts (no 'text' or 'prompt' field)")
    elif frame is not None:
        if frame.empty:
            raise DataError(f"{path}: no rows" + (f" with split == {split!r}" if split else ""))
        frame = select_split(frame, None, limit, seed)
        if "probabilities" in frame.columns:
            norm, thresholds = _normalise(frame.to_dict("records"), str(path))
            return Decisions(norm, str(path), "decisions", thresholds)
        col = next((c for c in ("text", "prompt") if c in frame.columns), None)
        if col is None:
            raise DataError(f"{path}: no 'text' or 'prompt' column (columns: {list(frame.columns)[:12]})")
        texts = frame[col].tolist()
    if router is None:
        raise ConfigError(f"{path} holds prompts, not decisions: pass --bundle to route them")
    routed = _route_prompts(router, texts, f"routing {path.name}")
    norm, thresholds = _normalise(routed, str(path))
    return Decisions(norm, str(path), "prompts", thresholds)


# -- summaries: the sufficient statistics of one side ---------------------------------------------------
def _slice_stats() -> dict[str, Any]:
    return {"n": 0, "tiers": {}, "flags": {}}


@dataclass
class DriftSummary:
    """Everything ``compare`` reads from one side, as counts that add up (``merge``).

    Built from a normalised frame (``from_frame``) in one process, or from many partial frames
    merged (``classifier.scale.stats`` does that on a Ray cluster): the comparison of two
    summaries is the same whichever way they were built. ``hist[head][q]``: counts over
    ``N_BINS`` equal-width bins of p(class ``q``) or, for ``q == "max"``, the top-class
    probability, over the rows whose probabilities of that head are all finite (``ok[head]``);
    ``argmax[head]``: predicted-class counts over those rows; ``slices[(kind, value)]``: rows,
    tier counts and flag counts per length bucket (``kind == "length"``) and per predicted class
    of each head (``kind == "head:<name>"``). ``scores`` (optional) gives the tier scores the
    threshold proposal needs (``scores(column) -> object with size, share_below, kth``).
    """

    source: str
    kind: str
    n: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    classes: dict[str, list[str]] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    hist: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    argmax: dict[str, np.ndarray] = field(default_factory=dict)
    slices: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    score_source: Any = None

    def heads(self) -> dict[str, list[str]]:
        return {h: list(c) for h, c in self.classes.items()}

    def scores(self, column: str) -> Any:
        if self.score_source is None:
            raise DataError(f"{self.source}: no scores kept for the threshold proposal")
        return self.score_source(column)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str, kind: str,
                   thresholds: Mapping[str, Any] | None = None) -> DriftSummary:
        """The summary of a normalised frame (``Decisions.frame``'s columns)."""
        out = cls(source=source, kind=kind, n=len(frame), thresholds=dict(thresholds or {}))
        tiers = frame["tier"].astype(object).to_numpy()
        values, counts = np.unique(tiers.astype(str), return_counts=True)
        out.tiers = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
        flag_arrays = {f: frame[f"flag_{f}"].to_numpy(dtype=bool) for f in FLAG_NAMES}
        out.flags = {f: int(a.sum()) for f, a in flag_arrays.items()}
        keys: dict[str, np.ndarray] = {"length": frame["length"].astype(str).to_numpy()}
        edges = np.linspace(0.0, 1.0, N_BINS + 1)
        for col in frame.columns:
            if col.startswith("p::"):
                _, head, cls_ = col.split("::", 2)
                out.classes.setdefault(head, []).append(cls_)
        for head, classes in out.classes.items():
            p = frame[[f"p::{head}::{c}" for c in classes]].to_numpy(dtype=float)
            ok = np.isfinite(p).all(axis=1)
            out.ok[head] = int(ok.sum())
            q = p[ok]
            out.hist[head] = {c: np.histogram(np.clip(q[:, j], edges[0], edges[-1]), bins=edges)[0]
                              for j, c in enumerate(classes)}
            out.hist[head]["max"] = np.histogram(np.clip(q.max(axis=1) if len(q) else q[:, :0].sum(axis=1),
                                                         edges[0], edges[-1]), bins=edges)[0]
            out.argmax[head] = np.bincount(q.argmax(axis=1), minlength=len(classes)) if len(q) else \
                np.zeros(len(classes), dtype=np.int64)
            labels = np.full(len(p), "unknown", dtype=object)
            labels[ok] = np.array(list(classes), dtype=object)[q.argmax(axis=1)] if len(q) else labels[ok]
            keys[f"head:{head}"] = labels
        for kind_, labels in keys.items():
            for value in np.unique(labels.astype(str)):
                if value == "unknown":
                    continue
                rows = labels == value
                st = _slice_stats()
                st["n"] = int(rows.sum())
                v, c = np.unique(tiers[rows].astype(str), return_counts=True)
                st["tiers"] = {str(a): int(b) for a, b in zip(v, c, strict=True)}
                st["flags"] = {f: int(a[rows].sum()) for f, a in flag_arrays.items()}
                out.slices[(kind_, str(value))] = st
        return out

    def merge(self, other: DriftSummary) -> DriftSummary:
        """Add ``other``'s counts into this summary (in place; returns self)."""
        self.n += other.n
        for name in ("tiers", "flags"):
            mine = getattr(self, name)
            for k, v in getattr(other, name).items():
                mine[k] = mine.get(k, 0) + v
        if not self.thresholds and other.thresholds:
            self.thresholds = dict(other.thresholds)
        for head, classes in other.classes.items():
            if head not in self.classes:
                self.classes[head] = list(classes)
                self.ok[head] = other.ok[head]
                self.hist[head] = {k: v.copy() for k, v in other.hist[head].items()}
                self.argmax[head] = other.argmax[head].copy()
                continue
            if self.classes[head] != list(classes):
                raise DataError(f"{other.source}: head {head!r} has classes {classes}, elsewhere {self.classes[head]}")
            self.ok[head] += other.ok[head]
            for k, v in other.hist[head].items():
                self.hist[head][k] = self.hist[head][k] + v
            self.argmax[head] = self.argmax[head] + other.argmax[head]
        for key, st in other.slices.items():
            mine = self.slices.setdefault(key, _slice_stats())
            mine["n"] += st["n"]
            for name in ("tiers", "flags"):
                for k, v in st[name].items():
                    mine[name][k] = mine[name].get(k, 0) + v
        return self


class ArrayScores:
    """Tier scores held in memory: what ``propose_thresholds`` asks of a side's scores."""

    def __init__(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=float)
        self.sorted = np.sort(v[np.isfinite(v)])
        self.size = int(self.sorted.size)

    def share_below(self, t: float) -> float:
        return float(np.mean(self.sorted < t))

    def kth(self, k: int) -> float:
        """The k-th smallest score (0-based)."""
        return float(self.sorted[k])


def summarise(side: Decisions | DriftSummary) -> DriftSummary:
    """The summary of one side (a summary is returned as it is)."""
    if isinstance(side, DriftSummary):
        return side
    out = DriftSummary.from_frame(side.frame, side.source, side.kind, side.thresholds)
    frame = side.frame
    out.score_source = lambda col: ArrayScores(frame[col].to_numpy(dtype=float))
    return out


# -- comparison ------------------------------------------------------------------------------------------
def _tier_rule(policy: Any, schema: Any, ref: Any, cur: Any) -> tuple[str, str, float | None] | None:
    """``(head, positive class, threshold)`` of the tier rule: policy and schema first, then the logs."""
    heads_r, heads_c = ref.heads(), cur.heads()
    logged: dict[str, tuple[str, float]] = {}
    for th in (ref.thresholds, cur.thresholds):
        for head, value in th.items():
            if isinstance(value, Mapping) and len(value) == 1:
                cls, t = next(iter(value.items()))
                if isinstance(t, (int, float)) and not isinstance(t, bool):
                    logged.setdefault(head, (str(cls), float(t)))
    head = policy.tier_head if policy is not None else next(
        (h for h in logged if h in heads_r and h in heads_c and logged[h][0] in heads_r[h]), None)
    if head is None:
        head = next((h for h, c in heads_r.items() if len(c) == 2 and h in heads_c), None)
    if head is None or head not in heads_r or head not in heads_c:
        return None
    classes = heads_r[head]
    if schema is not None and head in schema and schema.head(head).positive_class:
        pos = schema.head(head).positive_class
    elif head in logged:
        pos = logged[head][0]
    else:
        pos = "frontier" if "frontier" in classes else classes[-1]
    if pos not in classes:
        return None
    t = float(policy.tier_threshold) if policy is not None else (logged[head][1] if head in logged else None)
    return head, pos, t


def _share_change(k1: int, n1: int, k2: int, n2: int, min_change: float, significance: float) -> dict[str, Any]:
    """A share's reference and current value, change, two-proportion p-value, and whether it
    drifted: moved by at least ``min_change`` and significant at ``significance``."""
    a, b = k1 / n1, k2 / n2
    p = two_proportion_p(k1, n1, k2, n2)
    return {"reference": a, "current": b, "change": b - a, "p_value": p,
            "drift": abs(b - a) >= min_change and p < significance}


def _change_words(a: float, b: float) -> str:
    return "rose" if b > a else "fell"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"



def _slice_cell(k1: int, nr: int, k2: int, nc: int, config: Any, min_change: float) -> dict[str, Any]:
    """One slice's share in reference and current windows, its two-proportion p-value, and whether
    it drifted (both windows large enough, the change big enough and significant)."""
    a = k1 / nr if nr else None
    b = k2 / nc if nc else None
    p = two_proportion_p(k1, nr, k2, nc)
    drift = (nr >= config.min_slice_rows and nc >= config.min_slice_rows and a is not None
             and b is not None and abs(b - a) >= min_change and p < config.significance)
    return {"reference": a, "current": b, "p_value": p, "drift": drift}

def compare(ref: Decisions | DriftSummary, cur: Decisions | DriftSummary, *, config: DriftConfig | None = None,
            policy: Any = None, schema: Any = None,
            tier_order: Sequence[str] = ()) -> DriftResult:  # noqa: C901 - one walk over the checks
    """Compare two sides (decision sets or their summaries); findings in plain words, numbers under stable keys."""
    from classifier.evaluation import plots

    config = config or DriftConfig()
    rs, cs = summarise(ref), summarise(cur)
    findings: list[dict[str, Any]] = []
    figures: dict[str, str] = {}
    n_r, n_c = rs.n, cs.n

    # tier mix ----------------------------------------------------------------------------------
    observed = {t for t, k in rs.tiers.items() if k} | {t for t, k in cs.tiers.items() if k}
    seen = list(dict.fromkeys([*tier_order, *sorted(observed)]))
    tiers = [t for t in seen if t != BLOCKED and (t in observed or t in tier_order)]
    tiers.append(BLOCKED)
    mix = []
    for t in tiers:
        mix.append({"tier": t, **_share_change(rs.tiers.get(t, 0), n_r, cs.tiers.get(t, 0), n_c,
                                              config.min_change, config.significance)})
        a, b, drift = mix[-1]["reference"], mix[-1]["current"], mix[-1]["drift"]
        if drift:
            what = "blocked requests" if t == BLOCKED else f"prompts routed to the {t} tier"
            findings.append({"kind": "tier_mix", "tier": t, "reference": a, "current": b,
                             "message": f"{what} {_change_words(a, b)} from {_pct(a)} to {_pct(b)} of all prompts"})
    figures["tier_mix"] = plots.data_uri(plots.share_bars_png(
        "tier mix", [m["tier"] for m in mix], [m["reference"] for m in mix], [m["current"] for m in mix]))

    # confidence histograms (PSI) -------------------------------------------------------------------
    tier_rule = _tier_rule(policy, schema, rs, cs)
    heads_r, heads_c = rs.heads(), cs.heads()
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    psi_out: dict[str, Any] = {}
    for head, classes in heads_r.items():
        if head not in heads_c or set(heads_c[head]) != set(classes):
            continue
        if not rs.ok[head] or not cs.ok[head]:
            continue
        if tier_rule and head == tier_rule[0]:
            key, quantity = tier_rule[1], f"p({tier_rule[1]})"
        else:
            key, quantity = "max", "top-class confidence"
        hr, hc = rs.hist[head][key], cs.hist[head][key]
        sr, sc = hr / max(1, hr.sum()), hc / max(1, hc.sum())
        value = psi(sr, sc)
        drift = value > config.psi_threshold
        psi_out[head] = {"quantity": quantity, "psi": value, "drift": drift, "edges": edges.tolist(),
                         "reference": sr.tolist(), "current": sc.tolist()}
        figures[f"psi_{head}"] = plots.data_uri(plots.histogram_pair_png(
            f"{head}: {quantity}", edges, sr, sc, xlabel=quantity, psi=value))
        if drift:
            findings.append({"kind": "psi", "head": head, "psi": value,
                             "message": f"the {head} head's {quantity} distribution shifted "
                                        f"(PSI {value:.3f} > {config.psi_threshold:g})"})
        if len(classes) > 2:
            # the current side's classes in the reference's order
            mr = rs.argmax[head] / rs.ok[head]
            mc = cs.argmax[head][[heads_c[head].index(c) for c in classes]] / cs.ok[head]
            value = psi(mr, mc)
            drift = value > config.psi_threshold
            key = f"{head}:predicted"
            psi_out[key] = {"quantity": "predicted class mix", "psi": value, "drift": drift, "classes": classes,
                            "reference": mr.tolist(), "current": mc.tolist()}
            if drift:
                moved = int(np.argmax(np.abs(mc - mr)))
                findings.append({"kind": "psi", "head": key, "psi": value,
                                 "message": f"the mix of predicted {head} classes shifted (PSI {value:.3f} > "
                                            f"{config.psi_threshold:g}); {classes[moved]} went from "
                                            f"{_pct(mr[moved])} to {_pct(mc[moved])} of prompts"})

    # flags -----------------------------------------------------------------------------------
    flags = []
    for f in FLAG_NAMES:
        flags.append({"flag": f, **_share_change(rs.flags.get(f, 0), n_r, cs.flags.get(f, 0), n_c,
                                                config.min_flag_change, config.significance)})
        a, b, drift = flags[-1]["reference"], flags[-1]["current"], flags[-1]["drift"]
        if drift and f != BLOCKED:  # blocked already speaks through the tier mix
            findings.append({"kind": "flag", "flag": f, "reference": a, "current": b,
                             "message": f"decisions flagged {f} {_change_words(a, b)} from {_pct(a)} to {_pct(b)}"})

    # slices ----------------------------------------------------------------------------------
    slice_kinds: dict[str, str] = {}
    task_head = policy.task_head if policy is not None else ("task" if "task" in heads_r else None)
    if task_head and task_head in heads_r and task_head in heads_c:
        slice_kinds["task"] = f"head:{task_head}"
    slice_kinds["length"] = "length"
    slices: dict[str, list[dict[str, Any]]] = {}
    # per slice, the cheap tier's share is the complement of the others when there are two tiers:
    # report movements towards the stronger tiers (and blocks) only, largest first
    cheap = policy.cheap_tier if policy is not None else ("cheap" if "cheap" in tiers else None)
    slice_findings: list[dict[str, Any]] = []
    empty = _slice_stats()
    for kind, key in slice_kinds.items():
        rows = []
        values = sorted({v for (k, v) in [*rs.slices, *cs.slices] if k == key})
        for value in values:
            r_st, c_st = rs.slices.get((key, value), empty), cs.slices.get((key, value), empty)
            nr, nc = r_st["n"], c_st["n"]
            row: dict[str, Any] = {"slice": str(value), "n_reference": nr, "n_current": nc, "tiers": {}, "flags": {}}
            for t in tiers:
                row["tiers"][t] = cell = _slice_cell(r_st["tiers"].get(t, 0), nr, c_st["tiers"].get(t, 0), nc,
                                                     config, config.min_change)
                a, b = cell["reference"], cell["current"]
                if cell["drift"] and t != cheap:
                    who = f"{value} prompts (by predicted task)" if kind == "task" else f"prompts of {value}"
                    where = "blocked" if t == BLOCKED else f"reaching the {t} tier"
                    slice_findings.append({"kind": "slice", "slice_kind": kind, "slice": str(value), "tier": t,
                                     "reference": a, "current": b,
                                     "message": f"{who} {where} {_change_words(a, b)} from {_pct(a)} to {_pct(b)}"})
            for f in FLAG_NAMES:
                row["flags"][f] = cell = _slice_cell(r_st["flags"].get(f, 0), nr, c_st["flags"].get(f, 0), nc,
                                                     config, config.min_flag_change)
                a, b = cell["reference"], cell["current"]
                if cell["drift"] and f != BLOCKED:
                    who = f"{value} prompts (by predicted task)" if kind == "task" else f"prompts of {value}"
                    slice_findings.append({"kind": "slice_flag", "slice_kind": kind, "slice": str(value), "flag": f,
                                           "reference": a, "current": b,
                                           "message": f"decisions flagged {f} among {who} {_change_words(a, b)} "
                                                      f"from {_pct(a)} to {_pct(b)}"})
            rows.append(row)
        rows.sort(key=lambda r: -(r["n_reference"] + r["n_current"]))  # stable: ties stay in name order
        slices[kind] = rows
    slice_findings.sort(key=lambda f: -abs(f["current"] - f["reference"]))
    findings.extend(slice_findings[:MAX_SLICE_FINDINGS])
    if len(slice_findings) > MAX_SLICE_FINDINGS:
        findings.append({"kind": "slice_more", "count": len(slice_findings) - MAX_SLICE_FINDINGS,
                         "message": f"{len(slice_findings) - MAX_SLICE_FINDINGS} smaller slice changes are listed "
                                    "under 'slices' in drift.json"})

    result: dict[str, Any] = {
        "drift": bool(findings),
        "findings": findings,
        "tiers": tiers,
        "flag_names": list(FLAG_NAMES),
        "tier_mix": mix,
        "psi": psi_out,
        "flags": flags,
        "slices": slices,
        "tier_rule": None if tier_rule is None else {"head": tier_rule[0], "positive_class": tier_rule[1],
                                                      "threshold": tier_rule[2]},
    }
    return DriftResult(result=result, figures=figures)


# -- threshold proposal ----------------------------------------------------------------------------------
def propose_thresholds(ref: Decisions | DriftSummary, cur: Decisions | DriftSummary,
                       tier_rule: Mapping[str, Any] | None,
                       thresholds_section: Mapping[str, Any] | None, *, policy: Any = None,
                       min_gap: float = 0.005) -> tuple[dict[str, Any] | None, str]:
    """The threshold keeping the reference cheap share on current traffic, as a YAML diff.

    Returns ``(proposal, note)``: ``proposal`` is None (and ``note`` says why) when the logs carry
    no tier probabilities or threshold, or when the current cheap share at the current threshold is
    within ``min_gap`` (or one prompt) of the reference's.
    """
    import yaml

    if not tier_rule or tier_rule.get("threshold") is None:
        return None, "the logs carry no tier threshold; pass --bundle or --policy"
    head, pos, t = tier_rule["head"], tier_rule["positive_class"], float(tier_rule["threshold"])
    col = f"p::{head}::{pos}"
    rs, cs = summarise(ref), summarise(cur)
    if pos not in rs.classes.get(head, ()) or pos not in cs.classes.get(head, ()):
        return None, f"the logs carry no p({pos}) for head {head!r}"
    pr, pc = rs.scores(col), cs.scores(col)
    if not pr.size or not pc.size:
        return None, f"no finite p({pos}) values to fit a threshold on"
    ref_share = pr.share_below(t)
    cur_share = pc.share_below(t)
    if abs(cur_share - ref_share) <= max(1.0 / pc.size, min_gap):
        return None, (f"the current traffic keeps the reference cheap share ({_pct(ref_share)}) at the "
                      f"current threshold {t:g} ({_pct(cur_share)}): nothing to propose")
    j = int(round(ref_share * pc.size))  # prompts to keep cheap
    # with the sorted scores framed by 0 and 1, any t' in (order[j], order[j + 1]] sends exactly the
    # j lowest-scored prompts cheap (up to ties); the middle of that gap is the choice least
    # sensitive to small score changes
    lo = 0.0 if j == 0 else pc.kth(j - 1)
    hi = 1.0 if j >= pc.size else pc.kth(j)
    new_t = round(float((lo + hi) / 2.0), 6)
    achieved = pc.share_below(new_t)
    old_section = copy.deepcopy(dict(thresholds_section or {"tier": t}))
    new_section = copy.deepcopy(old_section)
    new_section["tier"] = new_t
    prov = dict(new_section.get("provenance") or {})
    prov["drift_proposal"] = {
        "method": "keep_reference_cheap_share",
        "previous_threshold": t,
        "reference_cheap_share": round(ref_share, 6),
        "current_cheap_share_at_previous": round(cur_share, 6),
        "current_cheap_share_at_proposed": round(achieved, 6),
        "n_reference": int(pr.size),
        "n_current": int(pc.size),
        "reference": ref.source,
        "current": cur.source,
        "proposed_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "status": "proposed, not applied; review and re-run tierwise calibrate on labelled traffic",
    }
    new_section["provenance"] = prov
    if policy is not None:
        # the proposal must be a thresholds section the policy validator accepts
        policy.with_thresholds(tier=new_t, provenance={"drift_proposal": prov["drift_proposal"]})
    old_text = yaml.safe_dump({"thresholds": old_section}, sort_keys=False, allow_unicode=True)
    new_text = yaml.safe_dump({"thresholds": new_section}, sort_keys=False, allow_unicode=True)
    diff = "".join(difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                        fromfile="a/policy.yaml#thresholds", tofile="b/policy.yaml#thresholds"))
    summary = (f"At the current threshold {t:g}, {_pct(cur_share)} of current prompts go cheap against "
               f"{_pct(ref_share)} of reference prompts; threshold {new_t:g} would send {_pct(achieved)} of "
               "current prompts cheap. Keeping the cheap share on shifted traffic is not covered by the "
               "calibration guarantee: review before adopting.")
    return {"threshold": t, "proposed_threshold": new_t, "reference_cheap_share": ref_share,
            "current_cheap_share": cur_share, "proposed_cheap_share": achieved, "diff": diff,
            "old_yaml": old_text, "new_yaml": new_text, "summary": summary}, ""


# -- CLI -------------------------------------------------------------------------------------------
def add_drift_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", default=None,
                        help="reference decisions (JSONL) or prompts (JSONL/CSV/Parquet with a text column)")
    parser.add_argument("--current", default=None, help="current decisions or prompts, same formats")
    parser.add_argument("--reference-split", default=None, help="keep only rows of this split (a 'split' column)")
    parser.add_argument("--current-split", default=None, help="keep only rows of this split")
    parser.add_argument("--bundle", default=None, help="bundle that routes prompt logs (and supplies the policy)")
    parser.add_argument("--policy", default=None, help="policy YAML (default: the bundle's, else the logs' thresholds)")
    parser.add_argument("--out", default="evaluation/drift", help="output folder (default evaluation/drift)")
    parser.add_argument("--psi-threshold", type=float, default=0.2, help="PSI above which a head has drifted (default 0.2)")
    parser.add_argument("--min-change", type=float, default=0.05,
                        help="smallest tier-share change worth reporting, as a fraction (default 0.05)")
    parser.add_argument("--min-flag-change", type=float, default=0.02,
                        help="smallest flag-rate change worth reporting (default 0.02)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many records per side (seeded sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads when routing prompts (default 2)")
    parser.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is flagged")
    parser.add_argument("--demo", action="store_true",
                        help=f"reference = {DEMO_REFERENCE} split test, current = {DEMO_CURRENT} "
                             "(arena-hard + RouterArena prompts), --limit 2000; needs --bundle")
    from classifier.scale.engine import add_engine_arguments  # options only: Ray is not imported

    add_engine_arguments(parser)


def run_drift(args: argparse.Namespace) -> int:
    if getattr(args, "engine", "local") != "ray":
        return _run_drift(args)
    from classifier.scale.engine import check_engine_args, ray_session

    check_engine_args(args)
    if args.limit is not None:
        raise ConfigError("--limit samples in memory: drop it with --engine ray (Ray reads every record)")
    with ray_session(args.address, args.ray_cpus):  # open until the proposal has read its scores
        return _run_drift(args)


def _run_drift(args: argparse.Namespace) -> int:
    from classifier.evaluation import report_render
    from classifier.serving.policy import Policy

    if args.demo:
        args.reference = args.reference or str(DEMO_REFERENCE)
        args.reference_split = args.reference_split or "test"
        args.current = args.current or str(DEMO_CURRENT)
        args.limit = args.limit or 2000
        if not args.bundle:
            raise ConfigError("--demo routes prompts: pass --bundle (e.g. --bundle bundles/teacher)")
    if not args.reference or not args.current:
        raise ConfigError("pass --reference and --current (or --demo with --bundle)")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    config = DriftConfig(psi_threshold=args.psi_threshold, min_change=args.min_change,
                         min_flag_change=args.min_flag_change)
    router = None
    policy = Policy.from_yaml(args.policy) if args.policy else None
    try:
        if args.bundle:
            from classifier.serving.runtime import Router

            router = Router.load(args.bundle, threads=args.threads, policy=policy)
            policy = router.policy
        if getattr(args, "engine", "local") == "ray":  # summaries aggregated on the cluster
            from classifier.scale.stats import drift_side

            kw = {"bundle": args.bundle, "policy": args.policy, "threads": args.threads, "actors": args.actors}
            ref = drift_side(args.reference, split=args.reference_split, **kw)
            cur = drift_side(args.current, split=args.current_split, **kw)
        else:
            ref = load_decisions(args.reference, router=router, split=args.reference_split, limit=args.limit,
                                 seed=args.seed)
            cur = load_decisions(args.current, router=router, split=args.current_split, limit=args.limit,
                                 seed=args.seed)
    finally:
        if router is not None:
            router.close()
    out = compare(ref, cur, config=config, policy=policy, schema=router.schema if router is not None else None,
                  tier_order=policy.tier_names if policy else ())
    result = out.result
    section = policy.to_dict().get("thresholds") if policy is not None else (
        _section_from_logs(ref.thresholds or cur.thresholds, result["tier_rule"]))
    proposal, note = propose_thresholds(ref, cur, result["tier_rule"], section, policy=policy)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if proposal is not None:
        diff_path = out_dir / "proposed_thresholds.diff"
        header = ("# Proposed change to the policy's thresholds section, written by 'tierwise drift'.\n"
                  "# NOT applied. " + proposal["summary"] + "\n")
        diff_path.write_text(header + proposal["diff"], encoding="utf-8")
        (out_dir / "proposed_thresholds.yaml").write_text(proposal["new_yaml"], encoding="utf-8")
        proposal["diff_path"] = str(diff_path)
    result["proposal"] = proposal
    result["proposal_note"] = note
    result["meta"] = {
        "created_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "reference": ref.source + (f" (split {args.reference_split})" if args.reference_split else ""),
        "current": cur.source + (f" (split {args.current_split})" if args.current_split else ""),
        "reference_kind": ref.kind, "current_kind": cur.kind,
        "n_reference": summarise(ref).n, "n_current": summarise(cur).n,
        "bundle": args.bundle, "policy_version": getattr(policy, "version", None),
        "psi_threshold": config.psi_threshold, "min_change": config.min_change,
        "min_flag_change": config.min_flag_change, "significance": config.significance,
    }
    from classifier.json_io import to_jsonable as _jsonable

    result = _jsonable(result)
    (out_dir / "drift.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    (out_dir / "drift.md").write_text(report_render.render_drift_markdown(result), encoding="utf-8")
    (out_dir / "drift.html").write_text(report_render.render_drift_html(result, out.figures), encoding="utf-8")
    if result["drift"]:
        sys.stdout.write("routing drift detected:\n")
        for f in result["findings"]:
            sys.stdout.write(f"  - {f['message']}\n")
    else:
        sys.stdout.write("no routing drift detected\n")
    if proposal is not None:
        sys.stdout.write(f"proposed thresholds (not applied): {proposal['diff_path']}\n")
    else:
        sys.stdout.write(f"no threshold proposal: {note}\n")
    sys.stdout.write(f"wrote {out_dir / 'drift.json'}, {out_dir / 'drift.md'} and {out_dir / 'drift.html'}\n")
    return 1 if (args.fail_on_drift and result["drift"]) else 0


def _section_from_logs(thresholds: Mapping[str, Any], tier_rule: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A policy-shaped thresholds section rebuilt from a decision's ``thresholds`` field."""
    if not tier_rule or tier_rule.get("threshold") is None:
        return None
    section: dict[str, Any] = {"tier": tier_rule["threshold"]}
    for head, value in thresholds.items():
        if head != tier_rule["head"] and isinstance(value, Mapping) and head not in ("min_confidence",):
            section["sensitivity"] = dict(value)
            break
    return section
