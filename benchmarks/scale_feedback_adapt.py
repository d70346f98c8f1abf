"""``feedback join`` and ``adapt``'s feature extraction: in process against ``--engine ray``.

On real prompts of the built data set (``data/build/dataset.parquet``, test and ood splits):

* **join**: ``--n`` requests as a team's logs: half in an audit log (id, prompt hash, decision,
  exploration propensities), half in a ``route --output`` file (id, decision), a prompt store
  (id, text), and outcomes from the rows' ``cheap_correct`` / ``frontier_correct`` (the served
  tier's, and a shadow call for every fifth request). ``join_feedback`` against
  ``join_feedback_ray`` on a local cluster of ``--cpus`` CPUs: wall time, and whether the rows
  and rejects are equal.
* **features**: ``BundleFeaturizer.transform`` of ``--adapt-n`` ood (then test) rows with ``--bundle`` in
  process (``--threads``) against the Ray actor pool (1 actor x ``--threads`` threads, and
  ``--cpus`` actors x 1 thread): wall time, and whether features and logits are bit-identical.

Ray's start is timed apart from the work. Writes ``evaluation/bench_scale_feedback_adapt.json``;
asserts nothing. What it leaves out: multi-node clusters, and the fit (it stays on the driver).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _logs(frame: pd.DataFrame, tmp: Path) -> dict[str, list[Path] | Path]:
    from classifier.serving.audit import prompt_sha256

    audit, routed, outcomes = [], [], []
    for i, row in enumerate(frame.itertuples(index=False)):
        rid, tier = f"q{i}", row.tier
        explo = {"propensity": 0.9, "propensities": {tier: 0.9, "frontier" if tier == "cheap" else "cheap": 0.1}}
        if i % 2:
            audit.append({"request_id": rid, "prompt_sha256": prompt_sha256(row.text), "decision": {"tier": tier},
                          "extra": {"exploration": explo}})
        else:
            routed.append({"line": i + 1, "id": rid, "tier": tier})
        for t in [tier] + (["frontier" if tier == "cheap" else "cheap"] if i % 5 == 0 else []):
            score = row.cheap_correct if t == "cheap" else row.frontier_correct
            if score == score:  # not NaN
                outcomes.append({"request_id": rid, "tier": t, "score": float(score), "shadow": t != tier})
    paths = {}
    for name, lines in (("audit", audit), ("routed", routed), ("outcomes", outcomes)):
        paths[name] = tmp / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    store = tmp / "prompts.parquet"
    pd.DataFrame({"id": [f"q{i}" for i in range(len(frame))], "text": frame["text"].tolist()}).to_parquet(store)
    return {"outcomes": [paths["outcomes"]], "decisions": [paths["audit"], paths["routed"]], "prompts": store}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "build" / "dataset.parquet"))
    parser.add_argument("--bundle", default="/work/clean/bundles/quick-student")
    parser.add_argument("--n", type=int, default=4000, help="requests of the join")
    parser.add_argument("--adapt-n", type=int, default=2000, help="rows of the feature extraction")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "evaluation" / "bench_scale_feedback_adapt.json"))
    args = parser.parse_args(argv)

    from classifier.scale.adapt import ray_feature_batches
    from classifier.scale.engine import ray_session
    from classifier.scale.feedback import join_feedback_ray
    from classifier.training.adapt import BundleFeaturizer
    from classifier.training.feedback import join_feedback

    frame = pd.read_parquet(args.data, columns=["text", "split", "tier", "cheap_correct", "frontier_correct"])
    frame = frame[frame["split"].isin(["test", "ood"]) & frame["tier"].isin(["cheap", "frontier"])]
    join_rows = frame.head(args.n).reset_index(drop=True)
    # the ood split's rows first (a new team's traffic), then the test split's
    adapt_texts = pd.concat([frame[frame["split"] == "ood"], frame[frame["split"] == "test"]])["text"]
    adapt_texts = adapt_texts.head(args.adapt_n).tolist()
    result: dict = {"n_join_requests": len(join_rows), "n_feature_rows": len(adapt_texts), "cpus": args.cpus,
                    "threads": args.threads, "bundle": args.bundle}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = _logs(join_rows, Path(tmp))
        t0 = time.perf_counter()
        local = join_feedback(inputs["outcomes"], inputs["decisions"], prompts=inputs["prompts"])
        result["join_local_s"] = time.perf_counter() - t0
        feat = BundleFeaturizer(args.bundle, threads=args.threads)
        t0 = time.perf_counter()
        f_local, z_local = feat.transform(adapt_texts, progress=False)
        result["features_local_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ray_session(None, args.cpus) as ray:
            ray.data.DataContext.get_current().enable_progress_bars = False
            result["ray_start_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            remote = join_feedback_ray(inputs["outcomes"], inputs["decisions"], prompts=inputs["prompts"])
            result["join_ray_s"] = time.perf_counter() - t0
            result["join_rows"] = int(len(local.rows))
            result["join_equal"] = bool(local.rows.equals(remote.rows)
                                        and [r.to_dict() for r in local.rejects] == [r.to_dict() for r in remote.rejects])
            for actors, threads in ((1, args.threads), (args.cpus, 1)):
                t0 = time.perf_counter()
                f_ray, z_ray = feat.transform(adapt_texts, progress=False,
                                              run_batches=ray_feature_batches(args.bundle, actors=actors, threads=threads))
                key = f"features_ray_{actors}x{threads}"
                result[f"{key}_s"] = time.perf_counter() - t0
                result[f"{key}_bit_identical"] = bool(np.array_equal(f_ray, f_local)
                                                       and all(np.array_equal(z_ray[h], z_local[h]) for h in z_local))
        feat.close()
    result["loadavg_1_5_15_at_end"] = list(os.getloadavg())  # the machine is shared: how busy it was
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
