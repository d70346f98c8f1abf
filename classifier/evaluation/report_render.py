"""Render a ``tierwise report`` (the dict ``report.build_report`` makes) as HTML and as Markdown.

``render_html(report, figures)`` gives one self-contained page: inline CSS, every figure an
``<img>`` with a base64 ``data:`` URI, no script, no external asset, so it can be mailed or
attached to a ticket and opens offline. Each part of the report is a ``<section>`` with a stable
id (``SECTION_IDS``): summary, cost, heads, calibration, slices, sensitivity, misroutes,
thresholds, and diff when the report was compared with a baseline. ``render_markdown(report)``
gives the same numbers as Markdown tables (figures are only in the HTML). Both go through
``jinja2`` with inline templates (autoescaped for HTML), so prompt text from the data can never
inject markup; that text is already redacted by the report.

``render_drift_html(result, figures)`` / ``render_drift_markdown(result)`` do the same for a
``tierwise drift`` result.

What is left out: computing numbers (every value shown is read from the dict as is) and writing
files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import markupsafe

from classifier.evaluation.report_common import finite, pct

__all__ = [
    "SECTION_IDS",
    "render_drift_html",
    "render_drift_markdown",
    "render_html",
    "render_markdown",
]

SECTION_IDS = ("summary", "cost", "heads", "calibration", "slices", "sensitivity", "misroutes", "thresholds")
DRIFT_SECTION_IDS = ("findings", "tier-mix", "confidence", "flags", "slices", "proposal")


# -- filters ---------------------------------------------------------------------------------------
# the same number formatting as the headline sentences, so page and sentences always agree
_finite = finite
_pct = pct


def _num(x: Any, digits: int = 3) -> str:
    v = _finite(x)
    return "-" if v is None else f"{v:.{digits}f}"


def _signed(x: Any, digits: int = 4) -> str:
    v = _finite(x)
    return "-" if v is None else f"{v:+.{digits}f}"


def _rate(r: Any) -> str:
    """``{"rate", "ci", "k", "n"}`` -> ``"4.1% [3.3-5.0%] (12/290)"``."""
    if not isinstance(r, Mapping) or _finite(r.get("rate")) is None:
        return "-"
    lo, hi = (r.get("ci") or [None, None])[:2]
    ci = f" [{_pct(lo)[:-1]}-{_pct(hi)}]" if _finite(lo) is not None and _finite(hi) is not None else ""
    return f"{_pct(r['rate'])}{ci} ({r.get('k')}/{r.get('n')})"


def _ci(pair: Any, digits: int = 3) -> str:
    if not isinstance(pair, (list, tuple)) or len(pair) < 2 or _finite(pair[0]) is None:
        return ""
    return f" [{_num(pair[0], digits)}-{_num(pair[1], digits)}]"


def _md(text: Any) -> str:
    """Table-cell safe Markdown text."""
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def _env(autoescape: bool) -> Any:
    import jinja2

    env = jinja2.Environment(autoescape=autoescape, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(pct=_pct, num=_num, signed=_signed, rate=_rate, ci=_ci, md=_md)
    return env


# -- HTML ------------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;background:#fff}
main{max-width:1180px;margin:0 auto;padding:16px 28px 60px}
h1{font-size:1.6em;margin:.6em 0 .2em}h2{border-bottom:2px solid #e4e7eb;padding-bottom:4px;margin-top:1.8em}
h3{margin:1.2em 0 .4em}
nav{position:sticky;top:0;background:#f6f8fa;border-bottom:1px solid #e4e7eb;padding:8px 28px;font-size:.9em;z-index:1}
nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.86em}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.l,th.l{text-align:left}td.text{text-align:left;max-width:560px;font-family:monospace;font-size:.92em}
.headline{background:#f0f7ff;border-left:5px solid #0b5cad;padding:10px 18px;font-size:1.05em}
.headline li{margin:.35em 0}
.meta{color:#57606a;font-size:.85em}
.pass{background:#e6f4ea;border-left:5px solid #1a7f37;padding:8px 14px}
.fail{background:#fdecea;border-left:5px solid #cf222e;padding:8px 14px;font-weight:600}
.worse{color:#cf222e;font-weight:600}.better{color:#1a7f37}
figure{margin:.6em 0 1.2em}figure img{max-width:100%;border:1px solid #e4e7eb}
.grid{display:flex;flex-wrap:wrap;gap:14px}.grid figure{margin:0}
.note{color:#57606a;font-size:.88em}
.wide{overflow-x:auto;max-width:100%}
"""

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tierwise report: {{ meta.bundle }} on {{ meta.split }}</title>
<style>{{ css }}</style></head>
<body>
<nav>{% for sid, title in nav %}<a href="#{{ sid }}">{{ title }}</a>{% endfor %}</nav>
<main>
<h1>Routing evaluation report</h1>
<p class="meta">bundle <code>{{ meta.bundle }}</code> ({{ meta.bundle_kind }}{% if meta.quantization %}, {{ meta.quantization }}{% endif %};
model sha256 <code>{{ (meta.model_sha256 or "")[:12] }}</code>; MLflow run <code>{{ meta.training_run_id or "-" }}</code>)
&middot; policy <code>{{ meta.policy_version }}</code> owned by {{ meta.policy_owner }}
&middot; data <code>{{ meta.data }}</code>, split <b>{{ meta.split }}</b> ({{ meta.n_rows }} prompts{% if meta.limit %}, sample of at most {{ meta.limit }}{% endif %})
&middot; prices <code>{{ meta.prices }}</code> ({{ meta.currency }}) &middot; {{ meta.created_at }}</p>

<section id="summary">
<h2>Summary</h2>
{% if gate %}<p class="{{ 'pass' if gate.passed else 'fail' }}">{{ gate.message }}</p>{% endif %}
<ul class="headline">{% for s in headline.sentences %}<li>{{ s }}</li>{% endfor %}</ul>
<p class="note">Costs are blended per prompt from each model's input and output token prices and the prompt's
token counts. "Kept on the cheap one" counts prompts labelled frontier (the cheap tier failed them) that the tier
threshold sends to the cheap tier; the interval is a Wilson 95% interval. The threshold is the bundle policy's,
fitted by <code>tierwise calibrate</code>.</p>
</section>

<section id="cost">
<h2>Cost against misroutes and quality</h2>
<figure><img alt="cost curves" src="{{ figures.cost_curves }}"><figcaption class="note">Each curve sweeps the
threshold from all-frontier to all-cheap; the red cross is the policy's threshold. Random routing is the dashed line.
{% if meta.baseline_router %}Baseline: {{ meta.baseline_router }}.{% endif %}</figcaption></figure>
<table><tr><th class="l">router</th><th>APGR</th>{% for t in pgr_keys %}<th>cheap share at PGR {{ t[4:] }}%</th>{% endfor %}<th>cost at {{ (meta.quality_ratio * 100)|round|int }}% of frontier quality</th><th>saving</th></tr>
{% for name, r in routing.routers.items() %}
<tr><td class="l">{{ name }}</td><td>{{ r.apgr|num }}</td>
{% for t in pgr_keys %}<td>{{ (r.cpt[t].cheap_share|pct) if r.cpt and r.cpt[t] else "unreachable" }}</td>{% endfor %}
{% set cq = r.cost_at_quality if r.cost_at_quality is defined else none %}
<td>{{ (cq.cost|num(4)) if cq and cq.reachable else ("-" if not cq else "unreachable") }}</td><td>{{ (cq.saving|pct) if cq and cq.reachable else "-" }}</td></tr>
{% endfor %}
{% for name in ["all_cheap", "all_frontier", "random"] %}{% set r = routing.references[name] %}
<tr><td class="l"><i>{{ name }}</i></td><td>{{ r.apgr|num }}</td>{% for t in pgr_keys %}<td>-</td>{% endfor %}
<td>{{ (r.cost_at_quality.cost|num(4)) if r.cost_at_quality.reachable else "unreachable" }}</td><td>{{ (r.cost_at_quality.saving|pct) if r.cost_at_quality.reachable else "-" }}</td></tr>
{% endfor %}
</table>
<h3>Reference points</h3>
<table><tr><th class="l">router</th><th>cheap share</th><th>quality</th><th>cost ({{ meta.currency }})</th><th>relative cost</th><th>misroute rate (of frontier prompts)</th></tr>
<tr><td class="l"><b>policy threshold {{ headline.threshold|num }}</b></td><td>{{ routing.at_threshold.cheap_share|pct }}</td><td>{{ routing.at_threshold.quality|num }}</td><td>{{ routing.at_threshold.cost|num(4) }}</td><td>{{ routing.at_threshold.relative_cost|num }}</td><td>{{ routing.at_threshold.conditional_misroute_rate|pct }}</td></tr>
{% for name in ["all_cheap", "all_frontier", "oracle", "random"] %}{% set r = routing.references[name] %}
<tr><td class="l">{{ name }}</td><td>{{ r.cheap_share|pct }}</td><td>{{ r.quality|num }}</td><td>{{ r.cost|num(4) }}</td><td>{{ r.relative_cost|num }}</td><td>{{ r.conditional_misroute_rate|pct }}</td></tr>
{% endfor %}</table>
<p class="note">APGR: average performance gap recovered over all frontier-call shares (random = 0.5). CPT: the largest
cheap share that recovers 50/80/95% of the gap between all-cheap and all-frontier quality; picked on the evaluated
rows, so optimistic.</p>
</section>

<section id="heads">
<h2>Heads</h2>
<table><tr><th class="l">head</th><th>n</th><th>accuracy [95% CI]</th><th>macro-F1</th><th>AUROC [95% CI]</th><th>accuracy at T=1</th></tr>
{% for name, m in heads.items() %}
<tr><td class="l">{{ name }}</td><td>{{ m.n|int }}</td><td>{{ m.accuracy|num }}{{ m.accuracy_ci|ci if m.accuracy_ci is defined else "" }}</td>
<td>{{ m.macro_f1|num if m.macro_f1 is defined else "-" }}</td><td>{{ (m.auroc|num) if m.auroc is defined else "-" }}{{ m.auroc_ci|ci if m.auroc_ci is defined else "" }}</td>
<td>{{ heads_uncalibrated[name].accuracy|num if heads_uncalibrated[name].accuracy is defined else "-" }}</td></tr>
{% endfor %}</table>
<div class="grid">{% for name in confusion %}{% if figures["confusion_" ~ name] is defined %}
<figure><img alt="confusion matrix {{ name }}" src="{{ figures['confusion_' ~ name] }}"></figure>{% endif %}{% endfor %}</div>
</section>

<section id="calibration">
<h2>Calibration</h2>
<table><tr><th class="l">head</th><th>n</th><th>temperature</th><th>ECE before</th><th>ECE after</th><th>ECE p(positive) before</th><th>after</th><th>NLL before</th><th>after</th><th>Brier before</th><th>after</th></tr>
{% for name, c in calibration.heads.items() %}
<tr><td class="l">{{ name }}</td><td>{{ c.n }}</td><td>{{ c.temperature|num }}</td><td>{{ c.before.ece|num(4) }}</td><td>{{ c.after.ece|num(4) }}</td>
<td>{{ c.before.ece_positive|num(4) if c.before.ece_positive is defined else "-" }}</td><td>{{ c.after.ece_positive|num(4) if c.after.ece_positive is defined else "-" }}</td>
<td>{{ c.before.nll|num(4) }}</td><td>{{ c.after.nll|num(4) }}</td><td>{{ c.before.brier|num(4) }}</td><td>{{ c.after.brier|num(4) }}</td></tr>
{% endfor %}</table>
<p class="note">Before: temperature 1 (raw logits); after: the bundle's calibration.json. Binary heads are plotted on
the positive class's probability (the one the threshold acts on).</p>
{% for name in calibration.heads %}{% if figures["reliability_" ~ name] is defined %}
<figure><img alt="reliability diagram {{ name }}" src="{{ figures['reliability_' ~ name] }}"></figure>{% endif %}{% endfor %}
</section>

<section id="slices">
<h2>Slices</h2>
<p class="note">Intervals are Wilson 95%. Cheap share and misroute rate use the tier threshold on tier-labelled
prompts; the misroute rate is among the prompts that needed the frontier tier.</p>
{% for kind, rows in slices.items() %}
<h3>by {{ kind.replace("_", " ") }}</h3>
<table><tr><th class="l">{{ kind }}</th><th>n</th><th>tier accuracy</th><th>cheap share</th><th>misroute rate</th>{% if rows and rows[0].task_accuracy is defined %}<th>task accuracy</th>{% endif %}</tr>
{% for r in rows[:max_slice_rows] %}
<tr><td class="l">{{ r.slice }}</td><td>{{ r.n }}</td><td>{{ r.tier_accuracy|rate }}</td><td>{{ r.cheap_share|rate }}</td><td>{{ r.misroute_rate_frontier|rate }}</td>{% if r.task_accuracy is defined %}<td>{{ r.task_accuracy|rate }}</td>{% endif %}</tr>
{% endfor %}</table>
{% if rows|length > max_slice_rows %}<p class="note">{{ rows|length - max_slice_rows }} smaller slices are in report.json.</p>{% endif %}
{% endfor %}
</section>

<section id="sensitivity">
<h2>Sensitivity</h2>
<p class="note">Leak: a prompt of a sensitive class that the whole policy would send to a tier its class may not
reach (not blocked under a block rule; outside the allowed tiers under a restrict rule). Example text is redacted:
digits, e-mail addresses, URLs, long tokens and key=value secrets are replaced with &#9632;.</p>
<table><tr><th class="l">class</th><th class="l">rule</th><th class="l">allowed tiers</th><th>threshold</th><th>n</th><th>detected</th><th>leak rate [95% CI]</th><th class="l">routed to</th></tr>
{% for cls, e in sensitivity.items() %}
<tr><td class="l">{{ cls }}</td><td class="l">{{ e.rule or "none" }}</td><td class="l">{{ ("none (must be blocked)" if e.allowed_tiers == [] else e.allowed_tiers|join(", ")) if e.allowed_tiers is not none else "any" }}</td>
<td>{{ e.threshold|num }}</td><td>{{ e.n }}</td><td>{{ e.detected|rate if e.detected is defined else "-" }}</td><td>{{ e.leak|rate }}</td>
<td class="l">{% for k, v in e.routed_to.items() %}{{ k }}: {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>
{% for cls, e in sensitivity.items() %}{% if e.worst_examples %}
<h3>worst {{ cls }} leaks (lowest p({{ cls }}))</h3>
<table><tr><th class="l">id</th><th class="l">source task</th><th>p({{ cls }})</th><th class="l">routed to</th><th class="l">prompt (redacted)</th></tr>
{% for x in e.worst_examples %}<tr><td class="l"><code>{{ x.id }}</code></td><td class="l">{{ x.source_task }}</td><td>{{ x.p_class|num(4) }}</td><td class="l">{{ x.routed_to }}</td><td class="text">{{ x.text }}</td></tr>{% endfor %}
</table>{% endif %}{% endfor %}
</section>

<section id="misroutes">
<h2>Top misroutes</h2>
{% for key, title in [("kept_cheap", "needed the frontier, kept on cheap (lowest p(frontier))"), ("escalated", "cheap was enough, sent to the frontier (highest p(frontier))")] %}
<h3>{{ title }}</h3>
<table><tr><th class="l">id</th><th class="l">source task</th><th>p(frontier)</th><th>cheap / frontier correct</th><th class="l">task p</th><th class="l">prompt (redacted)</th></tr>
{% for x in misroutes[key] %}<tr><td class="l"><code>{{ x.id }}</code></td><td class="l">{{ x.source_task }}</td><td>{{ x.p_frontier|num(4) }}</td>
<td>{{ x.cheap_correct|num(2) }} / {{ x.frontier_correct|num(2) }}</td>
<td class="l">{% if x.probabilities.task is defined %}{% for c, p in x.probabilities.task.items() %}{{ c }} {{ p|num(2) }}{% if not loop.last %}, {% endif %}{% endfor %}{% endif %}</td>
<td class="text">{{ x.text }}</td></tr>{% else %}<tr><td class="l" colspan="6">none</td></tr>{% endfor %}
</table>{% endfor %}
</section>

<section id="thresholds">
<h2>Thresholds that meet a misroute budget</h2>
{% if thresholds %}
<p class="note">Fitted with <code>{{ thresholds.method }}</code> (delta {{ thresholds.delta }}) on the {{ thresholds.fitted_on }},
measured on the {{ meta.split }} split. Misroute rate here is the share of all tier-labelled prompts that needed the
frontier but go cheap (the risk the budget alpha bounds).</p>
<table><tr><th>alpha</th><th>threshold</th><th>bound on fit rows</th><th>measured misroute</th><th>of frontier prompts</th><th>cheap share</th><th>saving</th><th class="l">meets budget</th></tr>
{% for r in thresholds.rows %}<tr><td>{{ r.alpha }}</td><td>{{ r.threshold|num(4) }}{% if not r.feasible %} (not certifiable){% endif %}</td><td>{{ r.fit_misroute_upper|pct(2) }}</td>
<td>{{ r.measured.misroute_rate|pct(2) }}</td><td>{{ r.measured.misroute_rate_frontier|pct(2) }}</td><td>{{ r.measured.cheap_share|pct }}</td><td>{{ r.measured.saving|pct }}</td><td class="l">{{ "yes" if r.meets_budget else "no" }}</td></tr>{% endfor %}
<tr><td><b>policy</b>{% if thresholds.policy.alpha %} ({{ thresholds.policy.alpha }}){% endif %}</td><td>{{ thresholds.policy.threshold|num(4) }}</td><td>-</td><td>{{ thresholds.policy.measured.misroute_rate|pct(2) }}</td>
<td>{{ thresholds.policy.measured.misroute_rate_frontier|pct(2) }}</td><td>{{ thresholds.policy.measured.cheap_share|pct }}</td><td>{{ thresholds.policy.measured.saving|pct }}</td><td class="l">-</td></tr>
</table>
{% else %}<p>No tier-labelled prompts in this split.</p>{% endif %}
</section>

{% if diff %}
<section id="diff">
<h2>Compared with {{ diff.baseline }}</h2>
<p class="meta">baseline bundle <code>{{ diff.baseline_bundle }}</code>, report of {{ diff.baseline_created_at }}</p>
{% if gate %}<p class="{{ 'pass' if gate.passed else 'fail' }}">{{ gate.message }}</p>{% endif %}
<table><tr><th class="l">metric</th><th>old</th><th>new</th><th>delta</th><th class="l">better</th></tr>
{% for r in diff.rows %}<tr><td class="l">{{ r.metric }}{% if gate and gate.metric == r.metric %} (gate){% endif %}</td><td>{{ r.old|num(4) }}</td><td>{{ r.new|num(4) }}</td>
<td class="{{ 'worse' if (r.worse_by or 0) > 1e-9 else ('better' if (r.worse_by or 0) < -1e-9 else '') }}">{{ r.delta|signed }}</td><td class="l">{{ r.direction }}</td></tr>{% endfor %}
</table>
</section>
{% endif %}
</main></body></html>
"""

_NAV = (("summary", "Summary"), ("cost", "Cost"), ("heads", "Heads"), ("calibration", "Calibration"),
        ("slices", "Slices"), ("sensitivity", "Sensitivity"), ("misroutes", "Misroutes"),
        ("thresholds", "Thresholds"))


def render_html(report: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The self-contained HTML page of a report; ``figures`` maps figure names to data URIs."""
    from classifier.evaluation import adapt_sections
    from classifier.evaluation import long_prompts_section as lps

    nav = list(_NAV) + ([("diff", "Diff")] if report.get("diff") else [])
    nav += [("long-prompts", "Long prompts")] if report.get("long_prompts") else []
    nav += [("adapt", "Prior & adaptation")] if report.get("adapt") else []
    pgr_keys = sorted(next(iter(report["routing"]["routers"].values())).get("cpt", {}) or {})
    return _env(True).from_string(_HTML.replace("</main>", "{{ long_prompts_html }}{{ adapt_html }}</main>", 1)).render(
        long_prompts_html=markupsafe.Markup(lps.render_html(report.get("long_prompts"))),
        adapt_html=markupsafe.Markup(adapt_sections.render_html(report.get("adapt"))),
        css=_CSS, nav=nav, figures=dict(figures), pgr_keys=pgr_keys, max_slice_rows=40,
        meta=report["meta"], headline=report["headline"], routing=report["routing"], heads=report["heads"],
        heads_uncalibrated=report.get("heads_uncalibrated", {}), confusion=report["confusion"],
        calibration=report["calibration"], slices=report["slices"], sensitivity=report["sensitivity"],
        misroutes=report["misroutes"], thresholds=report["thresholds"], diff=report.get("diff"),
        gate=report.get("gate"),
    )


# -- Markdown --------------------------------------------------------------------------------------
_MD = """# Routing evaluation report

Bundle `{{ meta.bundle }}` ({{ meta.bundle_kind }}), policy `{{ meta.policy_version }}` ({{ meta.policy_owner }}),
data `{{ meta.data }}` split **{{ meta.split }}** ({{ meta.n_rows }} prompts), prices `{{ meta.prices }}` ({{ meta.currency }}),
{{ meta.created_at }}. Figures are in report.html; every number is in report.json.
{% if gate %}

**{{ gate.message }}**
{% endif %}

## Summary

{% for s in headline.sentences %}
- {{ s }}
{% endfor %}

## Cost against misroutes and quality

| router | APGR |{% for t in pgr_keys %} cheap share at PGR {{ t[4:] }}% |{% endfor %} cost at target | saving |
|---|---|{% for t in pgr_keys %}---|{% endfor %}---|---|
{% for name, r in routing.routers.items() %}
{% set cq = r.cost_at_quality if r.cost_at_quality is defined else none %}
| {{ name }} | {{ r.apgr|num }} |{% for t in pgr_keys %} {{ (r.cpt[t].cheap_share|pct) if r.cpt and r.cpt[t] else "unreachable" }} |{% endfor %} {{ (cq.cost|num(4)) if cq and cq.reachable else "-" }} | {{ (cq.saving|pct) if cq and cq.reachable else "-" }} |
{% endfor %}

| router | cheap share | quality | cost | relative cost | misroute rate (of frontier prompts) |
|---|---|---|---|---|---|
| policy threshold {{ headline.threshold|num }} | {{ routing.at_threshold.cheap_share|pct }} | {{ routing.at_threshold.quality|num }} | {{ routing.at_threshold.cost|num(4) }} | {{ routing.at_threshold.relative_cost|num }} | {{ routing.at_threshold.conditional_misroute_rate|pct }} |
{% for name in ["all_cheap", "all_frontier", "oracle", "random"] %}{% set r = routing.references[name] %}
| {{ name }} | {{ r.cheap_share|pct }} | {{ r.quality|num }} | {{ r.cost|num(4) }} | {{ r.relative_cost|num }} | {{ r.conditional_misroute_rate|pct }} |
{% endfor %}

## Heads

| head | n | accuracy [95% CI] | macro-F1 | AUROC [95% CI] |
|---|---|---|---|---|
{% for name, m in heads.items() %}
| {{ name }} | {{ m.n|int }} | {{ m.accuracy|num }}{{ m.accuracy_ci|ci if m.accuracy_ci is defined else "" }} | {{ m.macro_f1|num if m.macro_f1 is defined else "-" }} | {{ (m.auroc|num) if m.auroc is defined else "-" }}{{ m.auroc_ci|ci if m.auroc_ci is defined else "" }} |
{% endfor %}

## Calibration

| head | n | temperature | ECE before | ECE after | ECE p(positive) before | after |
|---|---|---|---|---|---|---|
{% for name, c in calibration.heads.items() %}
| {{ name }} | {{ c.n }} | {{ c.temperature|num }} | {{ c.before.ece|num(4) }} | {{ c.after.ece|num(4) }} | {{ c.before.ece_positive|num(4) if c.before.ece_positive is defined else "-" }} | {{ c.after.ece_positive|num(4) if c.after.ece_positive is defined else "-" }} |
{% endfor %}

## Slices
{% for kind, rows in slices.items() %}

### by {{ kind.replace("_", " ") }}

| {{ kind }} | n | tier accuracy | cheap share | misroute rate |{% if rows and rows[0].task_accuracy is defined %} task accuracy |{% endif %}

|---|---|---|---|---|{% if rows and rows[0].task_accuracy is defined %}---|{% endif %}

{% for r in rows[:max_slice_rows] %}
| {{ r.slice|md }} | {{ r.n }} | {{ r.tier_accuracy|rate }} | {{ r.cheap_share|rate }} | {{ r.misroute_rate_frontier|rate }} |{% if r.task_accuracy is defined %} {{ r.task_accuracy|rate }} |{% endif %}

{% endfor %}
{% endfor %}

## Sensitivity

| class | rule | allowed tiers | n | detected | leak rate [95% CI] |
|---|---|---|---|---|---|
{% for cls, e in sensitivity.items() %}
| {{ cls }} | {{ e.rule or "none" }} | {{ ("none (must be blocked)" if e.allowed_tiers == [] else e.allowed_tiers|join(", ")) if e.allowed_tiers is not none else "any" }} | {{ e.n }} | {{ e.detected|rate if e.detected is defined else "-" }} | {{ e.leak|rate }} |
{% endfor %}
{% for cls, e in sensitivity.items() %}{% if e.worst_examples %}

Worst {{ cls }} leaks (redacted):

| id | source task | p({{ cls }}) | routed to | prompt |
|---|---|---|---|---|
{% for x in e.worst_examples %}
| `{{ x.id }}` | {{ x.source_task|md }} | {{ x.p_class|num(4) }} | {{ x.routed_to }} | {{ x.text|md }} |
{% endfor %}
{% endif %}{% endfor %}

## Top misroutes
{% for key, title in [("kept_cheap", "Needed the frontier, kept on cheap"), ("escalated", "Cheap was enough, sent to the frontier")] %}

{{ title }}:

| id | source task | p(frontier) | cheap / frontier correct | prompt (redacted) |
|---|---|---|---|---|
{% for x in misroutes[key] %}
| `{{ x.id }}` | {{ x.source_task|md }} | {{ x.p_frontier|num(4) }} | {{ x.cheap_correct|num(2) }} / {{ x.frontier_correct|num(2) }} | {{ x.text|md }} |
{% else %}
| (none) | | | | |
{% endfor %}
{% endfor %}

## Thresholds that meet a misroute budget
{% if thresholds %}

Fitted with `{{ thresholds.method }}` (delta {{ thresholds.delta }}) on the {{ thresholds.fitted_on }}, measured on {{ meta.split }}.

| alpha | threshold | measured misroute | of frontier prompts | cheap share | saving | meets budget |
|---|---|---|---|---|---|---|
{% for r in thresholds.rows %}
| {{ r.alpha }} | {{ r.threshold|num(4) }}{% if not r.feasible %} (not certifiable){% endif %} | {{ r.measured.misroute_rate|pct(2) }} | {{ r.measured.misroute_rate_frontier|pct(2) }} | {{ r.measured.cheap_share|pct }} | {{ r.measured.saving|pct }} | {{ "yes" if r.meets_budget else "no" }} |
{% endfor %}
| policy | {{ thresholds.policy.threshold|num(4) }} | {{ thresholds.policy.measured.misroute_rate|pct(2) }} | {{ thresholds.policy.measured.misroute_rate_frontier|pct(2) }} | {{ thresholds.policy.measured.cheap_share|pct }} | {{ thresholds.policy.measured.saving|pct }} | - |
{% else %}

No tier-labelled prompts in this split.
{% endif %}
{% if diff %}

## Compared with {{ diff.baseline }}

| metric | old | new | delta | better |
|---|---|---|---|---|
{% for r in diff.rows %}
| {{ r.metric }}{% if gate and gate.metric == r.metric %} (gate){% endif %} | {{ r.old|num(4) }} | {{ r.new|num(4) }} | {{ r.delta|signed }} | {{ r.direction }} |
{% endfor %}
{% endif %}
"""


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report's numbers as Markdown (no figures)."""
    from classifier.evaluation import adapt_sections
    from classifier.evaluation import long_prompts_section as lps

    pgr_keys = sorted(next(iter(report["routing"]["routers"].values())).get("cpt", {}) or {})
    return _env(False).from_string(_MD + "{{ long_prompts_md }}{{ adapt_md }}").render(
        long_prompts_md=lps.render_markdown(report.get("long_prompts")),
        adapt_md=adapt_sections.render_markdown(report.get("adapt")),
        pgr_keys=pgr_keys, max_slice_rows=40, meta=report["meta"], headline=report["headline"],
        routing=report["routing"], heads=report["heads"], calibration=report["calibration"],
        slices=report["slices"], sensitivity=report["sensitivity"], misroutes=report["misroutes"],
        thresholds=report["thresholds"], diff=report.get("diff"), gate=report.get("gate"),
    )


# -- drift -----------------------------------------------------------------------------------------
_DRIFT_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tierwise drift: {{ r.meta.current }}</title>
<style>{{ css }}</style></head><body><main>
<h1>Routing drift</h1>
<p class="meta">reference <code>{{ r.meta.reference }}</code> ({{ r.meta.n_reference }} decisions) &middot;
current <code>{{ r.meta.current }}</code> ({{ r.meta.n_current }} decisions) &middot; PSI threshold {{ r.meta.psi_threshold }}
&middot; {{ r.meta.created_at }}</p>
<section id="findings"><h2>Findings</h2>
<p class="{{ 'fail' if r.drift else 'pass' }}">{{ "Routing drift detected." if r.drift else "No routing drift detected." }}</p>
<ul class="headline">{% for f in r.findings %}<li>{{ f.message }}</li>{% else %}<li>Nothing above the thresholds.</li>{% endfor %}</ul></section>
<section id="tier-mix"><h2>Tier mix</h2>
{% if figures.tier_mix is defined %}<figure><img alt="tier mix" src="{{ figures.tier_mix }}"></figure>{% endif %}
<table><tr><th class="l">tier</th><th>reference</th><th>current</th><th>change</th><th>p-value</th></tr>
{% for t in r.tier_mix %}<tr><td class="l">{{ t.tier }}</td><td>{{ t.reference|pct }}</td><td>{{ t.current|pct }}</td><td>{{ (t.change * 100)|num(1) }} pts</td><td>{{ t.p_value|num(4) }}</td></tr>{% endfor %}</table></section>
<section id="confidence"><h2>Confidence histograms</h2>
<table><tr><th class="l">head</th><th class="l">quantity</th><th>PSI</th><th class="l">drift</th></tr>
{% for h, p in r.psi.items() %}<tr><td class="l">{{ h }}</td><td class="l">{{ p.quantity }}</td><td>{{ p.psi|num(4) }}</td><td class="l">{{ "yes" if p.drift else "no" }}</td></tr>{% endfor %}</table>
<div class="grid">{% for h in r.psi %}{% if figures["psi_" ~ h] is defined %}<figure><img alt="histogram {{ h }}" src="{{ figures['psi_' ~ h] }}"></figure>{% endif %}{% endfor %}</div></section>
<section id="flags"><h2>Abstain and escalation rates</h2>
<table><tr><th class="l">flag</th><th>reference</th><th>current</th><th>p-value</th></tr>
{% for f in r.flags %}<tr><td class="l">{{ f.flag }}</td><td>{{ f.reference|pct(2) }}</td><td>{{ f.current|pct(2) }}</td><td>{{ f.p_value|num(4) }}</td></tr>{% endfor %}</table></section>
<section id="slices"><h2>Slices</h2>
{% for kind, rows in r.slices.items() %}<h3>by {{ kind.replace("_", " ") }}</h3>
<div class="wide"><table><tr><th class="l">{{ kind }}</th><th>n ref</th><th>n cur</th>{% for t in r.tiers %}<th>{{ t }} ref</th><th>{{ t }} cur</th>{% endfor %}{% for f in r.flag_names %}<th>{{ f }} ref</th><th>{{ f }} cur</th>{% endfor %}</tr>
{% for s in rows %}<tr><td class="l">{{ s.slice }}</td><td>{{ s.n_reference }}</td><td>{{ s.n_current }}</td>
{% for t in r.tiers %}<td>{{ s.tiers[t].reference|pct }}</td><td>{{ s.tiers[t].current|pct }}</td>{% endfor %}
{% for f in r.flag_names %}<td>{{ s.flags[f].reference|pct }}</td><td>{{ s.flags[f].current|pct }}</td>{% endfor %}</tr>{% endfor %}
</table></div>{% endfor %}</section>
<section id="proposal"><h2>Proposed thresholds (for review, not applied)</h2>
{% if r.proposal %}<p>{{ r.proposal.summary }}</p><p class="meta">diff written to <code>{{ r.proposal.diff_path }}</code></p>
<pre>{{ r.proposal.diff }}</pre>{% else %}<p>No proposal: {{ r.proposal_note }}</p>{% endif %}</section>
</main></body></html>
"""

_DRIFT_MD = """# Routing drift

Reference `{{ r.meta.reference }}` ({{ r.meta.n_reference }} decisions), current `{{ r.meta.current }}`
({{ r.meta.n_current }} decisions), PSI threshold {{ r.meta.psi_threshold }}, {{ r.meta.created_at }}.

**{{ "Routing drift detected." if r.drift else "No routing drift detected." }}**

{% for f in r.findings %}
- {{ f.message }}
{% endfor %}

## Tier mix

| tier | reference | current | change (pts) | p-value |
|---|---|---|---|---|
{% for t in r.tier_mix %}
| {{ t.tier }} | {{ t.reference|pct }} | {{ t.current|pct }} | {{ (t.change * 100)|num(1) }} | {{ t.p_value|num(4) }} |
{% endfor %}

## Confidence (PSI per head)

| head | quantity | PSI | drift |
|---|---|---|---|
{% for h, p in r.psi.items() %}
| {{ h }} | {{ p.quantity }} | {{ p.psi|num(4) }} | {{ "yes" if p.drift else "no" }} |
{% endfor %}

## Abstain and escalation rates

| flag | reference | current | p-value |
|---|---|---|---|
{% for f in r.flags %}
| {{ f.flag }} | {{ f.reference|pct(2) }} | {{ f.current|pct(2) }} | {{ f.p_value|num(4) }} |
{% endfor %}

## Proposed thresholds (for review, not applied)

{% if r.proposal %}
{{ r.proposal.summary }}

```diff
{{ r.proposal.diff }}
```
{% else %}
No proposal: {{ r.proposal_note }}
{% endif %}
"""


def render_drift_html(result: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    return _env(True).from_string(_DRIFT_HTML).render(r=result, figures=dict(figures), css=_CSS)


def render_drift_markdown(result: Mapping[str, Any]) -> str:
    return _env(False).from_string(_DRIFT_MD).render(r=result)
