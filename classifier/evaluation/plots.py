"""Figures for the evaluation and drift reports, as PNG bytes ready to embed in a page.

Every function builds one matplotlib ``Figure`` (object API, Agg canvas: no pyplot state, no
display, safe to call from any thread), renders it to PNG bytes and closes it. ``data_uri`` turns
the bytes into a ``data:image/png;base64,...`` URI, so an HTML report carries its images inside
itself and opens without any external asset.

What is here: the cost-vs-misroute and cost-vs-quality curves of several routers with the
reference routers (``cost_curves_png``), a confusion matrix (``confusion_png``), a before/after
reliability diagram (``reliability_png``), overlaid reference/current histograms
(``histogram_pair_png``) and grouped share bars (``share_bars_png``) for drift.

What is left out: computing anything (the callers pass ready numbers: sweeps from
``classifier.evaluation.costs``, bins from ``classifier.evaluation.calibration``), and writing
files (the report modules decide where bytes go).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "confusion_png",
    "cost_curves_png",
    "data_uri",
    "histogram_pair_png",
    "reliability_png",
    "share_bars_png",
]

_DPI = 100
# one colour per router, stable across figures (tab10 without grey)
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=_DPI)
    fig.clear()
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for ``png`` bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- cost curves -----------------------------------------------------------------------------------
def cost_curves_png(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    points: Mapping[str, Mapping[str, float]],
    *,
    operating_point: Mapping[str, float] | None = None,
    quality_target: float | None = None,
    title: str = "",
) -> bytes:
    """Two panels against cost relative to all-frontier: misroute rate (left), quality (right).

    ``curves``: router -> ``{"relative_cost", "conditional_misroute_rate", "quality"}`` arrays
    (a threshold sweep). ``points``: single-point routers (all-cheap, all-frontier, oracle) with the
    same keys as floats; ``random`` is drawn as the straight line between all-cheap and
    all-frontier. ``operating_point``: the policy's threshold on the model's curve.
    """
    fig, (left, right) = _figure(11.5, 4.4, ncols=2)
    for i, (name, c) in enumerate(curves.items()):
        x = np.asarray(c["relative_cost"], dtype=float)
        order = np.argsort(x, kind="stable")
        colour = _COLOURS[i % len(_COLOURS)]
        left.plot(x[order], np.asarray(c["conditional_misroute_rate"], dtype=float)[order],
                  lw=1.6, color=colour, label=name)
        right.plot(x[order], np.asarray(c["quality"], dtype=float)[order], lw=1.6, color=colour, label=name)
    cheap, front = points.get("all_cheap"), points.get("all_frontier")
    if cheap and front:
        for ax, key in ((left, "conditional_misroute_rate"), (right, "quality")):
            ax.plot([cheap["relative_cost"], front["relative_cost"]], [cheap[key], front[key]],
                    ls="--", color="grey", lw=1, label="random (expected)")
    markers = {"all_cheap": "o", "all_frontier": "s", "oracle": "*"}
    for name, marker in markers.items():
        p = points.get(name)
        if not p:
            continue
        for ax, key in ((left, "conditional_misroute_rate"), (right, "quality")):
            ax.scatter([p["relative_cost"]], [p[key]], marker=marker, s=80, zorder=4, color="black",
                       facecolors="none" if marker != "*" else "gold", label=name)
    if operating_point:
        for ax, key in ((left, "conditional_misroute_rate"), (right, "quality")):
            ax.scatter([operating_point["relative_cost"]], [operating_point[key]], marker="X", s=110,
                       zorder=5, color="crimson", label=f"policy threshold {operating_point['threshold']:.3g}")
    if quality_target is not None:
        right.axhline(quality_target, color="grey", lw=0.8, ls=":", label="95% of all-frontier quality")
    left.set_xlabel("cost relative to all-frontier")
    left.set_ylabel("misroute rate (frontier prompts kept cheap)")
    left.set_title("cost vs misroute")
    right.set_xlabel("cost relative to all-frontier")
    right.set_ylabel("quality (mean correctness)")
    right.set_title("cost vs quality")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    return _png(fig)


# -- classification --------------------------------------------------------------------------------
def confusion_png(title: str, classes: Sequence[str], matrix: np.ndarray) -> bytes:
    """A confusion matrix (rows true, columns predicted) with counts and row-normalised colour."""
    m = np.asarray(matrix, dtype=float)
    k = len(classes)
    fig, ax = _figure(1.4 + 0.9 * k, 1.2 + 0.8 * k)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(m / m.sum(axis=1, keepdims=True))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=9,
                    color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), labels=list(classes), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def reliability_png(
    title: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    xlabel: str,
    ece_before: float,
    ece_after: float,
    temperature: float,
) -> bytes:
    """Reliability diagram before (T=1) and after temperature scaling, side by side.

    ``before`` / ``after``: ``calibration.reliability_bins`` output (edges, count, confidence,
    frequency per bin).
    """
    fig, axes = _figure(10, 4.6, ncols=2, nrows=2, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    for col, (label, b, err) in enumerate((("before (T=1)", before, ece_before),
                                           (f"after (T={temperature:.2f})", after, ece_after))):
        edges = np.asarray(b["edges"], dtype=float)
        count = np.asarray(b["count"], dtype=float)
        width = float(edges[1] - edges[0])
        centers = edges[:-1] + width / 2
        filled = count > 0
        ax = axes[0, col]
        ax.bar(centers[filled], np.asarray(b["frequency"], dtype=float)[filled], width=width * 0.9,
               color="#4c72b0", edgecolor="white", label="observed")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        ax.plot(np.asarray(b["confidence"], dtype=float)[filled], np.asarray(b["frequency"], dtype=float)[filled],
                "o", color="#dd8452", ms=4, label="bin mean confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}: ECE={err:.3f}", fontsize=9)
        ax.set_ylabel("observed frequency")
        ax.legend(loc="upper left", fontsize=7)
        axes[1, col].bar(centers, count, width=width * 0.9, color="#8c8c8c")
        axes[1, col].set_xlabel(xlabel)
        axes[1, col].set_ylabel("rows")
    fig.suptitle(title, fontsize=10)
    return _png(fig)


# -- drift -------------------------------------------------------------------------------------------
def histogram_pair_png(title: str, edges: Sequence[float], reference: Sequence[float],
                       current: Sequence[float], *, xlabel: str, psi: float | None = None) -> bytes:
    """Reference and current bin shares (not counts) over the same bins, as outlined step bars."""
    e = np.asarray(edges, dtype=float)
    fig, ax = _figure(5.6, 3.2)
    ax.stairs(np.asarray(reference, dtype=float), e, label="reference", color="#1f77b4", lw=1.8)
    ax.stairs(np.asarray(current, dtype=float), e, label="current", color="#d62728", lw=1.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of prompts")
    ax.set_title(title + (f" (PSI {psi:.3f})" if psi is not None else ""), fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def share_bars_png(title: str, labels: Sequence[str], reference: Sequence[float],
                   current: Sequence[float]) -> bytes:
    """Grouped bars of reference vs current shares per label (e.g. tier mix)."""
    x = np.arange(len(labels))
    fig, ax = _figure(max(4.0, 1.1 * len(labels) + 1.5), 3.2)
    ax.bar(x - 0.2, reference, width=0.4, label="reference", color="#1f77b4")
    ax.bar(x + 0.2, current, width=0.4, label="current", color="#d62728")
    ax.set_xticks(x, labels=list(labels), fontsize=8)
    ax.set_ylabel("share of prompts")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)
