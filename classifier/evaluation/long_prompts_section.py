"""The report's long-prompt section: model views on wrapped prompts and the position sweep.

``section()`` reads what ``tierwise eval long-prompts`` and ``tierwise eval positions`` wrote
(``evaluation/long_prompts.json``, ``evaluation/positions.json``; either may be missing) and
returns the dict the report keeps under ``long_prompts`` (None when neither exists).
``render_html(section)`` / ``render_markdown(section)`` give the fragment the report page
inserts (templates ``long_prompts.{html,md}.j2``, which the report's own templates include). Per wrapper kind, for the runtime's tier view: tier AUROC, task macro-F1, cheap share and
saving at the calibrated threshold, wrapped vs unwrapped; per position: credential and pii recall.

What this module leaves out: computing the numbers (``long_prompts.py``, too slow for every
report run) and the rest of the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_PATHS = (Path("evaluation/long_prompts.json"), Path("evaluation/positions.json"))


def section(long_prompts: Path = DEFAULT_PATHS[0], positions: Path = DEFAULT_PATHS[1]) -> dict[str, Any] | None:
    """The section's data, or None when neither evaluation has been run."""
    out: dict[str, Any] = {}
    for key, path in (("views", long_prompts), ("positions", positions)):
        path = Path(path)
        if path.is_file():
            try:
                out[key] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            out[f"{key}_file"] = str(path)
    if not out:
        return None
    views = out.get("views")
    if views:
        chosen = views.get("view_default", {}).get("tier", "last_user_para")
        out["chosen_view"] = chosen
        out["rows"] = [
            {"kind": kind, "view": name, "n": k["n"], **{f"{m}_{side}": v[side].get(m)
                                                         for m in ("tier_auroc", "task_macro_f1", "cheap_share", "saving")
                                                         for side in ("wrapped", "unwrapped")},
             "collisions": v["identical_collisions"]}
            for kind, k in views["kinds"].items() for name, v in k["tier_views"].items()
        ]
    return out


def render_html(sec: dict[str, Any] | None) -> str:
    """The section as an HTML fragment (``<section id="long-prompts">``); '' without data."""
    from classifier.evaluation.report_render import environment

    return environment(True).get_template("long_prompts.html.j2").render(long_prompts=sec) if sec else ""


def render_markdown(sec: dict[str, Any] | None) -> str:
    """The section as Markdown; '' without data."""
    from classifier.evaluation.report_render import environment

    return environment(False).get_template("long_prompts.md.j2").render(long_prompts=sec) if sec else ""
