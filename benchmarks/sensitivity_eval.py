"""Sensitivity recall at precision >= 0.95 of a bundle, by the model alone and with the bundle's
deterministic detectors, on the default data's test and ood splits (issue 14's done-when).

Score of a prompt for a class: the model's calibrated probability (sliding windows, max-pooled,
as the runtime reads it); with detectors, 1.0 when a detector of that class hit the prompt, else
the model's probability: a detector hit is evidence the policy acts on whatever the model says.
Recall at precision >= 0.95 is the highest recall over thresholds whose measured precision on
the split is >= 0.95 (``classifier.evaluation.metrics.recall_at_precision``); the threshold is
read off the split itself, so this is the separability the issue asks for, not a calibrated gate.

    python -m benchmarks.sensitivity_eval --bundle bundles/student --bundle bundles/teacher-int8

Writes ``evaluation/sensitivity_eval.json``. Leaves out: the calibrated gates' leak rates (the
report has them) and real traffic (``tierwise eval real-traffic``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier.evaluation.metrics import recall_at_precision  # noqa: E402


def evaluate_bundle(path: Path, frame, splits: Sequence[str], batch: int = 64) -> dict:
    from tqdm.auto import tqdm

    from classifier.serving.runtime import Router

    out: dict = {}
    with Router.load(path, threads=2) as router:
        head = router.policy.sensitivity_head
        classes = list(router.schema.head(head).classes)
        for split in splits:
            rows = frame[frame["split"] == split]
            texts = rows["text"].tolist()
            probs = np.zeros((len(texts), len(classes)))
            tier_p, task_pred = np.zeros(len(texts)), [None] * len(texts)
            task_classes = list(router.schema.head("task").classes)
            hits = [set() for _ in texts]
            for s in tqdm(range(0, len(texts), batch), desc=f"{path.name} {split}", leave=False):
                chunk = texts[s:s + batch]
                pp = router.predict_proba(chunk)
                probs[s:s + len(chunk)] = pp[head]
                tier_p[s:s + len(chunk)] = pp["tier"][:, list(router.schema.head("tier").classes).index("frontier")]
                task_pred[s:s + len(chunk)] = [task_classes[i] for i in pp["task"].argmax(1)]
                if router.detectors is not None:
                    for j, found in enumerate(router.detectors.scan_many(chunk)):
                        hits[s + j] = {h.cls for h in found}
            res = {}
            for c in ("pii", "credential"):
                k = classes.index(c)
                y = (rows["sensitivity"].to_numpy() == c).astype(int)
                model = probs[:, k]
                both = np.where([c in h for h in hits], 1.0, model)
                r_m, _ = recall_at_precision(y, model, 0.95)
                r_b, _ = recall_at_precision(y, both, 0.95)
                det = np.array([c in h for h in hits])
                # the same against benign rows only: a credential prompt that also holds personal
                # data (the data set labels it credential) is not a false pii alarm for routing
                other = (rows["sensitivity"].to_numpy() != c) & (rows["sensitivity"].to_numpy() != "none")
                keep = ~other
                r_bn, _ = recall_at_precision(y[keep], both[keep], 0.95)
                res[c] = {"positives": int(y.sum()), "model": round(float(r_m), 4),
                          "model+detectors": round(float(r_b), 4),
                          "model+detectors_vs_none": round(float(r_bn), 4),
                          "detector_false_flags_on_none": int(det[rows["sensitivity"].to_numpy() == "none"].sum()),
                          "detector_recall": round(float(det[y == 1].mean()), 4) if y.sum() else None,
                          "detector_false_flags": int(det[y == 0].sum())}
            from sklearn.metrics import f1_score, roc_auc_score

            t = rows["tier"].to_numpy()
            m = rows["tier"].notna().to_numpy()  # parquet gives NaN, not None, for rows without a tier
            res["tier_auroc"] = round(float(roc_auc_score(t[m] == "frontier", tier_p[m])), 4) if m.any() else None
            k = rows["task"].notna().to_numpy()
            res["task_macro_f1"] = round(float(f1_score(rows["task"].to_numpy()[k], np.array(task_pred)[k],
                                                        average="macro")), 4) if k.any() else None
            out[split] = res
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--dataset", default=str(ROOT / "data" / "build" / "dataset.parquet"))
    parser.add_argument("--splits", default="test,ood")
    parser.add_argument("--out", type=Path, default=ROOT / "evaluation" / "sensitivity_eval.json")
    args = parser.parse_args(argv)
    frame = pd.read_parquet(args.dataset, columns=["text", "split", "sensitivity", "tier", "task"])
    result = {str(b): evaluate_bundle(b, frame, args.splits.split(",")) for b in args.bundle}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for b, res in result.items():
        for split, cls in res.items():
            sys.stdout.write(f"{b} {split}: tier AUROC {cls['tier_auroc']}, task macro-F1 {cls['task_macro_f1']}\n")
            for c in ("pii", "credential"):
                r = cls[c]
                sys.stdout.write(f"{b} {split} {c}: model {r['model']}, model+detectors {r['model+detectors']} "
                                 f"(vs none only {r['model+detectors_vs_none']}; detectors alone recall "
                                 f"{r['detector_recall']}, false flags {r['detector_false_flags']}, "
                                 f"on none rows {r['detector_false_flags_on_none']})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
