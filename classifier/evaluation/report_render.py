"""Render a ``tierwise report`` (the dict ``report.build_report`` makes) as HTML and as Markdown.

``render_html(report, figures)`` gives one self-contained page: inline CSS, every figure an
``<img>`` with a base64 ``data:`` URI, no script, no external asset, so it can be mailed or
attached to a ticket and opens offline. Each part of the report is a ``<section>`` with a stable
id (``SECTION_IDS``): summary, cost, heads, calibration, slices, sensitivity, misroutes,
thresholds, and diff when the report was compared with a baseline. ``render_markdown(report)``
gives the same numbers as Markdown tables (figures are only in the HTML). Both go through
``jinja2`` with the package's templates (``classifier/evaluation/templates/*.j2``, read through
``jinja2.PackageLoader``, so an installed wheel has them; autoescaped for HTML), so prompt text
from the data can never inject markup; that text is already redacted by the report.

A report computed on a Ray cluster (``classifier.scale.report_page``: it has a ``scale`` key) is
drawn by ``report_ray.*.j2``, which extends these templates with a banner saying what is binned
and replaces the sections the Ray engine leaves out.

``render_drift_html(result, figures)`` / ``render_drift_markdown(result)`` do the same for a
``tierwise drift`` result.

What is left out: computing numbers (every value shown is read from the dict as is) and writing
files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from classifier.evaluation import adapt_sections
from classifier.evaluation.report_common import finite, pct, template_environment

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


def environment(autoescape: bool) -> Any:
    env = template_environment(autoescape)
    env.filters.update(pct=_pct, num=_num, signed=_signed, rate=_rate, ci=_ci, md=_md)
    return env


def _template(report: Mapping[str, Any], kind: str) -> str:
    """``report_ray.*.j2`` (the page with a Ray banner, extending ``report.*.j2``) for a report
    computed on Ray (``classifier.scale.report_page``), else ``report.*.j2``."""
    return f"report_ray.{kind}.j2" if report.get("scale") else f"report.{kind}.j2"


# -- HTML ------------------------------------------------------------------------------------------
_NAV = (("summary", "Summary"), ("cost", "Cost"), ("heads", "Heads"), ("calibration", "Calibration"),
        ("slices", "Slices"), ("sensitivity", "Sensitivity"), ("misroutes", "Misroutes"),
        ("thresholds", "Thresholds"))


def render_html(report: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The self-contained HTML page of a report; ``figures`` maps figure names to data URIs."""
    nav = list(_NAV) + ([("diff", "Diff")] if report.get("diff") else [])
    nav += [("long-prompts", "Long prompts")] if report.get("long_prompts") else []
    nav += [("adapt", "Prior & adaptation")] if report.get("adapt") else []
    pgr_keys = sorted(next(iter(report["routing"]["routers"].values())).get("cpt", {}) or {})
    return environment(True).get_template(_template(report, "html")).render(
        scale=report.get("scale"), long_prompts=report.get("long_prompts"), adapt=adapt_sections.view(report.get("adapt")),
        nav=nav, figures=dict(figures), pgr_keys=pgr_keys, max_slice_rows=40,
        meta=report["meta"], headline=report["headline"], routing=report["routing"], heads=report["heads"],
        heads_uncalibrated=report.get("heads_uncalibrated", {}), confusion=report["confusion"],
        calibration=report["calibration"], slices=report["slices"], sensitivity=report["sensitivity"],
        misroutes=report["misroutes"], thresholds=report["thresholds"], diff=report.get("diff"),
        gate=report.get("gate"),
    )


# -- Markdown --------------------------------------------------------------------------------------
def render_markdown(report: Mapping[str, Any]) -> str:
    """The report's numbers as Markdown (no figures)."""
    pgr_keys = sorted(next(iter(report["routing"]["routers"].values())).get("cpt", {}) or {})
    return environment(False).get_template(_template(report, "md")).render(
        scale=report.get("scale"), long_prompts=report.get("long_prompts"), adapt=adapt_sections.view(report.get("adapt")),
        pgr_keys=pgr_keys, max_slice_rows=40, meta=report["meta"], headline=report["headline"],
        routing=report["routing"], heads=report["heads"], calibration=report["calibration"],
        slices=report["slices"], sensitivity=report["sensitivity"], misroutes=report["misroutes"],
        thresholds=report["thresholds"], diff=report.get("diff"), gate=report.get("gate"),
    )


# -- drift -----------------------------------------------------------------------------------------
def render_drift_html(result: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    return environment(True).get_template("drift.html.j2").render(r=result, figures=dict(figures))


def render_drift_markdown(result: Mapping[str, Any]) -> str:
    return environment(False).get_template("drift.md.j2").render(r=result)
