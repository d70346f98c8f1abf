"""Long-prompt evaluation: the model views measured on wrapped test prompts, and a position sweep.

``tierwise eval long-prompts --bundle B`` builds (if missing) the wrapped sets of
``wrappers.py`` under ``--sets-dir`` (default ``data/build/eval``) and scores a seeded sample of
each kind, wrapped and unwrapped, under every view candidate (``classifier/serving/view.py``):
tier/task views ``head``, ``head_tail``, ``last_user``, ``last_user_tail``, ``last_user_para``, ``windows_mean``;
sensitivity views ``windows_max``, ``head``. Per kind and view it writes (``--out``, default
``evaluation/long_prompts.json``): tier AUROC and task macro-F1 wrapped vs unwrapped, the cheap
share and saving (1 - cost / all-frontier cost, the rows' own token counts) at the bundle's
calibrated tier threshold, sensitivity recall per class and the false-positive rate on benign
rows at the policy's sensitivity thresholds, and ``identical_collisions``: how many wrapped
prompts share a tier probability with a prompt whose request got a different one unwrapped
(head-only reading of a shared prefix makes every prompt of a task identical).

``tierwise eval positions --bundle B`` plants test-split credential and pii prompts in ~8k-token
requests (benign test prompts as filler) at 0, 25, 50, 75 and 100% of the text and at 32k
characters, and writes the recall per position (class recall: ``p(class) >= threshold``; gated:
any sensitive class detected, so the policy keeps it off external tiers) under the router's
view and head-only, with the unplanted prompts and the filler alone as references
(``--out``, default ``evaluation/positions.json``). Those numbers are the model's; ``shipped``
adds what ``Router.route`` decides on the same requests, with the bundle's detectors and policy
(what the issue's position goal is measured on).

Windows shared by several requests (a k-shot prefix, the filler before a planted secret) are run
once. What this module leaves out: training-time wrapping and the HTML rendering
(``long_prompts_section.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.errors import ConfigError, DataError
from classifier.evaluation import wrappers
from classifier.evaluation.prices import DEFAULT_PRICES_PATH

logger = logging.getLogger(__name__)

TIER_VIEWS = ("head", "head_tail", "last_user", "last_user_tail", "last_user_para", "windows_mean")
SENS_VIEWS = ("windows_max", "head")
POSITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
AT_CHARS = 32_000


# -- scoring every view at once ---------------------------------------------------------------------
def score_views(router: Any, items: Sequence[Any], *, progress: bool = False,
                tier_views: Sequence[str] = TIER_VIEWS, sens_views: Sequence[str] = SENS_VIEWS
                ) -> dict[str, dict[str, np.ndarray]]:
    """Calibrated probabilities per view: ``{"tier:<view>": {head: [n, C]}, "sens:<view>": {...}}``.

    Every item is tokenised once; the rows of all views are cut from its ids, rows shared by any
    items are run once. Items the router cannot parse raise ``DataError`` naming the item."""
    from tqdm import tqdm

    from classifier.serving.view import ModelView, sensitivity_windows, tier_rows

    w = router.window
    base = router._view  # the router's fitted view: overlap, head_tokens, window cap
    views = {name: ModelView(**{**base.to_dict(), "tier": name}).fitted(w) for name in tier_views}
    cache: dict[tuple[int, ...], int] = {}
    rows: list[list[int]] = []

    def row_of(ids: list[int], segs: tuple[tuple[int, int], ...]) -> int:
        body = tuple(router._cls + [t for lo, hi in segs for t in ids[lo:hi]] + router._sep)
        k = cache.get(body)
        if k is None:
            k = cache[body] = len(rows)
            rows.append(list(body))
        return k

    plans: list[tuple[dict[str, list[int]], dict[str, list[int]]]] = []
    for i, item in enumerate(tqdm(items, desc="tokenising", disable=not progress)):
        req, problem = router.parse(item)
        if req is None:
            raise DataError(f"item {i}: {problem}")
        req, _, _ = router._clean_request(req)
        ids, span = router._tokenise(req)
        n = len(ids)
        windows, _ = sensitivity_windows(n, w, base)
        tier_plan = {name: [row_of(ids, s) for s in tier_rows(v, n, span, w, windows, router._para_tail(req, span, v))]
                     for name, v in views.items()}
        sens_plan = {"windows_max": [row_of(ids, s) for s in windows], "head": [row_of(ids, ((0, min(n, w)),))]}
        plans.append((tier_plan, {k: v for k, v in sens_plan.items() if k in sens_views}))
    probs = _run_cached(router, rows, progress)
    out: dict[str, dict[str, np.ndarray]] = {}
    sens = router._sens_head
    for name in tier_views:
        out[f"tier:{name}"] = {h: np.stack([probs[h][t[name]].mean(axis=0) for t, _ in plans])
                               for h in router.head_names if h != sens}
    for name in sens_views:
        out[f"sens:{name}"] = {sens: np.stack([router._pool_sensitivity(probs[sens][s[name]]) if len(s[name]) > 1
                                               else probs[sens][s[name][0]] for _, s in plans])}
    return out


def _run_cached(router: Any, rows: list[list[int]], progress: bool) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    chunk = 64
    out = {h: np.empty((len(rows), router.schema.head(h).num_classes)) for h in router.head_names}
    for start in tqdm(range(0, len(order), chunk), desc=f"{len(rows)} model rows", disable=not progress):
        idx = order[start:start + chunk]
        raw = router._run_rows([rows[i] for i in idx], None)
        p = router.proba_from_logits(raw)
        for h in router.head_names:
            out[h][idx] = p[h]
    return out


# -- metrics ------------------------------------------------------------------------------------------
def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def _macro_f1(y: list[str], p: np.ndarray, classes: Sequence[str]) -> float | None:
    from sklearn.metrics import f1_score

    if not y:
        return None
    pred = [classes[j] for j in p.argmax(axis=1)]
    return float(f1_score(y, pred, labels=sorted(set(y)), average="macro"))


def tier_metrics(router: Any, records: list[dict[str, Any]], probs: dict[str, np.ndarray],
                 outcomes_frame: pd.DataFrame | None, prices: Any) -> dict[str, Any]:
    """Tier AUROC, task macro-F1, cheap share and saving at the policy's tier threshold."""
    policy = router.policy
    tier_head = router.schema.head(policy.tier_head)
    pos = tier_head.positive_class or tier_head.classes[-1]
    p_pos = probs[policy.tier_head][:, tier_head.classes.index(pos)]
    out: dict[str, Any] = {}
    labelled = [i for i, r in enumerate(records) if r.get("tier") in tier_head.classes]
    if labelled:
        y = np.array([records[i]["tier"] == pos for i in labelled], dtype=int)
        out["tier_auroc"] = _auroc(y, p_pos[labelled])
    if policy.task_head and policy.task_head in probs:
        task = router.schema.head(policy.task_head)
        with_task = [i for i, r in enumerate(records) if r.get("task") in task.classes]
        out["task_macro_f1"] = _macro_f1([records[i]["task"] for i in with_task], probs[policy.task_head][with_task],
                                         task.classes)
    t = policy.tier_threshold
    if outcomes_frame is not None and labelled:
        from classifier.evaluation.costs import RoutingOutcomes, apply_threshold

        ids = [records[i]["id"] for i in labelled]
        frame = outcomes_frame.set_index("id").loc[ids].reset_index()
        try:
            outcomes = RoutingOutcomes.from_frame(frame, prices, tier_column=tier_head.column, frontier_class=pos)
        except DataError:
            outcomes = None
        if outcomes is not None and len(outcomes):
            m = apply_threshold(outcomes, p_pos[labelled][outcomes.rows], t)
            out.update(cheap_share=m["cheap_share"], saving=1.0 - m["relative_cost"], quality=m["quality"])
    else:
        out["cheap_share"] = float((p_pos < t).mean()) if len(p_pos) else None
    out["threshold"] = t
    return out


def sensitivity_metrics(router: Any, records: list[dict[str, Any]], probs: np.ndarray) -> dict[str, Any]:
    """Recall per sensitive class at the policy thresholds, and the benign rows' flag rate."""
    policy = router.policy
    head = router.schema.head(router._sens_head)
    hit = np.zeros((len(records), len(head.classes)), dtype=bool)
    for c, t in policy.sensitivity_thresholds.items():
        hit[:, head.classes.index(c)] = probs[:, head.classes.index(c)] >= t
    out: dict[str, Any] = {}
    for c in policy.sensitivity_thresholds:
        rows = [i for i, r in enumerate(records) if r.get("sensitivity") == c]
        if rows:
            out[f"recall_{c}"] = float(hit[rows, head.classes.index(c)].mean())
            out[f"gated_{c}"] = float(hit[rows].any(axis=1).mean())
            out[f"n_{c}"] = len(rows)
    benign = [i for i, r in enumerate(records) if r.get("sensitivity") == head.negative_class]
    if benign:
        out["benign_flag_rate"] = float(hit[benign].any(axis=1).mean())
    return out


def identical_collisions(wrapped: np.ndarray, unwrapped: np.ndarray) -> int:
    """Wrapped prompts that share an exact tier probability with another whose request scored
    differently unwrapped (count of extra distinct unwrapped values per shared wrapped value)."""
    groups: dict[float, set[float]] = {}
    for a, b in zip(wrapped.tolist(), unwrapped.tolist(), strict=True):
        groups.setdefault(round(a, 12), set()).add(round(b, 6))
    return int(sum(len(v) - 1 for v in groups.values()))


def evaluate_long_prompts(router: Any, sets_dir: Path, frame: pd.DataFrame, prices: Any, *,
                          sample: int | None = 300, seed: int = 0, kinds: Sequence[str] = wrappers.KINDS,
                          progress: bool = False) -> dict[str, Any]:
    """The long-prompt evaluation (see the module docstring) as a JSON-ready dict."""
    policy = router.policy
    tier_head = router.schema.head(policy.tier_head)
    pos_idx = tier_head.classes.index(tier_head.positive_class or tier_head.classes[-1])
    result: dict[str, Any] = {"bundle": str(router.source), "kind": router.manifest.kind, "sample": sample,
                              "seed": seed, "view_default": router.view.to_dict(), "kinds": {}}
    for kind in kinds:
        path = Path(sets_dir) / f"wrapped_{kind}.jsonl"
        if not path.is_file():
            raise DataError(f"{path} not found: build the sets first (tierwise eval long-prompts --rebuild)")
        records = wrappers.read_wrapped(path, sample=sample, seed=seed)
        t0 = time.perf_counter()
        wrapped = score_views(router, [r["body"] for r in records], progress=progress)
        unwrapped = score_views(router, [r["request"] for r in records], progress=progress)
        per_view: dict[str, Any] = {}
        for name in TIER_VIEWS:
            w, u = wrapped[f"tier:{name}"], unwrapped[f"tier:{name}"]
            mw, mu = tier_metrics(router, records, w, frame, prices), tier_metrics(router, records, u, frame, prices)
            per_view[name] = {
                "wrapped": mw, "unwrapped": mu,
                "identical_collisions": identical_collisions(w[policy.tier_head][:, pos_idx],
                                                             u[policy.tier_head][:, pos_idx]),
                "tier_auroc_gap": _gap(mw.get("tier_auroc"), mu.get("tier_auroc")),
                "task_macro_f1_gap": _gap(mw.get("task_macro_f1"), mu.get("task_macro_f1")),
            }
        sens: dict[str, Any] = {}
        for name in SENS_VIEWS:
            key = f"sens:{name}"
            sens[name] = {"wrapped": sensitivity_metrics(router, records, wrapped[key][router._sens_head]),
                          "unwrapped": sensitivity_metrics(router, records, unwrapped[key][router._sens_head])}
        result["kinds"][kind] = {"n": len(records), "tier_views": per_view, "sensitivity_views": sens,
                                 "prefix_tokens_min": min(r["prefix_tokens"] for r in records),
                                 "seconds": round(time.perf_counter() - t0, 1)}
        logger.info("%s: %d prompts scored under %d views in %.1f s\n%s", kind, len(records),
                    len(TIER_VIEWS) + len(SENS_VIEWS), time.perf_counter() - t0,
                    format_table({"kinds": {kind: result["kinds"][kind]}}))
    return result


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a - b)


# -- position sweep -----------------------------------------------------------------------------------
def filler_text(frame: pd.DataFrame, *, min_tokens: int = 8000, min_chars: int = AT_CHARS + 2000,
                seed: int = 0) -> str:
    """Benign test prompts joined into one text of at least ``min_tokens`` pre-tokens and
    ``min_chars`` characters."""
    benign = frame[(frame["split"] == "test") & (frame["sensitivity"] == "none") & frame["tier"].notna()]
    if benign.empty:
        raise DataError("no benign test prompts with a tier label for the filler")
    order = np.random.default_rng(seed).permutation(len(benign))
    parts: list[str] = []
    tokens = chars = 0
    for i in order:
        t = benign.iloc[int(i)]["text"]
        parts.append(t)
        tokens += wrappers.count_tokens(t)
        chars += len(t) + 2
        if tokens >= min_tokens and chars >= min_chars:
            break
    return "\n\n".join(parts)


def plant(filler: str, secret: str, where: float | int) -> str:
    """``secret`` inserted at a paragraph break of ``filler``: at a share of its length (float) or
    at a character offset (int), the nearest break at or before it."""
    at = int(round(where * len(filler))) if isinstance(where, float) else min(int(where), len(filler))
    if at >= len(filler):
        return filler + "\n\n" + secret
    brk = filler.rfind("\n\n", 0, at + 1)
    at = 0 if brk < 0 else brk
    if at == 0:
        return secret + "\n\n" + filler
    return filler[:at] + "\n\n" + secret + filler[at:]


def position_sweep(router: Any, frame: pd.DataFrame, *, n_per_class: int = 40, seed: int = 0,
                   progress: bool = False) -> dict[str, Any]:
    """Recall of planted test-split credentials and pii by position (see the module docstring)."""
    test = frame[frame["split"] == "test"]
    filler = filler_text(frame, seed=seed)
    secrets = []
    for c in ("credential", "pii"):
        rows = test[test["sensitivity"] == c]
        if len(rows) > n_per_class:
            rows = rows.sample(n=n_per_class, random_state=seed)
        secrets += [{"sensitivity": c, "text": t, "id": i} for t, i in zip(rows["text"], rows["id"], strict=True)]
    if not secrets:
        raise DataError("no credential or pii prompts in the test split")
    positions: list[tuple[str, float | int]] = [(f"{int(p * 100)}%", p) for p in POSITIONS] + [("32k_chars", AT_CHARS)]
    items: list[Any] = []
    for _, where in positions:
        items += [{"messages": [{"role": "user", "content": plant(filler, s["text"], where)}]} for s in secrets]
    items += [s["text"] for s in secrets]  # unplanted
    items.append({"messages": [{"role": "user", "content": filler}]})
    t0 = time.perf_counter()
    scored = score_views(router, items, progress=progress, tier_views=(), sens_views=SENS_VIEWS)
    records = [{"sensitivity": s["sensitivity"]} for s in secrets]
    n = len(secrets)
    out: dict[str, Any] = {"bundle": str(router.source), "kind": router.manifest.kind, "n_per_class": n_per_class,
                           "filler_tokens_min": wrappers.count_tokens(filler), "filler_chars": len(filler),
                           "view": router.view.to_dict(), "views": {}}
    for view in SENS_VIEWS:
        p = scored[f"sens:{view}"][router._sens_head]
        by_pos = {name: sensitivity_metrics(router, records, p[k * n:(k + 1) * n])
                  for k, (name, _) in enumerate(positions)}
        base = len(positions) * n
        out["views"][view] = {
            "positions": by_pos,
            "unplanted": sensitivity_metrics(router, records, p[base:base + n]),
            "filler_alone_flagged": bool(sensitivity_metrics(
                router, [{"sensitivity": router.schema.head(router._sens_head).negative_class}],
                p[-1:]).get("benign_flag_rate", 0.0) > 0),
        }
    out["shipped"] = shipped_decisions(router, items[:len(positions) * n + n], secrets,
                                       [name for name, _ in positions] + ["unplanted"])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def shipped_decisions(router: Any, items: Sequence[Any], secrets: Sequence[Mapping[str, Any]],
                      names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What the router itself decides on each planted request (``Router.route``: the model view,
    the bundle's detectors and the policy), per position: ``detected_<class>`` (the class's model
    probability at its threshold, or a detector hit of that class) and ``gated_<class>`` (a
    sensitivity rule decided the request, so it stays off external tiers)."""
    policy = router.policy
    sens = router._sens_head
    n = len(secrets)
    decisions = router.route(list(items))
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        block = decisions[k * n:(k + 1) * n]
        m: dict[str, Any] = {}
        for c, t in policy.sensitivity_thresholds.items():
            rows = [i for i, s in enumerate(secrets) if s["sensitivity"] == c]
            if not rows:
                continue
            det = [block[i].probabilities.get(sens, {}).get(c, 0.0) >= t
                   or any(d.get("class") == c for d in block[i].detections) for i in rows]
            gated = [block[i].blocked or block[i].rule.startswith("sensitivity:") for i in rows]
            m[f"detected_{c}"] = float(np.mean(det))
            m[f"gated_{c}"] = float(np.mean(gated))
            m[f"n_{c}"] = len(rows)
        out[name] = m
    return out


# -- CLI ---------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory or .tar.gz")
    parser.add_argument("--data", type=Path, default=Path("data/build"), help="the built data set (directory or parquet)")
    parser.add_argument("--out", type=Path, default=Path(out), help=f"JSON result (default {out})")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--view", type=str, default=None,
                        help="ModelView fields as JSON for the router (default: the runtime default)")
    parser.add_argument("--no-progress", action="store_true")


def add_long_prompts_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, "evaluation/long_prompts.json")
    parser.add_argument("--sets-dir", type=Path, default=Path("data/build/eval"),
                        help="where the wrapped_<kind>.jsonl sets are (built there when missing)")
    parser.add_argument("--shared", type=Path, default=None, help="shared datasets (default $TIERWISE_SHARED_DATA)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the wrapped sets")
    parser.add_argument("--sample", type=int, default=300, help="prompts per kind (default 300; 0 = all)")
    parser.add_argument("--kinds", nargs="+", default=list(wrappers.KINDS), choices=wrappers.KINDS)
    parser.add_argument("--prices", type=Path, default=DEFAULT_PRICES_PATH)


def add_positions_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, "evaluation/positions.json")
    parser.add_argument("--per-class", type=int, default=40, help="credential and pii prompts each (default 40)")


def _load(args: argparse.Namespace) -> tuple[Any, pd.DataFrame]:
    from classifier.data.reader import read_dataset
    from classifier.serving.runtime import Router

    frame = read_dataset(args.data)  # a build directory or the parquet file, as the other commands
    view = json.loads(args.view) if args.view else None
    return Router.load(args.bundle, threads=args.threads, view=view), frame


def _write(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def run_long_prompts(args: argparse.Namespace) -> int:
    import os

    from classifier.evaluation.prices import Prices

    if args.sample < 0:
        raise ConfigError(f"--sample must be >= 0, got {args.sample}")
    router, frame = _load(args)
    with router:
        missing = [k for k in args.kinds if not (args.sets_dir / f"wrapped_{k}.jsonl").is_file()]
        if args.rebuild or missing:
            shared = args.shared or Path(os.environ.get("TIERWISE_SHARED_DATA", "../shared/datasets"))
            sets = wrappers.build_wrapped(frame, shared, kinds=args.kinds, seed=args.seed,
                                          progress=not args.no_progress)
            wrappers.write_wrapped(sets, args.sets_dir)
        doc = evaluate_long_prompts(router, args.sets_dir, frame, Prices.from_yaml(args.prices),
                                    sample=args.sample or None, seed=args.seed, kinds=args.kinds,
                                    progress=not args.no_progress)
    _write(doc, args.out)
    sys.stdout.write(format_table(doc) + f"\nwritten to {args.out}\n")
    return 0


def run_positions(args: argparse.Namespace) -> int:
    if args.per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {args.per_class}")
    router, frame = _load(args)
    with router:
        doc = position_sweep(router, frame, n_per_class=args.per_class, seed=args.seed, progress=not args.no_progress)
    _write(doc, args.out)
    lines = ["view         position   recall_cred  gated_cred  recall_pii  gated_pii"]
    for view, v in doc["views"].items():
        for name, m in [*v["positions"].items(), ("unplanted", v["unplanted"])]:
            lines.append(f"{view:<12} {name:<10} {m.get('recall_credential', float('nan')):>11.3f} "
                         f"{m.get('gated_credential', float('nan')):>11.3f} {m.get('recall_pii', float('nan')):>11.3f} "
                         f"{m.get('gated_pii', float('nan')):>10.3f}")
    for name, m in doc.get("shipped", {}).items():
        lines.append(f"{'shipped':<12} {name:<10} {m.get('detected_credential', float('nan')):>11.3f} "
                     f"{m.get('gated_credential', float('nan')):>11.3f} {m.get('detected_pii', float('nan')):>11.3f} "
                     f"{m.get('gated_pii', float('nan')):>10.3f}")
    sys.stdout.write("\n".join(lines) + f"\nwritten to {args.out}\n")
    return 0


def format_table(doc: dict[str, Any]) -> str:
    """Tier/task numbers per kind and view, wrapped vs unwrapped, as a fixed-width table."""
    def f(x: Any) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    lines = ["kind         view            auroc_w auroc_u f1_w   f1_u   cheap_w cheap_u save_w save_u collisions"]
    for kind, k in doc["kinds"].items():
        for view, v in k["tier_views"].items():
            w, u = v["wrapped"], v["unwrapped"]
            lines.append(f"{kind:<12} {view:<15} {f(w.get('tier_auroc'))}  {f(u.get('tier_auroc'))} "
                         f"{f(w.get('task_macro_f1'))} {f(u.get('task_macro_f1'))} {f(w.get('cheap_share'))}  "
                         f"{f(u.get('cheap_share'))}  {f(w.get('saving'))} {f(u.get('saving'))} "
                         f"{v['identical_collisions']:>6d}")
        for view, v in k["sensitivity_views"].items():
            w = v["wrapped"]
            lines.append(f"{kind:<12} sens:{view:<10} recall cred {f(w.get('recall_credential'))} pii "
                         f"{f(w.get('recall_pii'))} benign flagged {f(w.get('benign_flag_rate'))} (unwrapped cred "
                         f"{f(v['unwrapped'].get('recall_credential'))} pii {f(v['unwrapped'].get('recall_pii'))})")
    return "\n".join(lines)
