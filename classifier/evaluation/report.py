"""``tierwise report``: the policy owners' evaluation report of one bundle, and its release gate.

The bundle is run through the torch-free runtime (``Router.logits``: exactly what is served) on
one split of the data set (``--split``, default ``test``); probabilities are the bundle's
temperature-scaled ones, and the tier threshold is the one in the bundle's ``policy.yaml``
(fitted by ``tierwise calibrate``). ``build_report`` computes everything into one plain dict;
``report_render`` turns it into a self-contained HTML page (figures embedded as base64 data URIs,
no external asset) and a Markdown page; the dict itself is written as JSON. All three sit side
by side: ``--out evaluation/report.html`` also writes ``report.md`` and ``report.json``.

What the report holds (JSON keys in brackets):

- **headline** [``headline``]: sentences computed from the data, e.g. "At threshold 0.420, 71.0% of
  traffic stays on the cheap tier, cost is 3.2x lower than all-frontier, and 4.1% (95% CI
  3.3-5.0%) of prompts that needed the frontier tier were kept on the cheap one". Cost is blended
  from per-model prices and each prompt's token counts (``prices.row_costs``), never from a price
  ratio. Every number is also a key of ``headline``, and ``rows`` holds the per-prompt arrays
  (score, label, costs, outcomes, policy decision) a test needs to recompute them.
- **cost curves** [``routing``]: misroute rate and quality against relative cost over all
  thresholds, for the model, the TF-IDF baseline (fitted here on the ``train`` split, because
  ``evaluation/baselines.json`` keeps metrics but not per-prompt scores), the oracle, all-cheap,
  all-frontier and random routers; APGR and the cheap share that recovers 50/80/95% of the
  quality gap (RouteLLM's CPT).
- **heads** [``heads``, ``confusion``]: accuracy / macro-F1 / AUROC with 95% intervals (Wilson for
  rates, bootstrap for AUROC) and confusion matrices; **calibration** [``calibration``]: ECE
  before (T = 1) and after the bundle's ``calibration.json`` temperatures, reliability diagrams;
  **slices** [``slices``]: per source task, prompt length bucket and task class, with intervals.
- **sensitivity** [``sensitivity``]: per sensitive class, the leak rate (prompts of that class the
  full policy would send to a tier the class may not reach: not blocked under a ``block`` rule,
  outside the allowed tiers under ``restrict``) and the worst examples, redacted (digits, e-mail
  addresses, long tokens and ``key=value`` secrets replaced with ■; raw text is never written).
- **misroutes** [``misroutes``]: frontier prompts kept cheap with the lowest scores, and cheap
  prompts escalated with the highest; **thresholds** [``thresholds``]: the risk-controlled
  threshold for alpha 0.02/0.05/0.10 (``thresholds.fit_tier_threshold`` on the calibration split,
  with the method and delta of the policy's provenance) measured on the report split.
- **diff and gate** [``diff``, ``gate``]: with ``--baseline OLD/report.json``, a table of metric
  deltas against that report (``metrics`` holds the flat, comparable numbers) and a release gate:
  exit status 3 when ``--gate-metric`` is worse than in the old report by more than
  ``--max-regression`` (direction-aware: AUROC may not fall, leak rates may not rise).

The report is logged to the bundle's MLflow run (manifest ``training_run_id``, or
``--mlflow-run``) when the store is reachable; otherwise a warning, and the files are still written.

What it leaves out: fitting anything the bundle serves (``tierwise calibrate`` does), monitoring
live traffic (``tierwise drift``), and judging the numbers (the gate compares one metric with a
margin the caller chooses). Thresholds picked on the evaluated rows (CPT, cost at quality) are
optimistic and labelled so.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import ConfigError, DataError
from classifier.evaluation import adapt_sections, long_prompts_section
from classifier.evaluation.prices import DEFAULT_PRICES_PATH
from classifier.evaluation.report_common import finite as _f
from classifier.evaluation.report_common import length_bucket, pct
from classifier.json_io import to_jsonable as _jsonable

logger = logging.getLogger(__name__)

__all__ = [
    "GATE_EXIT",
    "ReportConfig",
    "ReportResult",
    "add_report_arguments",
    "attach_baseline",
    "build_report",
    "check_gate",
    "diff_metrics",
    "headline_sentences",
    "load_report_json",
    "log_to_mlflow",
    "metric_direction",
    "redact",
    "run_report",
    "summary_metrics",
    "write_report",
]

REPORT_FORMAT = "tierwise-report"
REPORT_FORMAT_VERSION = 1
GATE_EXIT = 3
ALPHAS = (0.02, 0.05, 0.10)
PGR_TARGETS = (0.5, 0.8, 0.95)
QUALITY_RATIO = 0.95
CURVE_POINTS = 200  # points kept per curve in the JSON (the sweep itself uses every threshold)
_CHUNK = 256

REDACTED = "\u25a0"  # ■


_SECRET_PATTERNS = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL), REDACTED),
    # key = value / key: value after a secret-looking name: the value goes, the name stays
    (re.compile(r"(?i)(\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth)[\"']?\s{0,3}[:=]\s{0,3})"
                r"[\"']?[^\s\"',;]+[\"']?"), r"\1" + REDACTED),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), REDACTED),  # e-mail addresses
    (re.compile(r"https?://\S+"), REDACTED),  # URLs can carry tokens in their query
    (re.compile(r"[A-Za-z0-9_\-+/=.]{16,}"), REDACTED),  # long tokens: keys, hashes, JWTs, card numbers
    (re.compile(r"\d"), REDACTED),  # any remaining digit: phones, IDs, dates of birth
)


def redact(text: Any, max_chars: int = 240) -> str:
    """``text`` cut to ``max_chars`` with PII/secret-looking spans replaced by ■.

    Deliberately over-eager (every digit goes): a report is shared with people who must not see
    the personal data or credentials a prompt carried. Cutting happens after redaction, so a
    secret straddling the cut cannot leak half of itself. Names and street names without digits
    are not recognised (that needs an NER model); the sensitivity tables show such prompts by id.
    """
    if not isinstance(text, str):
        return ""
    out = text
    for rx, repl in _SECRET_PATTERNS:
        out = rx.sub(repl, out)
    out = re.sub(REDACTED + "{2,}", REDACTED, out)
    out = " ".join(out.split())
    return out if len(out) <= max_chars else out[: max_chars - 1] + "\u2026"


# -- configuration -------------------------------------------------------------------------------
@dataclass
class ReportConfig:
    """What ``build_report`` evaluates. Paths may be strings; they are turned into ``Path``s."""

    bundle: Path
    data: Path = Path("data/build")
    prices: Path = DEFAULT_PRICES_PATH
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    threads: int = 1
    baseline_router: bool = True
    train_limit: int | None = 20_000
    top_k: int = 10
    n_boot: int = 200

    def __post_init__(self) -> None:
        for name in ("bundle", "data", "prices"):
            setattr(self, name, Path(getattr(self, name)))
        if not isinstance(self.split, str) or not self.split:
            raise ConfigError("split must be a non-empty split name, e.g. 'test'")
        for name in ("limit", "train_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        for name, lo in (("threads", 1), ("top_k", 1), ("n_boot", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


@dataclass
class ReportResult:
    """The report data (plain JSON-able dict) and its figures (name -> PNG data URI)."""

    report: dict[str, Any]
    figures: dict[str, str] = field(default_factory=dict)


# -- data ----------------------------------------------------------------------------------------
def _take(frame: pd.DataFrame, split: str, limit: int | None, seed: int, source: Path) -> pd.DataFrame:
    """The rows of one split (a seeded sample of ``limit``), without prompts the runtime refuses."""
    from classifier.data.reader import select_split
    from classifier.serving.runtime import check_text

    part = select_split(frame, split, limit, seed)
    ok = np.array([check_text(t) is None for t in part["text"]], dtype=bool)
    if not ok.all():
        # the runtime answers these with its safe decision; they carry no model scores to evaluate
        first = part.index[int(np.flatnonzero(~ok)[0])]
        logger.warning("%s split %r: %d prompt(s) are empty or not text (first at row %s) and are left out",
                       source, split, int((~ok).sum()), first)
    return part[ok].reset_index(drop=True)


def _logits(router: Any, texts: Sequence[str], desc: str) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    parts: list[dict[str, np.ndarray]] = []
    for start in tqdm(range(0, len(texts), _CHUNK), desc=desc, unit="chunk", disable=len(texts) <= 4 * _CHUNK):
        parts.append(router.logits(list(texts[start:start + _CHUNK])))
    if not parts:
        return {h: np.zeros((0, router.schema.head(h).num_classes)) for h in router.head_names}
    return {h: np.concatenate([p[h] for p in parts]).astype(np.float64) for h in router.head_names}


def _texts(frame: pd.DataFrame) -> list[str]:
    return [str(t) for t in frame["text"].tolist()]


# -- pieces of the report ----------------------------------------------------------------------------
def _curve(sweep: pd.DataFrame, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """A threshold sweep thinned to at most ``points`` rows (always keeping both ends)."""
    if len(sweep) > points:
        idx = np.unique(np.linspace(0, len(sweep) - 1, points).round().astype(int))
        sweep = sweep.iloc[idx]
    cols = ("threshold", "cheap_share", "relative_cost", "quality", "pgr", "misroute_rate",
            "conditional_misroute_rate")
    # the last threshold is +inf ("everything cheap"): it becomes null in JSON
    return {c: [_f(v) for v in sweep[c].to_numpy()] for c in cols}


def _head_metrics(schema: Any, frame: pd.DataFrame, probs: Mapping[str, np.ndarray], n_boot: int,
                  seed: int) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from classifier.data.labels import label_indices
    from classifier.evaluation.metrics import (
        bootstrap_ci,
        evaluate_heads,
        head_score,
        wilson_interval,
    )

    base = evaluate_heads(schema, frame, probs)
    out: dict[str, Any] = {}
    for head in schema.heads:
        m = dict(base.get(head.name, {"n": 0.0}))
        mask, y = label_indices(head, frame)
        n = int(mask.sum())
        if n:
            pred = probs[head.name][mask].argmax(axis=1)
            k = int(np.sum(pred == y))
            m["accuracy_ci"] = list(wilson_interval(k, n))
            score = head_score(head, probs[head.name][mask])
            if "auroc" in m and score is not None and n_boot > 0:
                target = _auroc_target(head, y)
                _, lo, hi = bootstrap_ci(roc_auc_score, target, score, n_boot=n_boot, seed=seed)
                m["auroc_ci"] = [lo, hi]
        out[head.name] = m
    return out


def _auroc_target(head: Any, y: np.ndarray) -> np.ndarray:
    """The binary target ``metrics.head_score`` is scored against (positive, or "not benign")."""
    if head.negative_class is not None and (head.num_classes > 2 or head.positive_class is None):
        return (y != head.index(head.negative_class)).astype(np.int64)
    return (y == (head.index(head.positive_class) if head.positive_class else 1)).astype(np.int64)


def _calibration_section(schema: Any, frame: pd.DataFrame, logits: Mapping[str, np.ndarray],
                         temperatures: Mapping[str, float]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """ECE/Brier/NLL before and after, and the reliability bins behind the diagrams."""
    from classifier.data.labels import label_indices
    from classifier.evaluation import calibration as cal

    section: dict[str, Any] = {}
    bins: dict[str, dict[str, Any]] = {}
    for head in schema.heads:
        mask, y = label_indices(head, frame)
        if not mask.any():
            continue
        z = logits[head.name][mask]
        t = float(temperatures.get(head.name, 1.0))
        pos = None
        if head.num_classes == 2:
            pos = head.index(head.positive_class) if head.positive_class else 1
        before = cal.metrics(cal.softmax(z), y, positive=pos)
        after = cal.metrics(cal.softmax(z, t), y, positive=pos)
        section[head.name] = {"n": int(mask.sum()), "temperature": t, "before": before, "after": after,
                              "plotted": "positive" if pos is not None else "top_class"}
        head_bins = {}
        for label, temp in (("before", 1.0), ("after", t)):
            p = cal.softmax(z, temp)
            if pos is not None:
                conf, hit = p[:, pos], (y == pos).astype(float)
            else:
                conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
            head_bins[label] = cal.reliability_bins(conf, hit)
        head_bins["xlabel"] = (f"predicted p({head.classes[pos]})" if pos is not None else "top-class confidence")
        bins[head.name] = head_bins
    return section, bins


def _rate(k: int, n: int) -> dict[str, Any]:
    from classifier.evaluation.metrics import wilson_interval

    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci": [None, None]}
    lo, hi = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n, "ci": [lo, hi]}


def _slices(frame: pd.DataFrame, schema: Any, tier_head: Any, probs: Mapping[str, np.ndarray], pos: int,
            threshold: float, task_head: Any | None) -> dict[str, list[dict[str, Any]]]:
    """Per-slice tier accuracy, cheap share, misroute rate and task accuracy, with Wilson CIs."""
    from classifier.data.labels import label_indices

    tmask, ty = label_indices(tier_head, frame)
    tier_y = np.full(len(frame), -1)
    tier_y[tmask] = ty
    p_front = probs[tier_head.name][:, pos]
    tier_pred = probs[tier_head.name].argmax(axis=1)
    task_y = np.full(len(frame), -1)
    task_pred = None
    if task_head is not None:
        kmask, ky = label_indices(task_head, frame)
        task_y[kmask] = ky
        task_pred = probs[task_head.name].argmax(axis=1)
    keys: dict[str, np.ndarray] = {}
    if "source_task" in frame.columns:
        keys["source_task"] = frame["source_task"].fillna("(none)").astype(str).to_numpy()
    keys["length"] = np.asarray(length_bucket(frame["text"].tolist()), dtype=object)
    if task_head is not None and task_head.column in frame.columns:
        keys["task"] = frame[task_head.column].fillna("(no task label)").astype(str).to_numpy()
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, values in keys.items():
        rows = []
        for value in pd.unique(values):
            sel = values == value
            labelled = sel & (tier_y >= 0)
            frontier = labelled & (tier_y == pos)
            row: dict[str, Any] = {"slice": str(value), "n": int(sel.sum()), "n_tier": int(labelled.sum())}
            row["tier_accuracy"] = _rate(int(np.sum(tier_pred[labelled] == tier_y[labelled])), int(labelled.sum()))
            row["cheap_share"] = _rate(int(np.sum(p_front[labelled] < threshold)), int(labelled.sum()))
            row["misroute_rate_frontier"] = _rate(int(np.sum(p_front[frontier] < threshold)), int(frontier.sum()))
            if task_pred is not None:
                tl = sel & (task_y >= 0)
                row["task_accuracy"] = _rate(int(np.sum(task_pred[tl] == task_y[tl])), int(tl.sum()))
            rows.append(row)
        rows.sort(key=lambda r: (-r["n"], r["slice"]))
        out[kind] = rows
    return out


def _allowed_tiers(policy: Any) -> dict[str, list[str] | None]:
    """Per sensitivity class with a rule: the tiers it may reach ([] = must be blocked; None = any)."""
    out: dict[str, list[str] | None] = {}
    for cls_name, rule in policy.sensitivity_rules.items():
        if rule.action == "block":
            out[cls_name] = []
        elif rule.action == "restrict":
            out[cls_name] = [t.name for t in policy.tiers
                             if t.name in rule.allowed_tiers or t.trust in rule.allowed_trust]
        else:
            out[cls_name] = None
    return out


def _sensitivity_section(frame: pd.DataFrame, schema: Any, policy: Any, probs: Mapping[str, np.ndarray],
                         routed: np.ndarray, top_k: int) -> dict[str, Any]:
    from classifier.data.labels import label_indices

    name = policy.sensitivity_head
    if not name or name not in schema:
        return {}
    head = schema.head(name)
    mask, y = label_indices(head, frame)
    labels = np.full(len(frame), -1)
    labels[mask] = y
    allowed = _allowed_tiers(policy)
    out: dict[str, Any] = {}
    for j, cls_name in enumerate(head.classes):
        if cls_name == head.negative_class:
            continue
        rows = np.flatnonzero(labels == j)
        rule = policy.sensitivity_rules.get(cls_name)
        ok = allowed.get(cls_name)
        entry: dict[str, Any] = {
            "rule": None if rule is None else rule.action,
            "allowed_tiers": ok,
            "threshold": policy.sensitivity_thresholds.get(cls_name),
            "n": int(rows.size),
        }
        if ok is None:
            # no rule (or 'allow'): nothing can leak; say so instead of reporting a zero
            leaked = np.zeros(rows.size, dtype=bool)
            entry["note"] = "no block/restrict rule for this class: any tier may serve it"
        else:
            leaked = np.array([routed[i] != "blocked" and routed[i] not in ok for i in rows], dtype=bool)
        entry["leak"] = _rate(int(leaked.sum()), int(rows.size))
        thr = policy.sensitivity_thresholds.get(cls_name)
        if thr is not None and rows.size:
            entry["detected"] = _rate(int(np.sum(probs[name][rows, j] >= thr)), int(rows.size))
        entry["routed_to"] = {str(k): int(v) for k, v in pd.Series(routed[rows]).value_counts().items()} if rows.size else {}
        worst = rows[leaked]
        worst = worst[np.argsort(probs[name][worst, j], kind="stable")][:top_k]
        entry["worst_examples"] = [{
            "id": str(frame["id"].iloc[i]) if "id" in frame.columns else str(i),
            "text": redact(frame["text"].iloc[i]),
            "source_task": str(frame["source_task"].iloc[i]) if "source_task" in frame.columns else None,
            "p_class": float(probs[name][i, j]),
            "routed_to": str(routed[i]),
        } for i in worst]
        out[cls_name] = entry
    return out


def _misroutes(frame: pd.DataFrame, schema: Any, tier_head: Any, probs: Mapping[str, np.ndarray], pos: int,
               threshold: float, task_head: Any | None, top_k: int) -> dict[str, list[dict[str, Any]]]:
    from classifier.data.labels import label_indices

    mask, y = label_indices(tier_head, frame)
    rows = np.flatnonzero(mask)
    p = probs[tier_head.name][:, pos]
    need = y == pos
    kept = rows[need & (p[rows] < threshold)]
    kept = kept[np.argsort(p[kept], kind="stable")][:top_k]
    esc = rows[~need & (p[rows] >= threshold)]
    esc = esc[np.argsort(-p[esc], kind="stable")][:top_k]

    def item(i: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(frame["id"].iloc[i]) if "id" in frame.columns else str(i),
            "text": redact(frame["text"].iloc[i]),
            "source_task": str(frame["source_task"].iloc[i]) if "source_task" in frame.columns else None,
            "p_frontier": float(p[i]),
            "probabilities": {h.name: {c: round(float(probs[h.name][i, k]), 4) for k, c in enumerate(h.classes)}
                              for h in schema.heads},
        }
        for col in ("cheap_correct", "frontier_correct"):
            if col in frame.columns:
                out[col] = _f(frame[col].iloc[i])
        if task_head is not None and task_head.column in frame.columns:
            v = frame[task_head.column].iloc[i]
            out["task"] = None if pd.isna(v) else str(v)
        return out

    return {"kept_cheap": [item(i) for i in kept], "escalated": [item(i) for i in esc]}


def _threshold_table(policy: Any, cal_scores: np.ndarray | None, cal_need: np.ndarray | None,
                     cal_costs: tuple[np.ndarray, np.ndarray] | None, scores: np.ndarray, need: np.ndarray,
                     costs: tuple[np.ndarray, np.ndarray], fitted_on: str) -> dict[str, Any]:
    """alpha -> risk-controlled threshold (fitted on calibration rows) measured on the report rows."""
    from classifier.evaluation import thresholds as th

    prov = policy.threshold_provenance.get("tier") if isinstance(policy.threshold_provenance, Mapping) else None
    prov = prov if isinstance(prov, Mapping) else {}
    method = prov.get("method") if prov.get("method") in th.METHODS else "ltt"
    delta = prov.get("delta")
    delta = float(delta) if isinstance(delta, (int, float)) and 0 < delta < 1 else 0.1
    fit_s, fit_y, fit_c = (cal_scores, cal_need, cal_costs) if cal_scores is not None else (scores, need, costs)
    rows = []
    for alpha in ALPHAS:
        fitted = th.fit_tier_threshold(fit_s, fit_y, alpha=alpha, delta=delta, method=method,
                                       cost_cheap=fit_c[0] if fit_c else None,
                                       cost_frontier=fit_c[1] if fit_c else None)
        measured = th.evaluate_tier_threshold(fitted.threshold, scores, need, cost_cheap=costs[0],
                                              cost_frontier=costs[1], delta=delta)
        rows.append({"alpha": alpha, "threshold": fitted.threshold, "feasible": fitted.feasible,
                     "fit_misroute_upper": fitted.misroute_upper, "measured": measured,
                     "meets_budget": bool(measured["misroute_rate"] <= alpha + 1e-12)})
    current = th.evaluate_tier_threshold(policy.tier_threshold, scores, need, cost_cheap=costs[0],
                                         cost_frontier=costs[1], delta=delta)
    return {"method": method, "delta": delta, "fitted_on": fitted_on, "rows": rows,
            "policy": {"threshold": policy.tier_threshold, "alpha": prov.get("alpha"), "measured": current}}


def _fit_tfidf(schema: Any, train: pd.DataFrame, limit: int | None, seed: int) -> Any | None:
    """The TF-IDF + logistic-regression baseline fitted on the train split (None without one)."""
    from classifier.evaluation.baselines import TfidfLogRegBaseline

    if train.empty:
        logger.warning("no 'train' rows in the data set: the report has no TF-IDF baseline curve")
        return None
    from classifier.data.reader import select_split

    train = select_split(train, None, limit, seed)
    # smaller vocabularies than `tierwise baseline`: the report needs a reference curve, fast
    model = TfidfLogRegBaseline(schema, max_word_features=20_000, max_char_features=30_000, max_iter=300)
    logger.info("fitting the TF-IDF baseline on %d train rows", len(train))
    return model.fit(train)


# -- headline --------------------------------------------------------------------------------------
def headline_sentences(h: Mapping[str, Any]) -> list[str]:
    """The headline sentences, from the numbers in ``report["headline"]`` only."""
    lo, hi = h["misroute_ci"]
    ratio = h["cost_ratio"]
    if ratio is None:
        ratio_txt = "not comparable with all-frontier (zero cost)"
    elif ratio >= 1.05:
        ratio_txt = f"{ratio:.1f}x lower than all-frontier"
    else:  # "1.0x lower" reads wrong: say the share instead
        ratio_txt = f"{pct(h['relative_cost'], 0)} of all-frontier"
    out = [
        f"At threshold {h['threshold']:.3f}, {pct(h['cheap_share'])} of traffic stays on the cheap tier, "
        f"cost is {ratio_txt}, and {pct(h['misroute_rate_frontier'])} (95% CI {100 * lo:.1f}-{pct(hi)}) "
        f"of prompts that needed the frontier tier were kept on the cheap one."
        if lo is not None and hi is not None else
        f"At threshold {h['threshold']:.3f}, {pct(h['cheap_share'])} of traffic stays on the cheap tier and "
        f"cost is {ratio_txt} (no prompt in this split needed the frontier tier).",
        f"Quality (mean correctness of the tier each prompt is sent to) is {h['quality']:.3f}, against "
        f"{h['quality_all_frontier']:.3f} all-frontier and {h['quality_all_cheap']:.3f} all-cheap "
        f"({h['cost']:.4f} vs {h['cost_all_frontier']:.4f} {h['currency']} for {h['n']} prompts).",
    ]
    if h.get("apgr") is not None:
        text = f"Over all thresholds the router's APGR is {h['apgr']:.3f} (random 0.500, oracle {h['apgr_oracle']:.3f}"
        if h.get("apgr_baseline") is not None:
            text += f", TF-IDF baseline {h['apgr_baseline']:.3f}"
        out.append(text + ").")
    shares = h.get("policy_shares") or {}
    if shares:
        parts = ", ".join(f"{k} {pct(v)}" for k, v in shares.items())
        out.append(f"With the whole policy (task overrides, uncertainty band, sensitivity gates) on all "
                   f"{h['policy_n']} prompts of the split: {parts}.")
    for cls_name, leak in (h.get("leaks") or {}).items():
        out.append(f"{pct(leak['rate'])} of {cls_name} prompts ({leak['k']} of {leak['n']}) would reach a tier "
                   f"their class may not reach.")
    return out


# -- the report ------------------------------------------------------------------------------------
def build_report(config: ReportConfig) -> ReportResult:  # noqa: C901 - one linear walk over the sections
    """Run the bundle on the data and compute every section of the report (see the module docstring)."""
    from classifier.data.reader import dataset_file, read_dataset
    from classifier.evaluation import plots
    from classifier.evaluation.calibration import softmax
    from classifier.evaluation.costs import (
        RoutingOutcomes,
        apply_threshold,
        cpt,
        frontier_quality_target,
        oracle_scores,
        reference_routers,
        summarize_router,
        threshold_sweep,
    )
    from classifier.evaluation.metrics import confusion
    from classifier.evaluation.prices import Prices, row_costs
    from classifier.serving import bundle as bundle_io
    from classifier.serving.policy import PolicyEngine
    from classifier.serving.runtime import Router

    data_file = dataset_file(config.data)
    prices = Prices.from_yaml(config.prices)
    dataset = read_dataset(data_file)
    frame = _take(dataset, config.split, config.limit, config.seed, data_file)
    splits_present = sorted(str(s) for s in dataset["split"].dropna().unique())
    if frame.empty:
        raise DataError(f"{data_file}: no rows with split == {config.split!r} (splits present: "
                        f"{splits_present}); pass --split with one of them")
    cal_frame = None
    if config.split != "calibration" and "calibration" in splits_present:
        cal_frame = _take(dataset, "calibration", config.limit, config.seed, data_file)
    train_frame = dataset[dataset["split"] == "train"]  # the TF-IDF router (if asked) and the task prior
    del dataset

    with Router.load(config.bundle, threads=config.threads) as router:
        schema, policy, manifest = router.schema, router.policy, router.manifest
        temperatures = dict(router.temperatures)
        logits = _logits(router, _texts(frame), f"{config.split} logits")
        cal_logits = _logits(router, _texts(cal_frame), "calibration logits") if cal_frame is not None else None
        probs = router.proba_from_logits(logits)
        cal_probs = router.proba_from_logits(cal_logits) if cal_logits is not None else None
    raw_probs = {h: softmax(z) for h, z in logits.items()}

    tier_head = schema.head(policy.tier_head)
    pos = tier_head.index(tier_head.positive_class) if tier_head.positive_class else 1
    task_head = schema.head(policy.task_head) if policy.task_head and policy.task_head in schema else None
    threshold = float(policy.tier_threshold)
    figures: dict[str, str] = {}

    # routing and costs -------------------------------------------------------------------------
    outcomes = RoutingOutcomes.from_frame(frame, prices, tier_column=tier_head.column,
                                          frontier_class=tier_head.classes[pos])
    if len(outcomes) == 0:
        raise DataError(
            f"{data_file} split {config.split!r}: no row has tier outcomes (cheap_correct, frontier_correct), "
            "models and token counts, so routing cost cannot be reported; rebuild the data set or pick another split"
        )
    p_all = probs[tier_head.name][:, pos]
    p_route = p_all[outcomes.rows]
    at = apply_threshold(outcomes, p_route, threshold)
    refs = reference_routers(outcomes, quality_ratio=QUALITY_RATIO)
    baseline_scores = None
    if config.baseline_router:
        tfidf = _fit_tfidf(schema, train_frame, config.train_limit, config.seed)
        if tfidf is not None:
            baseline_scores = tfidf.predict_proba(frame.iloc[outcomes.rows])[tier_head.name][:, pos]
    routers = {"model": summarize_router(outcomes, p_route, quality_ratio=QUALITY_RATIO, pgr_targets=PGR_TARGETS)}
    curves = {"model": _curve(threshold_sweep(outcomes, p_route))}
    if baseline_scores is not None:
        routers["tfidf_baseline"] = summarize_router(outcomes, baseline_scores, quality_ratio=QUALITY_RATIO,
                                                     pgr_targets=PGR_TARGETS)
        curves["tfidf_baseline"] = _curve(threshold_sweep(outcomes, baseline_scores))
    curves["oracle"] = _curve(threshold_sweep(outcomes, oracle_scores(outcomes)))
    routers["oracle"] = {"apgr": refs["oracle"]["apgr"], "cpt": cpt(outcomes, oracle_scores(outcomes), PGR_TARGETS)}

    n_front = int(outcomes.needs_frontier.sum())
    misroutes = int(np.sum(outcomes.needs_frontier & (p_route < threshold)))
    mis = _rate(misroutes, n_front)
    cost_all_front = outcomes.total_cost_frontier
    headline: dict[str, Any] = {
        "threshold": threshold,
        "n": len(outcomes),
        "currency": prices.currency,
        "cheap_share": at["cheap_share"],
        "frontier_share": at["frontier_share"],
        "cost": at["cost"],
        "cost_all_frontier": cost_all_front,
        "cost_all_cheap": outcomes.total_cost_cheap,
        "relative_cost": at["relative_cost"],
        "cost_ratio": cost_all_front / at["cost"] if at["cost"] > 0 else None,
        "saving": 1.0 - at["relative_cost"] if _f(at["relative_cost"]) is not None else None,
        "n_needs_frontier": n_front,
        "misroutes": misroutes,
        "misroute_rate_frontier": mis["rate"],
        "misroute_ci": mis["ci"],
        "misroute_rate": at["misroute_rate"],
        "quality": at["quality"],
        "quality_all_frontier": outcomes.quality_frontier,
        "quality_all_cheap": outcomes.quality_cheap,
        "pgr": at["pgr"],
        "apgr": routers["model"]["apgr"],
        "apgr_oracle": refs["oracle"]["apgr"],
        "apgr_baseline": routers["tfidf_baseline"]["apgr"] if "tfidf_baseline" in routers else None,
    }

    # the whole policy on every row of the split ----------------------------------------------------
    engine = PolicyEngine(policy, schema)
    idx = engine.tier_indices(probs)
    names = policy.tier_names
    routed = np.array(["blocked" if i < 0 else names[i] for i in idx], dtype=object)
    shares = {name: float(np.mean(routed == name)) for name in [*names, "blocked"]}
    headline["policy_shares"] = shares
    headline["policy_n"] = len(frame)

    # sensitivity -----------------------------------------------------------------------------------
    sensitivity = _sensitivity_section(frame, schema, policy, probs, routed, config.top_k)
    headline["leaks"] = {c: e["leak"] for c, e in sensitivity.items() if e.get("allowed_tiers") is not None and e["n"]}
    headline["sentences"] = headline_sentences(_jsonable(headline))

    # heads, confusion, calibration, slices --------------------------------------------------------
    heads = _head_metrics(schema, frame, probs, config.n_boot, config.seed)
    conf = confusion(schema, frame, probs)
    confusion_out = {h: {"classes": list(schema.head(h).classes), "matrix": m.tolist()} for h, m in conf.items()}
    for h, m in conf.items():
        if m.sum():
            figures[f"confusion_{h}"] = plots.data_uri(plots.confusion_png(
                f"{h} ({config.split}, n={int(m.sum())})", schema.head(h).classes, m))
    calib, bins = _calibration_section(schema, frame, logits, temperatures)
    for h, b in bins.items():
        c = calib[h]
        key = "ece_positive" if c["plotted"] == "positive" else "ece"
        figures[f"reliability_{h}"] = plots.data_uri(plots.reliability_png(
            f"reliability of head '{h}' on {config.split} (n={c['n']})", b["before"], b["after"], xlabel=b["xlabel"],
            ece_before=c["before"][key], ece_after=c["after"][key], temperature=c["temperature"]))
    calib_bins = {h: {k: (v if isinstance(v, str) else {kk: np.asarray(vv).tolist() for kk, vv in v.items()})
                      for k, v in b.items()} for h, b in bins.items()}
    raw_heads = _head_metrics(schema, frame, raw_probs, 0, config.seed)
    slices = _slices(frame, schema, tier_head, probs, pos, threshold, task_head)

    # cost-curve figure ------------------------------------------------------------------------
    point_keys = ("relative_cost", "conditional_misroute_rate", "quality")
    points = {k: {kk: float(refs[k][kk]) for kk in point_keys} for k in ("all_cheap", "all_frontier", "oracle")}
    figures["cost_curves"] = plots.data_uri(plots.cost_curves_png(
        {k: v for k, v in curves.items() if k != "oracle"} | {"oracle (sweep)": curves["oracle"]}, points,
        operating_point={"threshold": threshold, **{k: float(at[k]) for k in point_keys}},
        quality_target=frontier_quality_target(outcomes, QUALITY_RATIO),
        title=f"{config.split} split, {len(outcomes)} prompts with tier outcomes"))

    # thresholds table --------------------------------------------------------------------------
    tmask_rows = np.flatnonzero(frame[tier_head.column].notna().to_numpy()) if tier_head.column in frame.columns \
        else np.zeros(0, dtype=int)
    cost_c, cost_f = row_costs(frame, prices)
    need_all = (frame[tier_head.column] == tier_head.classes[pos]).to_numpy() if tier_head.column in frame.columns \
        else np.zeros(len(frame), dtype=bool)
    thresholds: dict[str, Any] = {}
    if tmask_rows.size:
        cal_args: tuple[Any, Any, Any] = (None, None, None)
        fitted_on = f"{config.split} split itself (no calibration split: optimistic)"
        if cal_frame is not None and cal_probs is not None and tier_head.column in cal_frame.columns:
            crow = np.flatnonzero(cal_frame[tier_head.column].notna().to_numpy())
            if crow.size:
                cc, cf = row_costs(cal_frame, prices)
                cneed = (cal_frame[tier_head.column] == tier_head.classes[pos]).to_numpy()
                cal_args = (cal_probs[tier_head.name][crow, pos], cneed[crow], (cc[crow], cf[crow]))
                fitted_on = f"calibration split ({crow.size} rows)"
        thresholds = _threshold_table(policy, *cal_args, p_all[tmask_rows], need_all[tmask_rows],
                                      (cost_c[tmask_rows], cost_f[tmask_rows]), fitted_on)

    misroute_lists = _misroutes(frame, schema, tier_head, probs, pos, threshold, task_head, config.top_k)

    # per-row arrays: what a reader (or a test) recomputes the headline from ----------------------
    in_route = np.zeros(len(frame), dtype=bool)
    in_route[outcomes.rows] = True
    sens_col = schema.head(policy.sensitivity_head).column if policy.sensitivity_head in schema else None
    rows = {
        "id": frame["id"].astype(str).tolist() if "id" in frame.columns else [str(i) for i in range(len(frame))],
        "p_frontier": p_all,
        "tier_label": [None if pd.isna(v) else str(v) for v in frame[tier_head.column]]
        if tier_head.column in frame.columns else [None] * len(frame),
        "sensitivity_label": [None if pd.isna(v) else str(v) for v in frame[sens_col]]
        if sens_col and sens_col in frame.columns else [None] * len(frame),
        "routed": in_route,
        "needs_frontier": need_all,
        "cost_cheap": cost_c,
        "cost_frontier": cost_f,
        "cheap_correct": pd.to_numeric(frame.get("cheap_correct"), errors="coerce").to_numpy(dtype=float)
        if "cheap_correct" in frame.columns else np.full(len(frame), np.nan),
        "frontier_correct": pd.to_numeric(frame.get("frontier_correct"), errors="coerce").to_numpy(dtype=float)
        if "frontier_correct" in frame.columns else np.full(len(frame), np.nan),
        "policy_tier": routed.tolist(),
    }
    if baseline_scores is not None:
        b = np.full(len(frame), np.nan)
        b[outcomes.rows] = baseline_scores
        rows["p_frontier_baseline"] = b

    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "meta": {
            "created_at": now,
            "bundle": str(config.bundle),
            "bundle_kind": manifest.kind,
            "model_sha256": manifest.files.get(bundle_io.MODEL_FILE),
            "quantization": manifest.quantization,
            "training_run_id": manifest.training_run_id,
            "mlflow_model_version": manifest.mlflow_model_version,
            "policy_owner": policy.owner,
            "policy_version": policy.version,
            "policy_tiers": [{"name": t.name, "model": t.model, "trust": t.trust} for t in policy.tiers],
            "sensitivity_allowed_tiers": _allowed_tiers(policy),
            "tier_head": tier_head.name,
            "positive_class": tier_head.classes[pos],
            "temperatures": temperatures,
            "data": str(data_file),
            "split": config.split,
            "n_rows": len(frame),
            "limit": config.limit,
            "seed": config.seed,
            "prices": str(config.prices),
            "currency": prices.currency,
            "quality_ratio": QUALITY_RATIO,
            "baseline_router": "tfidf_logreg fitted on the train split" if baseline_scores is not None else None,
        },
        "headline": headline,
        "routing": {
            "n": len(outcomes),
            "at_threshold": at,
            "references": refs,
            "routers": routers,
            "curves": curves,
        },
        "heads": heads,
        "heads_uncalibrated": raw_heads,
        "confusion": confusion_out,
        "calibration": {"heads": calib, "bins": calib_bins},
        "slices": slices,
        "sensitivity": sensitivity,
        "misroutes": misroute_lists,
        "thresholds": thresholds,
        "rows": rows,
        "figures": sorted(figures),
        "long_prompts": long_prompts_section.section(),  # from `tierwise eval long-prompts` / `eval positions`
        # task-prior bar, both budgets, the adaptation record of an adapted bundle, the learning curve
        "adapt": adapt_sections.section(
            schema=schema, tier_name=tier_head.name, pos=pos, frame=frame, p_all=p_all, outcomes=outcomes,
            prices=prices, train=train_frame, cal_frame=cal_frame,
            cal_p=None if cal_probs is None else cal_probs[tier_head.name][:, pos], manifest_extra=manifest.extra),
    }
    report = _jsonable(report)
    report["metrics"] = summary_metrics(report)
    return ReportResult(report=report, figures=figures)


# -- comparable numbers, diff and gate ---------------------------------------------------------------
def summary_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The flat ``name -> number`` view of a report that ``--baseline`` diffs and the gate reads."""
    out: dict[str, float] = {}
    for head, m in (report.get("heads") or {}).items():
        for key in ("accuracy", "macro_f1", "auroc"):
            if _f(m.get(key)) is not None:
                out[f"{head}_{key}"] = float(m[key])
    for head, c in ((report.get("calibration") or {}).get("heads") or {}).items():
        for key in ("ece", "ece_positive"):
            if _f(c.get("after", {}).get(key)) is not None:
                out[f"{head}_{key}_calibrated"] = float(c["after"][key])
    h = report.get("headline") or {}
    for key in ("cheap_share", "relative_cost", "cost_ratio", "misroute_rate_frontier", "misroute_rate",
                "quality", "pgr", "apgr"):
        if _f(h.get(key)) is not None:
            out[key] = float(h[key])
    cpts = (((report.get("routing") or {}).get("routers") or {}).get("model") or {}).get("cpt") or {}
    for key, point in cpts.items():
        if point and _f(point.get("cheap_share")) is not None:
            out[f"cheap_share_at_{key}"] = float(point["cheap_share"])
    for cls_name, leak in (h.get("leaks") or {}).items():
        if _f(leak.get("rate")) is not None:
            out[f"leak_rate_{cls_name}"] = float(leak["rate"])
    return out


_LOWER_IS_BETTER = re.compile(r"(^relative_cost$|misroute|^leak_rate_|_ece|^ece)")


def metric_direction(name: str) -> int:
    """+1 when a larger value is better (AUROC, APGR, accuracy), -1 when smaller is (misroutes, ECE)."""
    return -1 if _LOWER_IS_BETTER.search(name) else 1


def diff_metrics(old: Mapping[str, float], new: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per metric in either report: old, new, delta and how much worse (>0 = regression)."""
    rows = []
    for name in sorted(set(old) | set(new)):
        o, n = _f(old.get(name)), _f(new.get(name))
        d = metric_direction(name)
        row: dict[str, Any] = {"metric": name, "old": o, "new": n, "direction": "higher" if d > 0 else "lower",
                               "delta": None, "worse_by": None}
        if o is not None and n is not None:
            row["delta"] = n - o
            row["worse_by"] = (o - n) if d > 0 else (n - o)
        rows.append(row)
    return rows


def check_gate(diff: Sequence[Mapping[str, Any]], metric: str, max_regression: float) -> dict[str, Any]:
    """The release gate: passes unless ``metric`` got worse by more than ``max_regression``."""
    if isinstance(max_regression, bool) or not isinstance(max_regression, (int, float)) or max_regression < 0 \
            or not math.isfinite(max_regression):
        raise ConfigError(f"--max-regression must be a number >= 0, got {max_regression!r}")
    by_name = {r["metric"]: r for r in diff}
    row = by_name.get(metric)
    if row is None or row["old"] is None or row["new"] is None:
        where = "either report" if row is None else ("the baseline report" if row["old"] is None else "this report")
        raise ConfigError(f"--gate-metric {metric!r} is not in {where}; comparable metrics: "
                          f"{sorted(k for k, r in by_name.items() if r['old'] is not None and r['new'] is not None)}")
    worse = float(row["worse_by"])
    passed = worse <= max_regression + 1e-12
    verb = "fell" if row["delta"] < 0 else "rose"
    change = f"{metric} {verb} from {row['old']:.4f} to {row['new']:.4f} ({row['delta']:+.4f}; {row['direction']} is better)"
    if passed:
        message = f"release gate passed: {change}, within the allowed regression of {max_regression:g}"
    else:
        message = (f"release gate FAILED: {change}, worse by {worse:.4f}, more than the allowed "
                   f"{max_regression:g}; do not ship this bundle, or pass a larger --max-regression on purpose")
    return {"metric": metric, "old": row["old"], "new": row["new"], "worse_by": worse,
            "max_regression": float(max_regression), "passed": passed, "message": message}


def load_report_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise ConfigError(f"--baseline {path}: no such report; pass the report.json of a previous 'tierwise report'")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--baseline {path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise ConfigError(f"--baseline {path}: not a tierwise report (format {REPORT_FORMAT!r} expected)")
    if not isinstance(doc.get("metrics"), dict):
        doc["metrics"] = summary_metrics(doc)
    return doc


def attach_baseline(report: dict[str, Any], old: Mapping[str, Any], source: str, gate_metric: str | None,
                    max_regression: float) -> dict[str, Any] | None:
    """Add ``diff`` (and ``gate`` when ``gate_metric``) to ``report``; returns the gate result."""
    rows = diff_metrics(old.get("metrics") or {}, report["metrics"])
    report["diff"] = {"baseline": source, "baseline_bundle": (old.get("meta") or {}).get("bundle"),
                      "baseline_created_at": (old.get("meta") or {}).get("created_at"), "rows": rows}
    if not gate_metric:
        return None
    gate = check_gate(rows, gate_metric, max_regression)
    report["gate"] = gate
    return gate


# -- output ----------------------------------------------------------------------------------------
def write_report(result: ReportResult, out: str | Path) -> dict[str, Path]:
    """Write ``out`` (HTML) and ``report.md`` / ``report.json`` beside it; returns the paths."""
    from classifier.evaluation.report_render import render_html, render_markdown

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: must name the HTML file, e.g. evaluation/report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"html": out, "md": out.with_name("report.md"), "json": out.with_name("report.json")}
    paths["json"].write_text(json.dumps(result.report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    paths["md"].write_text(render_markdown(result.report), encoding="utf-8")
    paths["html"].write_text(render_html(result.report, result.figures), encoding="utf-8")
    return paths


def log_to_mlflow(run_id: str | None, paths: Mapping[str, Path], metrics: Mapping[str, float]) -> bool:
    """Log the report files and its metrics to run ``run_id``; warn and return False when not possible."""
    if not run_id:
        logger.info("the bundle names no MLflow run (manifest training_run_id) and none was given: not logged")
        return False
    from classifier import tracking

    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            logger.warning("MLflow store %s does not exist: the report is not logged to run %s", uri, run_id)
            return False
    try:
        import time

        from mlflow.entities import Metric

        client = tracking.client(uri)
        client.get_run(run_id)  # raises when the run is not in this store
        for p in paths.values():
            client.log_artifact(run_id, str(p), "report")
        now = int(time.time() * 1000)
        items = [Metric(tracking.metric_key(f"report/{k}"), float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i:i + 1000])
    except Exception as exc:  # noqa: BLE001 - an unreachable store must not cost the report (warn, go on)
        logger.warning("could not log the report to MLflow run %s at %s: %s: %s", run_id, uri,
                       type(exc).__name__, exc)
        return False
    logger.info("logged the report to MLflow run %s", run_id)
    return True


# -- CLI -------------------------------------------------------------------------------------------
def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle directory or .tar.gz to evaluate")
    parser.add_argument("--data", default="data/build",
                        help="data directory holding dataset.parquet, or a parquet file (default: data/build)")
    parser.add_argument("--prices", default=str(DEFAULT_PRICES_PATH), help="per-model prices (default: the shipped table)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--out", default="evaluation/report.html",
                        help="HTML report; report.md and report.json are written beside it (default evaluation/report.html)")
    parser.add_argument("--baseline", default=None, metavar="OLD_REPORT.json",
                        help="a previous report.json to diff against (and gate on)")
    parser.add_argument("--gate-metric", default="tier_auroc",
                        help="metric the release gate checks against --baseline (default tier_auroc)")
    parser.add_argument("--max-regression", type=float, default=0.01,
                        help="largest allowed worsening of --gate-metric (default 0.01); exit 3 beyond it")
    parser.add_argument("--mlflow-run", default=None,
                        help="MLflow run to log the report to (default: the bundle's training_run_id)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-baseline-router", action="store_true",
                        help="skip fitting the TF-IDF baseline curve (faster)")
    parser.add_argument("--train-limit", type=int, default=20_000,
                        help="train rows the TF-IDF baseline is fitted on (seeded sample; default 20000)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate at most this many rows per split (seeded sample; for quick runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and the bootstrap")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--top-k", type=int, default=10, help="examples listed per misroute / leak table (default 10)")
    from classifier.scale.engine import add_engine_arguments  # options only: Ray is not imported

    add_engine_arguments(parser)


def run_report(args: argparse.Namespace) -> int:
    if getattr(args, "engine", "local") == "ray":  # aggregate statistics only: classifier/scale/report.py
        from classifier.scale.report import run_report_ray

        return run_report_ray(args)
    config = ReportConfig(
        bundle=args.bundle, data=args.data, prices=args.prices, split=args.split, limit=args.limit,
        seed=args.seed, threads=args.threads, baseline_router=not args.no_baseline_router,
        train_limit=args.train_limit, top_k=args.top_k,
    )
    old = load_report_json(args.baseline) if args.baseline else None  # fail early on a bad baseline
    result = build_report(config)
    gate = None
    if old is not None:
        gate = attach_baseline(result.report, old, str(args.baseline), args.gate_metric, args.max_regression)
    paths = write_report(result, args.out)
    if not args.no_mlflow:
        log_to_mlflow(args.mlflow_run or result.report["meta"]["training_run_id"], paths, result.report["metrics"])
    for sentence in result.report["headline"]["sentences"]:
        sys.stdout.write(sentence + "\n")
    sys.stdout.write(f"wrote {paths['html']}, {paths['md']} and {paths['json']}\n")
    if gate is not None:
        stream = sys.stdout if gate["passed"] else sys.stderr
        stream.write(gate["message"] + "\n")
        if not gate["passed"]:
            return GATE_EXIT
    return 0
