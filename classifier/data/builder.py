"""``tierwise data build``: the default routing data set, built from ``../shared/datasets``.

Stages: read every source (``sources``), collapse exact and near duplicates of the tier prompts
and group related ones (``dedup``), pin held-out source tasks to ``ood`` and assign the other
groups to train/validation/calibration/test, stratified and seeded (``splits``), generate the
sensitivity examples with their own template/rule-level splits (``sensitivity``), then fill ids
and token counts, check that no text, group, template or rule is on two splits, and write:

- ``dataset.parquet``: one row per prompt, the columns of docs/design.md, in that order;
- ``traffic.parquet``: arena-hard and RouterArena prompts (no outcomes), for drift demos;
- ``rejects.jsonl``: every source row that could not be used (file, row, reason);
- ``CARD.md`` and ``build_info.json``: counts, rules, provenance, timings.

``BuildConfig`` holds every knob (the shipped ``classifier/data/build.yaml`` is the default); ``limit_per_source``
builds a small, still representative slice for tests.

Left out: no network, no model calls, nothing copied from the shared folder except the derived
rows. Loading users' own labelled files is ``classifier.data.loading``'s job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationInfo,
    field_validator,
)

from classifier.data import card as card_mod
from classifier.data import sources as src
from classifier.data.benign import BenignConfig, generate_benign, planted
from classifier.data.dedup import DedupConfig, deduplicate
from classifier.data.named import named_rows
from classifier.data.normalize import dedup_key, estimate_tokens, text_id
from classifier.data.sensitivity import SensitivityConfig, generate
from classifier.data.splits import (
    DEFAULT_FRACTIONS,
    OOD,
    SPLITS,
    Fractions,
    assign_groups,
    find_leaks,
)
from classifier.errors import ConfigError, DataError, TypedConfig
from classifier.yaml_io import read_yaml

log = logging.getLogger(__name__)

# the shipped build config, package data (an installed wheel has it too)
DEFAULT_CONFIG = Path(str(files("classifier.data").joinpath("build.yaml")))
SHARED_ENV = "TIERWISE_SHARED_DATA"

# docs/design.md, in order
COLUMNS: tuple[str, ...] = (
    "id", "text", "source", "source_task", "split", "group", "tier", "tier_outcome", "tier_soft", "task",
    "sensitivity", "cheap_model", "frontier_model", "cheap_correct", "frontier_correct", "input_tokens",
    "output_tokens", "template_id", "rule_id",
)
TRAFFIC_COLUMNS: tuple[str, ...] = ("id", "text", "source", "source_task", "task", "input_tokens", "output_tokens")
# the held-out real-traffic evaluation set (never trained on): data/build/eval/real_traffic.parquet
REAL_TRAFFIC_COLUMNS: tuple[str, ...] = ("id", "text", "source", "source_task", "sensitivity")
TIER_SOURCES: tuple[str, ...] = ("routellm_mmlu", "routellm_gsm8k", "routellm_mtbench", "llmrouter")
DEFAULT_PRIORITY: tuple[str, ...] = ("routellm_mmlu", "routellm_gsm8k", "routellm_mtbench", "llmrouter", "jailbreak")
DEFAULT_OUTPUT_TOKENS: dict[str, int] = {
    "routellm_mmlu": 8, "llmrouter:mmlu": 8, "llmrouter:commonsense_qa": 8, "llmrouter:openbook_qa": 8,
    "llmrouter:arc_challenge": 8, "llmrouter:agentverse-logicgrid": 60, "llmrouter:natural_qa": 16,
    "llmrouter:trivia_qa": 16, "llmrouter:gsm8k": 90, "llmrouter:agentverse-mgsm": 90, "llmrouter:math": 250,
    "llmrouter:mbpp": 120, "llmrouter:human_eval": 150, "llmrouter:commongen": 40, "jailbreak": 400,
    "task:code": 250, "task:chat_writing": 300, "task:math_reasoning": 250, "task:knowledge": 150, "default": 200,
}


def default_shared_dir() -> Path:
    """``$TIERWISE_SHARED_DATA``, else ``../shared/datasets`` (from the working directory)."""
    env = os.environ.get(SHARED_ENV)
    return Path(env) if env else Path("..", "shared", "datasets")


def _names(value: Any) -> Any:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else value


Names = Annotated[list[str], BeforeValidator(_names)]  # YAML may write a name as a number


class BuildConfig(TypedConfig):
    """Everything the build depends on. Unknown keys and bad values raise ``ConfigError``."""

    shared: Annotated[Path, BeforeValidator(lambda v: v or default_shared_dir())] = Field(default_factory=default_shared_dir)
    out: Path = Path("data/build")
    seed: int = Field(13, strict=True)
    limit_per_source: PositiveInt | None = None
    split_fractions: Fractions = Field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    ood_source_tasks: Names = []
    ood_templates: Names = []
    ood_rules: Names = []
    ood_presidio_templates: Names = []
    source_priority: Names = list(DEFAULT_PRIORITY)
    cheap_max_price: float = Field(0.3, gt=0.0)
    frontier_min_price: float = 0.9
    model_pass_score: float = Field(0.5, gt=0.0, le=1.0)
    pool_pass_share: float = Field(0.5, gt=0.0, le=1.0)
    mt_bench_pass_score: float = Field(8.0, ge=1, le=10)  # within the judge's 1..10 scale
    output_tokens: dict[str, NonNegativeInt] = Field(default_factory=lambda: dict(DEFAULT_OUTPUT_TOKENS))
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    benign: BenignConfig = Field(default_factory=BenignConfig)
    include_traffic: bool = True
    progress: bool = True

    @field_validator("source_priority")
    @classmethod
    def _ranks_all(cls, value: list[str]) -> list[str]:
        if missing := sorted(set(DEFAULT_PRIORITY) - set(value)):
            raise ValueError(f"must rank every deduplicated source; missing {missing}")
        return value

    @field_validator("frontier_min_price")
    @classmethod
    def _above_cheap(cls, value: float, info: ValidationInfo) -> float:
        if value <= info.data.get("cheap_max_price", 0.0):
            raise ValueError(f"must be above cheap_max_price ({info.data['cheap_max_price']}), got {value}")
        return value

    @field_validator("output_tokens")
    @classmethod
    def _has_default(cls, value: dict[str, int]) -> dict[str, int]:
        if "default" not in value:
            raise ValueError("must include 'default'")
        return value

    @classmethod
    def from_yaml(cls, path: Path | str | None, **overrides: Any) -> BuildConfig:
        """Config from a YAML file (None: defaults only); ``overrides`` that are not None win."""
        data: dict[str, Any] = {}
        if path is not None:
            loaded = read_yaml(path, ConfigError, "build config")
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"build config {path} must be a mapping of keys to values")
            data = dict(loaded or {})
            ood = data.pop("ood", None) or {}
            if not isinstance(ood, dict):
                raise ConfigError(f"{path}: 'ood' must be a mapping (source_tasks, templates, rules, presidio_templates)")
            unknown_ood = sorted(set(ood) - {"source_tasks", "templates", "rules", "presidio_templates"})
            if unknown_ood:
                raise ConfigError(f"{path}: unknown keys under 'ood': {unknown_ood}")
            for key in ("source_tasks", "templates", "rules", "presidio_templates"):
                if key in ood:
                    data[f"ood_{key}"] = ood[key] or []
            if "output_tokens" in data:
                data["output_tokens"] = {**DEFAULT_OUTPUT_TOKENS, **(data["output_tokens"] or {})}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(data, str(path or "build config"))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass
class BuildResult:
    """Paths written and the statistics that went into the card."""

    dataset_path: Path
    traffic_path: Path | None
    card_path: Path
    info_path: Path
    rejects_path: Path
    stats: dict[str, Any]
    seconds: float


# ---------------------------------------------------------------------------------------------
class _Stages:
    """Per-stage timing and logging, with a tqdm bar over the stages."""

    def __init__(self, names: Sequence[str], progress: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(names), desc="data build", unit="stage", disable=not progress, leave=False)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        log.info("stage %-12s %.2fs", name, self.seconds[name])
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def build_dataset(config: BuildConfig) -> BuildResult:
    """Build and write the data set described by ``config``; see the module docstring."""
    started = time.perf_counter()
    root = config.shared
    if not (root / "README.md").is_file() and not (root / "routellm").is_dir():
        raise DataError(
            f"shared data not found at {root}: pass --shared DIR or set {SHARED_ENV} to the folder "
            "holding routellm/, llmrouter/, presidio/, gitleaks/ ..."
        )
    limit = config.limit_per_source
    rejects = src.RejectLog()
    stats: dict[str, Any] = {}
    stages = _Stages(["read", "dedup", "split", "sensitivity", "assemble", "write"], config.progress)
    try:
        with stages.stage("read"):
            llm_stats = src.LLMRouterStats()
            tier_rows = (
                src.read_routellm_mmlu(root, rejects, limit)
                + src.read_routellm_gsm8k(root, rejects, limit)
                + src.read_routellm_mtbench(root, rejects, limit, pass_score=config.mt_bench_pass_score)
                + src.read_llmrouter(
                    root, rejects, limit, cheap_max_price=config.cheap_max_price,
                    frontier_min_price=config.frontier_min_price, model_pass_score=config.model_pass_score,
                    pool_pass_share=config.pool_pass_share, stats=llm_stats,
                )
            )
            jailbreaks = src.read_jailbreaks(root, rejects, limit)
            presidio = src.read_presidio(root, rejects, limit)
            rules = src.read_gitleaks(root, rejects, limit)
            traffic = src.read_traffic(root, rejects, limit) if config.include_traffic else []
            stats["read"] = dict(Counter(r["source"] for r in tier_rows + jailbreaks))
            stats["read"].update({"presidio_records": len(presidio), "gitleaks_rules": len(rules), "traffic": len(traffic)})
            stats["llmrouter_pools"] = llm_stats.pools
            stats["llmrouter_ambiguous_joins"] = llm_stats.ambiguous_joins

        with stages.stage("dedup"):
            pool = tier_rows + jailbreaks
            rank = {s: i for i, s in enumerate(config.source_priority)}
            result = deduplicate([r["text"] for r in pool], [rank[r["source"]] for r in pool], config.dedup)
            collapsed_by_source: Counter = Counter()
            for i, r in enumerate(pool):
                if not result.keep[i]:
                    collapsed_by_source[f"{r['source']} -> {pool[int(result.kept_as[i])]['source']}"] += 1
            kept = [dict(r, _group=int(result.group[i])) for i, r in enumerate(pool) if result.keep[i]]
            group_sizes = Counter(r["_group"] for r in kept)
            stats["dedup"] = {
                "input_rows": len(pool), "exact_collapsed": result.exact_collapsed,
                "near_collapsed": result.near_collapsed, "kept": len(kept),
                "candidate_pairs": result.candidate_pairs, "collapsed_by_source": dict(collapsed_by_source),
                "groups": len(group_sizes), "largest_groups": _largest_groups(kept, group_sizes),
            }

        with stages.stage("split"):
            ood_tasks = set(config.ood_source_tasks)
            present = {r["source_task"] for r in kept}
            absent = sorted(ood_tasks - present)
            if absent and limit is None:
                raise ConfigError(
                    f"ood.source_tasks names tasks the data does not have: {absent} (e.g. "
                    f"{sorted(present)[:5]} ...)"
                )
            ood_groups = {r["_group"] for r in kept if r["source_task"] in ood_tasks}
            strata = [f"{r['source']}|{r.get('tier')}|{r.get('task')}|{r.get('sensitivity', 'none')}" for r in kept]
            assignment = assign_groups(
                [r["_group"] for r in kept], strata, config.split_fractions, config.seed,
                fixed=dict.fromkeys(ood_groups, OOD),
            )
            for r in kept:
                r["split"] = assignment[r["_group"]]
                r["group"] = f"dup:{text_id(pool[r['_group']]['text'])}"  # named by its first prompt
                r.setdefault("sensitivity", "none")

        with stages.stage("sensitivity"):
            sens = generate(
                presidio, rules, fractions=config.split_fractions, seed=config.seed, config=config.sensitivity,
                rejects=rejects, ood_templates=config.ood_templates, ood_rules=config.ood_rules,
                ood_presidio_templates=config.ood_presidio_templates, strict=limit is None,
            )
            stats["sensitivity_generation"] = sens.stats
            # traffic-shaped negatives and planted copies (classifier/data/benign.py)
            known = {dedup_key(r["text"]) for r in list(kept) + list(sens.rows)}
            benign_cfg = config.benign
            if limit is not None:  # a slice: a few of each kind, enough to exercise the code
                kinds = ("code_snippets", "other_language_snippets", "generated_per_kind", "bfcl_schemas", "planted_per_class",
                         "named_prompts")
                benign_cfg = benign_cfg.model_copy(update={k: min(getattr(benign_cfg, k), limit) for k in kinds})
            benign_rows, real_eval, stats["benign"] = generate_benign(
                root, rejects, seed=config.seed, config=benign_cfg, existing_keys=known)
            extra, counts = named_rows(root, config.seed, benign_cfg, real_eval)  # benign requests naming people
            benign_rows += extra
            stats["benign"].update(counts)
            planted_rows = planted(sens.rows, benign_rows, config.seed, benign_cfg) if benign_cfg.enabled else []
            stats["benign"]["planted"] = len(planted_rows)

        with stages.stage("assemble"):
            rows, sens_dupes = _assemble(kept, list(sens.rows) + benign_rows + planted_rows, config)
            stats["sensitivity_exact_duplicates_dropped"] = sens_dupes
            leaks = find_leaks(rows, ["text", "group", "template_id", "rule_id"])
            leaks.update(find_leaks([r for r in rows if r["source"] in ("presidio", "gitleaks")], ["source_task"]))
            if leaks:  # a bug, never expected: refuse to write a leaking data set
                raise DataError(f"split leakage in the built data set: { {k: v[:5] for k, v in leaks.items()} }")
            traffic_rows, traffic_overlap = _traffic_rows(traffic, rows, config)
            stats["traffic_overlap_dropped"] = traffic_overlap
            stats["counts"] = card_mod.count_table(rows)
            stats["traffic"] = dict(Counter(r["source"] for r in traffic_rows))
            stats["rejects"] = {"total": len(rejects), "by_file": rejects.by_file(),
                                "by_reason": dict(Counter(r.reason.split(":")[0][:80] for r in rejects.items))}

        with stages.stage("write"):
            out = config.out
            out.mkdir(parents=True, exist_ok=True)
            dataset_path = out / "dataset.parquet"
            _write_parquet(rows, COLUMNS, dataset_path)
            traffic_path = None
            if config.include_traffic:
                traffic_path = out / "traffic.parquet"
                _write_parquet(traffic_rows, TRAFFIC_COLUMNS, traffic_path)
            eval_path = None
            if real_eval:
                (out / "eval").mkdir(exist_ok=True)
                eval_path = out / "eval" / "real_traffic.parquet"
                in_data = {dedup_key(r["text"]) for r in rows}
                held = [dict(r, id=text_id(r["text"])) for r in real_eval if dedup_key(r["text"]) not in in_data]
                _write_parquet(held, REAL_TRAFFIC_COLUMNS, eval_path)
                stats["benign"]["real_traffic_eval_written"] = len(held)
            rejects_path = out / "rejects.jsonl"
            with rejects_path.open("w", encoding="utf-8") as fh:
                for r in rejects.items:
                    fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    finally:
        stages.close()
    seconds = round(time.perf_counter() - started, 2)
    stats["seconds"] = seconds
    stats["stage_seconds"] = stages.seconds
    info = _build_info(config, root, stats, [dataset_path, traffic_path, eval_path, rejects_path])
    info_path = out / "build_info.json"
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    card_path = out / "CARD.md"
    card_path.write_text(
        card_mod.render_card(stats=stats, config=config.to_dict(), licenses=src.source_licenses(root),
                             rejects=rejects.items),
        encoding="utf-8",
    )
    log.info("wrote %s (%d rows) in %.1fs", dataset_path, len(rows), seconds)
    return BuildResult(dataset_path, traffic_path, card_path, info_path, rejects_path, stats, seconds)


def _largest_groups(kept: Sequence[Mapping[str, Any]], sizes: Counter, n: int = 5) -> list[dict[str, Any]]:
    first: dict[int, str] = {}
    for r in kept:
        first.setdefault(r["_group"], r["source_task"])
    return [{"size": c, "source_task": first[g]} for g, c in sizes.most_common(n)]


def output_tokens_estimate(row: Mapping[str, Any], table: Mapping[str, int]) -> int:
    """Per-source estimate: ``source_task``, then ``source``, then ``task:<task>``, then ``default``."""
    for key in (row.get("source_task"), row.get("source"), f"task:{row.get('task')}"):
        if key in table:
            return int(table[key])
    return int(table["default"])


def _assemble(
    kept: Sequence[dict[str, Any]], sens_rows: Sequence[dict[str, Any]], config: BuildConfig
) -> tuple[list[dict[str, Any]], int]:
    """Final rows: tier/jailbreak rows first, sensitivity rows after, exact duplicates dropped
    (the earlier row wins), ids and tokens filled, sorted by split then id."""
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    dropped = 0
    for r in list(kept) + list(sens_rows):
        key = dedup_key(r["text"])
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        row = {c: r.get(c) for c in COLUMNS}
        row["id"] = text_id(r["text"])
        row["input_tokens"] = estimate_tokens(r["text"])
        if row["output_tokens"] is None:
            row["output_tokens"] = output_tokens_estimate(r, config.output_tokens)
        rows.append(row)
    if len({r["id"] for r in rows}) != len(rows):
        raise DataError("two different prompts share an id (sha256 prefix collision); report this")
    order = {s: i for i, s in enumerate((*SPLITS, OOD))}
    rows.sort(key=lambda r: (order[r["split"]], r["id"]))
    return rows, dropped


def _traffic_rows(
    traffic: Sequence[dict[str, Any]], rows: Sequence[Mapping[str, Any]], config: BuildConfig
) -> tuple[list[dict[str, Any]], int]:
    """Traffic without prompts that are already in the data set (exact key) or repeated."""
    seen = {dedup_key(r["text"]) for r in rows}
    out: list[dict[str, Any]] = []
    overlap = 0
    for r in traffic:
        key = dedup_key(r["text"])
        if key in seen:
            overlap += 1
            continue
        seen.add(key)
        out.append({
            "id": text_id(r["text"]), "text": r["text"], "source": r["source"], "source_task": r["source_task"],
            "task": r.get("task"), "input_tokens": estimate_tokens(r["text"]),
            "output_tokens": r.get("output_tokens") or output_tokens_estimate(r, config.output_tokens),
        })
    return out, overlap


def _write_parquet(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "tier_soft": pa.list_(pa.float64()), "cheap_correct": pa.float64(), "frontier_correct": pa.float64(),
        "input_tokens": pa.int64(), "output_tokens": pa.int64(),
    }
    not_null = {"id", "text", "source", "source_task", "split", "group"}
    schema = pa.schema([pa.field(c, types.get(c, pa.string()), nullable=c not in not_null) for c in columns])
    table = pa.Table.from_pydict({c: [r.get(c) for r in rows] for c in columns}, schema=schema)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # a reader never sees a half-written file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _build_info(config: BuildConfig, root: Path, stats: Mapping[str, Any], outputs: Sequence[Path | None]) -> dict[str, Any]:
    import pyarrow

    inputs = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and ".git" not in p.parts):
        inputs.append({"path": str(path.relative_to(root)), "bytes": path.stat().st_size, "sha256": _sha256(path)})
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "stats": stats,
        "inputs": inputs,
        "outputs": {p.name: _sha256(p) for p in outputs if p is not None and p.exists()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "pyarrow": pyarrow.__version__},
    }


# ---------------------------------------------------------------------------------------------
# CLI
def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="build config YAML (default: the shipped classifier/data/build.yaml)")
    parser.add_argument("--shared", type=Path, default=None,
                        help=f"shared source data folder (default: ${SHARED_ENV} or ../shared/datasets)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: data/build)")
    parser.add_argument("--seed", type=int, default=None, help="seed for splits and generated examples")
    parser.add_argument("--limit-per-source", type=int, default=None,
                        help="read at most N rows per source (a quick, representative slice)")
    parser.add_argument("--no-traffic", action="store_true", help="skip traffic.parquet")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_build(args: argparse.Namespace) -> int:
    config = BuildConfig.from_yaml(
        args.config, shared=args.shared, out=args.out, seed=args.seed, limit_per_source=args.limit_per_source,
        include_traffic=False if args.no_traffic else None, progress=False if args.no_progress else None,
    )
    result = build_dataset(config)
    counts = result.stats["counts"]
    lines = [
        f"built {result.dataset_path} in {result.seconds:.1f}s",
        f"  rows: {counts['rows']}  (tier-labelled: {counts['tier_rows']}, sensitivity positives: "
        f"{counts['sensitivity_positives']})",
        "  splits: " + ", ".join(f"{k}={v}" for k, v in counts["by_split"].items()),
        "  tier: " + ", ".join(f"{k}={v}" for k, v in counts["heads"]["tier"].items()),
        "  task: " + ", ".join(f"{k}={v}" for k, v in counts["heads"]["task"].items()),
        "  sensitivity: " + ", ".join(f"{k}={v}" for k, v in counts["heads"]["sensitivity"].items()),
        f"  rejects: {result.stats['rejects']['total']} (see {result.rejects_path})",
        f"  card: {result.card_path}",
    ]
    if result.traffic_path is not None:
        lines.insert(1, f"  traffic: {result.traffic_path} ({sum(result.stats['traffic'].values())} prompts)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
