"""The data card (``CARD.md``) of a built data set: counts, label rules, provenance, rejects.

``count_table(rows)`` computes the counts the card and the CLI summary show (per head and class,
per split, per source); ``render_card`` writes the Markdown. The label rules are stated here in
prose, next to the numbers they produced, so a reader of the card does not need the code.

Left out: plots (the evaluation report draws those) and anything about models.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from classifier.data.sources import (
    LLMROUTER_TASKS,
    MMLU_MATH_SUBJECTS,
    MT_BENCH_TASKS,
    PII_ENTITY_TYPES,
    Reject,
)
from classifier.data.splits import OOD, SPLITS

HEAD_COLUMNS: dict[str, tuple[str, ...]] = {
    "tier": ("cheap", "frontier"),
    "tier_outcome": ("cheap", "frontier", "unsolved"),
    "task": ("chat_writing", "code", "math_reasoning", "knowledge"),
    "sensitivity": ("none", "pii", "credential"),
}
ALL_SPLITS = (*SPLITS, OOD)


def count_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of a built data set (plain dicts, JSON-ready)."""
    by_split = Counter(r["split"] for r in rows)
    heads: dict[str, dict[str, int]] = {}
    per_split: dict[str, dict[str, dict[str, int]]] = {}
    for col, classes in HEAD_COLUMNS.items():
        c = Counter(r.get(col) for r in rows)
        heads[col] = {k: c.get(k, 0) for k in classes} | {"null": c.get(None, 0)}
        table: dict[str, dict[str, int]] = {}
        for split in ALL_SPLITS:
            cs = Counter(r.get(col) for r in rows if r["split"] == split)
            table[split] = {k: cs.get(k, 0) for k in classes}
        per_split[col] = table
    by_source: dict[str, dict[str, int]] = defaultdict(dict)
    for (source, split), n in sorted(Counter((r["source"], r["split"]) for r in rows).items()):
        by_source[source][split] = n
    return {
        "rows": len(rows),
        "tier_rows": sum(1 for r in rows if r.get("tier") is not None),
        "sensitivity_positives": sum(1 for r in rows if r.get("sensitivity") in ("pii", "credential")),
        "by_split": {s: by_split.get(s, 0) for s in ALL_SPLITS},
        "heads": heads,
        "per_split": per_split,
        "by_source": dict(by_source),
        "groups": len({r["group"] for r in rows}),
        "templates": len({r["template_id"] for r in rows if r.get("template_id")}),
        "rules": len({r["rule_id"] for r in rows if r.get("rule_id")}),
    }


def _table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def render_card(
    *, stats: Mapping[str, Any], config: Mapping[str, Any], licenses: Sequence[Mapping[str, str]],
    rejects: Sequence[Reject],
) -> str:
    counts = stats["counts"]
    dedup = stats["dedup"]
    out: list[str] = ["# tierwise default routing data set: data card", ""]
    out += [
        f"Built by `tierwise data build` in **{stats['seconds']:.1f} s** (stages: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in stats["stage_seconds"].items()) + ").",
        f"Seed {config['seed']}; source data `{config['shared']}`"
        + (f"; **slice: at most {config['limit_per_source']} rows per source**" if config.get("limit_per_source") else "")
        + ".",
        "",
        f"- rows: **{counts['rows']}**; tier-labelled rows: **{counts['tier_rows']}**; "
        f"sensitivity positives (pii + credential): **{counts['sensitivity_positives']}**",
        f"- groups: {counts['groups']}; prompt templates: {counts['templates']}; gitleaks rules: {counts['rules']}",
        f"- rejected source rows: {stats['rejects']['total']} (listed in `rejects.jsonl`)",
        "",
        "## Counts per head, class and split",
        "",
    ]
    for col, classes in HEAD_COLUMNS.items():
        table = counts["per_split"][col]
        body = [[cls, *[table[s][cls] for s in ALL_SPLITS], sum(table[s][cls] for s in ALL_SPLITS)] for cls in classes]
        body.append(["(null)", *["" for _ in ALL_SPLITS], counts["heads"][col]["null"]])
        out += [f"### {col}", "", _table([col, *ALL_SPLITS, "total"], body), ""]
    out += ["### rows per source and split", ""]
    body = [[src, *[by.get(s, 0) for s in ALL_SPLITS], sum(by.values())] for src, by in counts["by_source"].items()]
    body.append(["**total**", *[counts["by_split"][s] for s in ALL_SPLITS], counts["rows"]])
    out += [_table(["source", *ALL_SPLITS, "total"], body), ""]
    if stats.get("traffic"):
        out += [
            "### traffic.parquet (unlabelled, not for training)", "",
            _table(["source", "prompts"], [[k, v] for k, v in stats["traffic"].items()]), "",
            f"{stats.get('traffic_overlap_dropped', 0)} traffic prompts were dropped because the data set "
            "already holds them (exact match) or they repeat.", "",
        ]

    units = stats.get("sensitivity_generation", {}).get("units", {})
    if units:
        out += [
            "### sensitivity units per split",
            "",
            "Prompt templates, gitleaks rules, presidio templates and placeholders are split as whole units "
            "before any example is generated.",
            "",
            _table(["unit kind", *ALL_SPLITS], [[k, *[v.get(s, 0) for s in ALL_SPLITS]] for k, v in units.items()]),
            "",
        ]

    pools = stats.get("llmrouter_pools", {})
    cheap_pool = sorted(m for m, t in pools.items() if t == "cheap")
    frontier_pool = sorted(m for m, t in pools.items() if t == "frontier")
    out += [
        "## Label rules",
        "",
        "### tier",
        "- `tier_outcome` is the cheapest tier that answered correctly: `cheap` if the cheap tier passed; "
        "`frontier` if only the frontier tier passed; `unsolved` if neither did.",
        "- `tier` (the training label) is `cheap` for outcome `cheap` and **`frontier` for `frontier` and "
        "`unsolved`**: the cheap model failed, so escalating is the safe choice. Filter on `tier_outcome` "
        "to treat unsolved prompts differently.",
        "- RouteLLM (MMLU, GSM8K, MT-bench): cheap = `mistralai/Mixtral-8x7B-Instruct-v0.1`, frontier = "
        "`gpt-4-1106-preview`; `cheap_correct`/`frontier_correct` are 0 or 1.",
        f"- MT-bench: the first turn is the prompt; a model passes when the GPT-4 judge scored its turn-1 "
        f"answer **>= {config['mt_bench_pass_score']:g}** of 10.",
        f"- LLMRouter: models bucketed by `default_llm.json` price (mean of input and output price per million "
        f"tokens): **<= {config['cheap_max_price']:g} cheap** ({', '.join(cheap_pool) or '-'}), "
        f"**>= {config['frontier_min_price']:g} frontier** ({', '.join(frontier_pool) or '-'}); rows use the "
        "model names `llmrouter/cheap-pool` / `llmrouter/frontier-pool` of the price table (`classifier/evaluation/prices.yaml`). A model "
        f"passes a row when its score is >= {config['model_pass_score']:g} (scores are 0/1 except the F1 and "
        f"coverage metrics); a pool passes when **at least {config['pool_pass_share']:.0%} of its models** pass. "
        "`cheap_correct` / `frontier_correct` are the shares of each pool's models that passed.",
        "- `tier_soft = [cheap_correct, 1 - cheap_correct]`, in the tier head's class order (cheap, frontier): "
        "the probability that a cheap-tier model answers correctly. For RouteLLM rows it equals the hard label; "
        "for LLMRouter rows it is the share of the six cheap models that passed. Null for rows without a tier.",
        f"- LLMRouter scores are joined to `default_query_*.jsonl` on the (whitespace-cleaned) question text to "
        f"get `task_name`; {stats.get('llmrouter_ambiguous_joins', 0)} questions appear under two task names "
        "and take the specific one (openbook_qa, arc_challenge, commonsense_qa) over LLMRouter's `mmlu` mix. "
        "The options of multiple-choice tasks (stored apart from the question) are written back into the "
        "prompt as `A. ...` lines, as in RouteLLM's MMLU prompts.",
        "",
        "- `routellm/*/contaminated_prompts.jsonl` is not used: it lists overlap with RouteLLM's own router "
        "training data, which does not concern this data set.",
        "",
        "### task",
        f"- MMLU: `knowledge`, except **{', '.join(sorted(MMLU_MATH_SUBJECTS))}** -> `math_reasoning` "
        "(worked calculations or formal derivations; conceptual_physics, econometrics and the computer-science "
        "subjects stay `knowledge`). GSM8K -> `math_reasoning`.",
        "- LLMRouter task_name: " + ", ".join(f"{k} -> {v}" for k, v in LLMROUTER_TASKS.items()) + ".",
        "- MT-bench category: " + ", ".join(f"{k} -> {v}" for k, v in MT_BENCH_TASKS.items()) + ".",
        "- Sensitivity examples take the task their prompt template clearly implies (code/config snippet -> "
        "`code`; draft, summarise, translate, rewrite -> `chat_writing`), else null. Jailbreak prompts: null.",
        "",
        "### sensitivity",
        "- `pii`: a presidio text with at least one span of a direct identifier "
        f"({', '.join(sorted(PII_ENTITY_TYPES))}) placed in a PII prompt template. Presidio texts whose spans are "
        "only quasi-identifiers (locations, organisations, dates, ages, titles, NRP, zip codes, domains) are "
        "`none` hard negatives in the same templates."
        + (f" Training split only: {config['sensitivity']['refills_per_record']} extra copies "
           "(`refills_per_record`) of each training PII text with its spans refilled by other training "
           "values of the same entity type (some people cut to a first name, IP addresses drawn fresh as "
           "IPv4 or IPv6, rare PII types copied more, up to `max_copies_per_record`), each in a training "
           "template. Held-out splits are left untouched, so their metrics compare across builds."
           if config.get("sensitivity", {}).get("refills_per_record") else ""),
        "- `credential`: a secret of a gitleaks rule in a credential prompt template (.env files, curl with an "
        "Authorization header, stack traces, CI and cloud configs, e-mails...). Secrets are sampled from the "
        "rule's regex with a seeded `sre_parse` walker, written into a context line (`NAME=...`) that is "
        "re-checked against the rule with Python's `re`, plus the rule's hand-written true positives. A prompt "
        "carrying both a PII text and a secret is `credential`: the `mix_*` templates, and PII templates whose "
        "text ends with a secret line (`composed_mixed_per_rule`).",
        "- `none` hard negatives: gitleaks' false-positive strings, obvious placeholders (`YOUR_API_KEY`, `xxxx`, "
        "`<token>`, masks, AWS's documented `...EXAMPLE` keys, example.com addresses) in the same templates, and "
        "presidio `masked` texts: their PII is replaced by `{{PERSON}}`-style tags, which read as a template, "
        "not as anyone's data; the same masked texts in other redaction styles (`[PERSON]`, `<redacted>`, `***`...); "
        "and *defanged* secrets of every rule (masked `ghp_****`, truncated `ghp_ab...`, low-entropy fills, "
        "`${ENV}` references), each checked to read as a placeholder. All tier-source prompts and the in-the-wild jailbreak prompts are `none` "
        "(jailbreaks have null tier and task).",
        "",
        "### token counts",
        "- `input_tokens` = round(len(text) / 4), at least 1 (a fast estimate close to BPE tokenisers on English).",
        "- `output_tokens`: measured where the source has responses (GSM8K: mean estimate of the two models' "
        "responses; MT-bench: mean of the two judged turn-1 answers; RouterArena traffic: reported usage), else "
        "this per-source estimate (first match of source_task, source, `task:<task>`, `default`):",
        "",
        _table(["key", "output tokens"], [[k, v] for k, v in config["output_tokens"].items()]),
        "",
        "## Deduplication and groups",
        "",
        f"Exact duplicates (case-folded, whitespace-collapsed text) and near duplicates (MinHash over "
        f"{config['dedup']['shingle_size']}-character shingles, {config['dedup']['num_perm']} permutations, "
        f"{config['dedup']['bands']} LSH bands; estimated Jaccard >= {config['dedup']['collapse_threshold']}) of "
        "the tier sources and jailbreak prompts are collapsed **before splitting**, keeping the row of the "
        f"highest-priority source ({' > '.join(config['source_priority'])}).",
        "",
        f"- input rows: {dedup['input_rows']}; exact duplicates collapsed: **{dedup['exact_collapsed']}**; "
        f"near duplicates collapsed: **{dedup['near_collapsed']}**; kept: {dedup['kept']}",
        "- collapsed (dropped source -> kept source): "
        + (", ".join(f"{k}: {v}" for k, v in dedup["collapsed_by_source"].items()) or "none"),
        f"- related prompts (estimated Jaccard >= {config['dedup']['group_threshold']}) form one `group` and share a "
        f"split: {dedup['groups']} groups; largest: "
        + ", ".join(f"{g['size']} ({g['source_task']})" for g in dedup["largest_groups"]),
        f"- sensitivity rows are generated per unit and deduplicated exactly: "
        f"{stats.get('sensitivity_exact_duplicates_dropped', 0)} repeated texts dropped.",
        "",
        "## Splits",
        "",
        "- " + ", ".join(f"{k} {v:.0%}" for k, v in config["split_fractions"].items()) + " of groups' rows, "
        "stratified by source|tier|task|sensitivity as far as whole groups allow, seeded.",
        "- `group` is the unit of splitting: near-duplicate cluster (`dup:<id>`), presidio template "
        "(`presidio:<template_id>`), gitleaks rule (`gitleaks:<rule>`) or placeholder. Prompt templates "
        "(`template_id`), presidio templates and rules are assigned to one split *before* examples are "
        "generated and examples only combine units of one split: no text, group, template or rule is on two "
        "splits (checked by the build).",
        "- `ood` holds whole source tasks and sensitivity units that no other split sees:",
        f"  - source tasks: {', '.join(config['ood_source_tasks']) or '-'}",
        f"  - prompt templates: {', '.join(config['ood_templates']) or '-'}",
        f"  - gitleaks rules: {', '.join(config['ood_rules']) or '-'}",
        f"  - presidio templates: {', '.join(config['ood_presidio_templates']) or '-'}",
        "",
        "## Sources and licences",
        "",
        _table(["path", "upstream", "licence (README)", "LICENSE file"],
               [[f"`{r['path']}`", r["upstream"], r["license"], r.get("license_file", "")] for r in licenses]),
        "",
        "GPQA rows were removed upstream from `llmrouter/` (its authors ask that its questions not be "
        "republished). The built files must not be committed to git.",
        "",
        "## Rejected source rows",
        "",
    ]
    if rejects:
        by = Counter((r.file, r.reason.split(":")[0][:80]) for r in rejects)
        out += [_table(["file", "reason", "rows"], [[f, why, n] for (f, why), n in sorted(by.items())]), ""]
    else:
        out += ["None.", ""]
    gen = stats.get("sensitivity_generation", {})
    skipped = {k: v for k, v in gen.items() if k.startswith("skipped:")}
    if skipped:
        out += [f"Sensitivity examples not generated: {skipped} (`no_template`: no template of the needed kind "
                "on the unit's split; `unsampled_secret`: no regex sample that Python's `re` confirmed; "
                "`ambiguous_false_positive`: a gitleaks false positive that still reads like a real secret, "
                "so it is not taught as `none`).", ""]
    return "\n".join(out)
