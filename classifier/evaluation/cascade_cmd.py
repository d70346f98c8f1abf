"""``tierwise cascade``: fit the escalation bands of a student bundle against a teacher bundle.

Runs the calibrated student bundle (``Router.predict_proba``: what is served) over the
``calibration`` split, fits one band per gated sensitivity class with
``classifier.serving.cascade.fit_band`` (``--max-miss``: share of the class the student may
leave below the band; ``--min-precision``: precision of the student's flags above it), and writes
``cascade.json`` into the student bundle, naming the escalation bundle (relative to the student
bundle's folder) and its manifest hash. Calibrate the student first (``tierwise calibrate``): the
bands are on its calibrated probabilities and must contain its policy thresholds.

What it leaves out: serving the cascade (``classifier/serving/cascade.py``) and measuring it on
test (``benchmarks/fast_path.py``). The test split is never read here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from classifier.errors import ConfigError, DataError


def _parse_map(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not CLASS=NUMBER") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"{part!r} is not CLASS=NUMBER")
    return out


def add_cascade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fast", required=True, help="calibrated student bundle directory (cascade.json is written here)")
    parser.add_argument("--strong", required=True, help="escalation bundle (e.g. bundles/teacher-int8)")
    parser.add_argument("--data", default="data/build", help="data build directory or dataset.parquet")
    parser.add_argument("--split", default="calibration", choices=("calibration", "validation"),
                        help="split the bands are fitted on (never test)")
    parser.add_argument("--max-miss", type=_parse_map, default={"pii": 0.01, "credential": 0.002},
                        help="per class, the share of the class left below the band (default pii=0.01,credential=0.002)")
    parser.add_argument("--min-precision", type=float, default=0.99,
                        help="precision of the student's own flags above the band (default 0.99)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many rows of the split (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)


def fit_cascade(fast: str | Path, strong: str | Path, frame, max_miss: dict[str, float],
                min_precision: float, split: str = "calibration"):
    """Fit the bands on ``frame`` (rows of one non-test split) and return the ``CascadeSpec``."""
    from classifier.serving import bundle as bundle_io
    from classifier.serving.cascade import CascadeSpec, fit_band
    from classifier.serving.runtime import Router

    with Router.load(fast, threads=1) as router:
        head_name = router.policy.sensitivity_head or "sensitivity"
        head = router.schema.head(head_name)
        labelled = frame[frame[head.column].notna()].reset_index(drop=True)
        if labelled.empty:
            raise DataError(f"no rows with a {head.column!r} label in the {split} split")
        texts = labelled["text"].tolist()
        probs = np.concatenate([router.predict_proba(texts[i:i + 512])[head_name]
                                for i in range(0, len(texts), 512)])
        thresholds = router.policy.sensitivity_thresholds
    labels = labelled[head.column].to_numpy()
    bands, fits = {}, {}
    for cls, miss in max_miss.items():
        if cls not in head.classes or cls == head.negative_class:
            raise ConfigError(f"--max-miss: {cls!r} is not a gated class of head {head_name!r} {list(head.classes)}")
        band, summary = fit_band(probs[:, head.index(cls)], labels == cls, max_miss=miss,
                                 min_precision=min_precision, policy_threshold=thresholds.get(cls), cls=cls)
        bands[cls], fits[cls] = band, summary
    escalated = np.zeros(len(probs), dtype=bool)
    for b in bands.values():
        p = probs[:, head.index(b.cls)]
        escalated |= (p >= b.lo) & (p < b.hi)
    strong_hash = bundle_io.sha256_file(Path(strong) / bundle_io.MANIFEST_FILE)
    rel = os.path.relpath(Path(strong).resolve(), Path(fast).resolve().parent)
    fit = {"split": split, "n": len(probs), "share_escalated": float(escalated.mean()), "per_class": fits,
           "min_precision": min_precision}
    return CascadeSpec(bands=bands, head=head_name, escalate_to=rel, escalate_bundle_hash=strong_hash, fit=fit)


def run_cascade(args: argparse.Namespace) -> int:
    from classifier.data.reader import dataset_file, read_dataset, select_split
    from classifier.serving.cascade import write_cascade

    path = dataset_file(args.data)
    part = select_split(read_dataset(path), args.split, args.limit, args.seed)
    if part.empty:
        raise DataError(f"{path}: no rows in split {args.split!r}")
    spec = fit_cascade(args.fast, args.strong, part, args.max_miss, args.min_precision, args.split)
    write_cascade(args.fast, spec)
    sys.stdout.write(json.dumps(spec.to_dict(), indent=2) + "\n")
    return 0
