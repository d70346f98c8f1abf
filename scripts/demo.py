"""``make demo``: the whole pipeline on the default data, end to end, in about a quarter hour.

Builds the data set from ``../shared/datasets``, prints the baseline table, trains the quick
preset (tracked in MLflow), exports and verifies the ONNX bundle, calibrates it against a stated
misroute budget, distils the fast student, routes a few example prompts with it, checks the
routing drift of the shared arena-hard / RouterArena prompts, and writes the policy owners'
report to ``evaluation/report.html``. Every step is a ``tierwise`` subcommand, so the log shows
the exact commands a user would type. The full preset (README numbers) is ``make full``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = [
    "What is the capital of Australia?",
    "Write a haiku about the first snow of winter.",
    "Prove that there are infinitely many primes of the form 4k+3, with every step justified.",
    "Refactor this Python function to stream the file instead of reading it whole: def load(p): return open(p).read().splitlines()",
    "Please draft a reply to Maria Gonzalez (maria.gonzalez@examplemail.com, +1 415 555 0199) about her refund.",
    "Our deploy fails: AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY what is wrong with the config?",
]


def _tierwise(*args: str) -> list[str]:
    return [sys.executable, "-m", "classifier.cli", *args]


def step(title: str, cmd: list[str], *, capture: bool = False) -> str:
    shown = "tierwise " + " ".join(shlex.quote(a) for a in cmd[3:])
    sys.stdout.write(f"\n=== {title}\n$ {shown}\n")
    sys.stdout.flush()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=capture, check=False)
    if res.returncode != 0:
        if capture:
            sys.stdout.write(res.stdout or "")
            sys.stderr.write(res.stderr or "")
        raise SystemExit(f"demo step failed ({title}): exit {res.returncode}")
    sys.stdout.write(f"--- {title}: {time.perf_counter() - t0:.0f}s\n")
    return res.stdout if capture else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--skip-build", action="store_true", help="reuse data/build if it exists")
    parser.add_argument("--full", action="store_true",
                        help="the full preset (README numbers): all training rows, int8 bundle too, full student")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")
    (ROOT / "mlruns").mkdir(exist_ok=True)
    if args.full:
        name, preset, model, teacher, student = "full", "default", "models/teacher", "bundles/teacher", "bundles/student"
        distill_extra: list[str] = []
        sample: list[str] = []
        # the README's bundles are calibrated with sensitivity gates at precision >= 0.95 (at the
        # default floor, 0.8, the student of session 19 flagged 3.9% of real user prompts, not 2.2%)
        gates = ["--min-precision", "0.95"]
    else:
        name, preset = "quick", "quick"
        model, teacher, student = "models/quick", "bundles/quick-teacher", "bundles/quick-student"
        distill_extra = ["--max-train-rows", "4000", "--epochs", "6", "--max-length", "64", "--max-eval-rows", "600"]
        # the quick demo calibrates and reports on a seeded sample of each split: the whole-request
        # runtime reads every window of the long prompts, which made the demo 4x slower
        sample = ["--limit", "1500"]
        gates = []
    t0 = time.perf_counter()

    if not (args.skip_build and (ROOT / "data/build/dataset.parquet").is_file()):
        step("1. build the default data set", _tierwise("data", "build", "--no-progress"))
    step("2. baselines", _tierwise("baseline"))
    if not (args.full and (ROOT / model / "model.safetensors").is_file()):
        step(f"3. train the {preset} preset (MLflow-tracked)",
             _tierwise("train", "--preset", preset, "--output-dir", model, "--progress", "false"))
    step("4. export the ONNX bundle (parity-checked)", _tierwise("export", "--model", model, "--out", teacher))
    if args.full:
        step("4b. export the int8 bundle", _tierwise("export", "--model", model, "--out", teacher + "-int8", "--int8"))
        step("4c. calibrate the int8 bundle", _tierwise("calibrate", "--bundle", teacher + "-int8", "--alpha", "0.05", "--delta", "0.05", "--out", "evaluation/calibration-full-teacher-int8", *gates))
    step("5. calibrate: temperatures + thresholds for a 5% misroute budget", _tierwise("calibrate", "--bundle", teacher, "--alpha", "0.05", "--delta", "0.05", "--out", f"evaluation/calibration-{name}-teacher", *sample, *gates))
    step("6. distil the fast student", _tierwise("distill", "--teacher", model, "--out", student, *distill_extra))
    step("7. calibrate the student", _tierwise("calibrate", "--bundle", student, "--alpha", "0.05", "--delta", "0.05", "--out", f"evaluation/calibration-{name}-student", *sample, *gates))

    sys.stdout.write("\n=== 8. route example prompts with the student bundle\n")
    from classifier.serving.runtime import Router

    with Router.load(ROOT / student) as router:
        for text, decision in zip(EXAMPLES, router.route(EXAMPLES), strict=True):
            d = decision.to_dict()
            sens = d["probabilities"].get("sensitivity", {})
            top = max(sens, key=sens.get) if sens else "?"
            sys.stdout.write(
                f"- {text[:70]!r}\n    -> tier={d['tier']} model={d['model']} rule={d['rule']} "
                f"p(frontier)={d['probabilities']['tier']['frontier']:.2f} sensitivity={top} blocked={d['blocked']}\n"
            )
    step("9. routing drift: arena-hard + RouterArena prompts as new traffic", _tierwise("drift", "--demo", "--bundle", student, "--out", "evaluation/drift"))
    step("10. policy owners' report", _tierwise("report", "--bundle", teacher, "--out", "evaluation/report.html", *sample))
    report = json.loads((ROOT / "evaluation/report.json").read_text())
    sys.stdout.write("\n=== headline (evaluation/report.html)\n")
    for sentence in report.get("headline", {}).get("sentences", []):
        sys.stdout.write(f"- {sentence}\n")
    sys.stdout.write(f"\ndemo finished in {(time.perf_counter() - t0) / 60:.1f} min. MLflow UI: "
                     ".venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
