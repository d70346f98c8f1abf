"""Report sections of issue 15: both tier budgets side by side, and the per-cluster prior.

``budgets_section`` fits the misroute and the quality-loss budget on calibration rows and measures
both on the evaluated rows (``quality_budget.compare_budgets``); ``clusters_section`` lists the
clusters of a fitted ``ClusterPrior`` ("cheap succeeds 85% on ..., n = 1,240"). Each returns a
plain dict for ``report.json``; ``*_markdown`` render it as a fragment. Hooking them into
``tierwise report`` is three lines in ``report.build_report`` / ``report_render.render_markdown``
(left to the merge, so that this module has no edits in shared files). Left out: HTML rendering.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from classifier.evaluation.quality_budget import budget_table, compare_budgets

__all__ = ["budgets_markdown", "budgets_section", "clusters_markdown", "clusters_section"]


def budgets_section(cal: dict[str, Any], test: dict[str, Any], *, alpha: float = 0.05,
                    delta: float = 0.05) -> dict[str, Any]:
    """``cal`` / ``test``: ``scores``, ``needs_frontier``, ``cheap_correct``, ``frontier_correct``,
    ``cost_cheap``, ``cost_frontier`` arrays of tier-labelled rows with both outcomes."""
    def finite(part: dict[str, Any]) -> dict[str, Any]:
        ok = np.isfinite(np.asarray(part["cheap_correct"], float)) & np.isfinite(np.asarray(part["frontier_correct"], float))
        return {k: (None if v is None else np.asarray(v)[ok]) for k, v in part.items()}

    return compare_budgets(finite(cal), finite(test), alpha=alpha, delta=delta)


def budgets_markdown(section: dict[str, Any]) -> str:
    return ("## Risk budgets side by side\n\nBoth thresholds are fitted on the calibration split with the "
            f"same Learn-then-Test guarantee (alpha {section['alpha']:g}, delta {section['delta']:g}) and "
            "measured here. Misroute counts every prompt labelled frontier kept cheap; quality loss only "
            "those the frontier model solves and the cheap one does not.\n\n" + budget_table(section) + "\n")


def clusters_section(prior: Any, top: int = 15) -> dict[str, Any]:
    rows = prior.summary()[:top]
    return {"global_rate": prior.global_rate_, "clusters": rows}


def clusters_markdown(section: dict[str, Any]) -> str:
    lines = ["## Kinds of request (per-cluster prior)", "",
             f"Overall the cheap tier succeeds {100 * section['global_rate']:.0f}% of the time.", ""]
    lines += [f"- {c['description']} (90% interval {100 * c['interval'][0]:.0f}-{100 * c['interval'][1]:.0f}%)"
              for c in section["clusters"]]
    return "\n".join(lines) + "\n"
