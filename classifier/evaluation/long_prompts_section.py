"""The report's long-prompt section: model views on wrapped prompts and the position sweep.

``section()`` reads what ``tierwise eval long-prompts`` and ``tierwise eval positions`` wrote
(``evaluation/long_prompts.json``, ``evaluation/positions.json``; either may be missing) and
returns the dict the report keeps under ``long_prompts`` (None when neither exists).
``render_html(section)`` / ``render_markdown(section)`` give the fragment the report page
inserts. Per wrapper kind, for the runtime's tier view: tier AUROC, task macro-F1, cheap share and
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
        chosen = views.get("view_default", {}).get("tier", "last_user_tail")
        out["chosen_view"] = chosen
        out["rows"] = [
            {"kind": kind, "view": name, "n": k["n"], **{f"{m}_{side}": v[side].get(m)
                                                         for m in ("tier_auroc", "task_macro_f1", "cheap_share", "saving")
                                                         for side in ("wrapped", "unwrapped")},
             "collisions": v["identical_collisions"]}
            for kind, k in views["kinds"].items() for name, v in k["tier_views"].items()
        ]
    return out


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_html(sec: dict[str, Any] | None) -> str:
    """The section as an HTML fragment (``<section id="long-prompts">``); '' without data."""
    import html

    if not sec:
        return ""
    parts = ['<section id="long-prompts"><h2>Long prompts: whole requests</h2>']
    if sec.get("rows"):
        parts.append(f'<p class="meta">from <code>{html.escape(sec["views_file"])}</code>, bundle '
                     f'<code>{html.escape(str(sec["views"].get("bundle")))}</code>; the runtime reads tier/task with '
                     f'view <b>{html.escape(sec["chosen_view"])}</b>. Every test prompt wrapped in &ge; 1,000 tokens of '
                     'shared prefix, the request last.</p>')
        parts.append('<table><tr><th class="l">wrapper</th><th class="l">view</th><th>n</th><th>tier AUROC wrapped</th>'
                     '<th>unwrapped</th><th>task macro-F1 wrapped</th><th>unwrapped</th><th>cheap share wrapped</th>'
                     '<th>unwrapped</th><th>saving wrapped</th><th>unwrapped</th><th>identical-probability collisions</th></tr>')
        for r in sec["rows"]:
            bold = r["view"] == sec["chosen_view"]
            cells = [r["kind"], r["view"] + (" (runtime)" if bold else "")]
            nums = [str(r["n"])] + [_f(r[f"{m}_{s}"]) for m in ("tier_auroc", "task_macro_f1", "cheap_share", "saving")
                                    for s in ("wrapped", "unwrapped")] + [str(r["collisions"])]
            parts.append("<tr>" + "".join(f'<td class="l">{html.escape(c)}</td>' for c in cells)
                         + "".join(f"<td>{n}</td>" for n in nums) + "</tr>")
        parts.append("</table>")
    pos = sec.get("positions")
    if pos:
        parts.append(f'<h3>Position sweep</h3><p class="meta">test-split credentials and pii planted in a '
                     f'{pos["filler_chars"]:,}-character request ({pos["n_per_class"]} per class); recall = '
                     'p(class) &ge; its threshold; gated = any sensitive class detected. Model only.</p>')
        parts.append('<table><tr><th class="l">view</th><th class="l">position</th><th>credential recall</th>'
                     '<th>credential gated</th><th>pii recall</th><th>pii gated</th></tr>')
        for view, v in pos["views"].items():
            for name, m in [*v["positions"].items(), ("prompt alone", v["unplanted"])]:
                parts.append(f'<tr><td class="l">{html.escape(view)}</td><td class="l">{html.escape(name)}</td>'
                             f'<td>{_f(m.get("recall_credential"))}</td><td>{_f(m.get("gated_credential"))}</td>'
                             f'<td>{_f(m.get("recall_pii"))}</td><td>{_f(m.get("gated_pii"))}</td></tr>')
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def render_markdown(sec: dict[str, Any] | None) -> str:
    """The section as Markdown; '' without data."""
    if not sec:
        return ""
    lines = ["", "## Long prompts: whole requests", ""]
    if sec.get("rows"):
        lines += [f"Runtime tier view: `{sec['chosen_view']}`.", "",
                  "| wrapper | view | n | tier AUROC w / u | task F1 w / u | cheap share w / u | saving w / u | collisions |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            lines.append(f"| {r['kind']} | {r['view']} | {r['n']} | {_f(r['tier_auroc_wrapped'])} / "
                         f"{_f(r['tier_auroc_unwrapped'])} | {_f(r['task_macro_f1_wrapped'])} / "
                         f"{_f(r['task_macro_f1_unwrapped'])} | {_f(r['cheap_share_wrapped'])} / "
                         f"{_f(r['cheap_share_unwrapped'])} | {_f(r['saving_wrapped'])} / {_f(r['saving_unwrapped'])} "
                         f"| {r['collisions']} |")
    pos = sec.get("positions")
    if pos:
        lines += ["", "| view | position | credential recall | pii recall |", "|---|---|---|---|"]
        for view, v in pos["views"].items():
            for name, m in [*v["positions"].items(), ("prompt alone", v["unplanted"])]:
                lines.append(f"| {view} | {name} | {_f(m.get('recall_credential'))} | {_f(m.get('recall_pii'))} |")
    return "\n".join(lines) + "\n"
