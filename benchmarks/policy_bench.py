"""Speed of the policy cascade alone (no model): ``python -m benchmarks.policy_bench``.

Measures, on the example policy and the default label schema, with random probabilities (a share
of rows flagged ``truncated``, uncertain, sensitive):
- ``decide`` of one prompt (the per-request path of a router): median microseconds per call;
- ``decide_batch`` of ``--batch`` prompts (the router's batch path): median microseconds per row;
- ``tier_indices`` of ``--rows`` prompts (the report's and calibration's path): median
  milliseconds per call.
Every figure is the median of ``--repeats`` timed runs in one process, in CPU time of the process
(``time.process_time``: other work on a shared machine does not count). It asserts nothing; the
goals (one row under 15 us, the batch paths no slower than before) are compared in the report of
issue 12. ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from classifier.data.schema import LabelSchema
from classifier.serving.policy import Policy, PolicyEngine

ROOT = Path(__file__).resolve().parents[1]


def _inputs(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    rng = np.random.default_rng(seed)
    probs = {"tier": rng.dirichlet([1, 1], n), "task": rng.dirichlet([4, 1, 1, 1], n),
             "sensitivity": rng.dirichlet([20, 1, 1], n)}
    flags = [["truncated"] if i % 50 == 0 else [] for i in range(n)]
    return probs, flags


def _median(fn, repeats: int, number: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` runs of ``number`` calls."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(number):
            fn()
        times.append((time.process_time() - start) / number)
    return statistics.median(times)


def run(batch: int = 256, rows: int = 20_000, repeats: int = 15) -> dict[str, float]:
    engine = PolicyEngine(Policy.from_yaml(ROOT / "serving" / "policy.example.yaml"), LabelSchema.default())
    probs, flags = _inputs(max(batch, rows))
    singles = [{h: a[i] for h, a in probs.items()} for i in range(200)]
    it = iter(range(10**9))

    def one() -> None:
        i = next(it) % len(singles)
        engine.decide(singles[i], flags=flags[i])

    b = {h: a[:batch] for h, a in probs.items()}
    r = {h: a[:rows] for h, a in probs.items()}
    return {
        "decide_one_us": _median(one, repeats, 2000) * 1e6,
        "decide_batch_us_per_row": _median(lambda: engine.decide_batch(b, flags=flags[:batch]), repeats, 5) / batch * 1e6,
        "tier_indices_ms": _median(lambda: engine.tier_indices(r, flags=flags[:rows]), repeats, 1) * 1e3,
        "batch": batch, "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    out = run(args.batch, args.rows, args.repeats)
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
