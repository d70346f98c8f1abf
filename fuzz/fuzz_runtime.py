"""Coverage-guided fuzzing of the runtime's entry points with atheris (libFuzzer for Python).

    python fuzz/fuzz_runtime.py [--bundle=DIR] [libFuzzer flags, e.g. -max_total_time=60 -timeout=10]

``make fuzz`` runs it for a bounded time. Each input is turned into one of: a prompt (any Unicode,
lone surrogates included) for ``Router.route``; a batch, whose decisions must equal the
prompts' single decisions; raw request bytes, decoded the way the server decodes a body
(``escape_invalid_utf8``) and routed; token encoding of valid prompts (``Router.encode``);
or head probabilities for ``PolicyEngine.decide`` and ``decide_batch``, which must agree. Any
exception, an invalid decision or a disagreement is a crash that libFuzzer reports with the input
that caused it (saved as ``crash-*``); ``-timeout`` turns a hang into a report too.

The bundle: ``--bundle=DIR``, else ``$TIERWISE_FUZZ_BUNDLE``, else a tiny random bundle built in a
temporary folder (needs torch). The tierwise serving modules are instrumented for coverage;
onnxruntime and tokenizers are native code and are exercised but not instrumented.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bundle(argv: list[str]) -> tuple[Path, list[str]]:
    rest = [a for a in argv if not a.startswith("--bundle=")]
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--bundle=")]
    path = given[-1] if given else os.environ.get("TIERWISE_FUZZ_BUNDLE")
    if path:
        return Path(path), rest
    # built in a child process: importing torch and the exporter here would import the serving
    # modules before they are instrumented (and keep torch in memory)
    out = Path(tempfile.mkdtemp(prefix="tierwise-fuzz-")) / "tiny"
    sys.stderr.write(f"building a tiny bundle in {out}\n")
    code = "import sys; from benchmarks.loadtest import build_tiny_bundle; build_tiny_bundle(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, check=True)
    return out, rest


BUNDLE, ARGV = _bundle(sys.argv)

with atheris.instrument_imports(include=["classifier"]):
    from classifier.data.schema import LabelSchema
    from classifier.serving.app import escape_invalid_utf8
    from classifier.serving.policy import Decision, PolicyEngine
    from classifier.serving.runtime import Router, check_text

import numpy as np  # noqa: E402 - after the instrumented imports

ROUTER = Router.load(BUNDLE)
ENGINE = PolicyEngine(ROUTER.policy, ROUTER.schema)
TIERS = set(ROUTER.policy.tier_names)
FLAGS = {"truncated", "invalid_input", "fallback", "control_chars", "uncertain", "blocked"}


def check(d: Decision, text: object) -> None:
    if not isinstance(d, Decision):
        raise AssertionError(f"not a Decision: {d!r}")
    if not set(d.flags) <= FLAGS:
        raise AssertionError(f"unknown flags {d.flags}")
    if d.blocked != (d.tier is None) or (d.tier is not None and d.tier not in TIERS):
        raise AssertionError(f"bad tier {d.tier!r} blocked={d.blocked}")
    json.dumps(d.to_dict(), allow_nan=False).encode("utf-8")
    if "invalid_input" in d.flags:
        return
    if not isinstance(text, str) or check_text(text) is not None:
        raise AssertionError(f"unclassifiable input {text!r} was classified")
    if "fallback" in d.flags:
        raise AssertionError(f"inference fault on {text!r}: {d.reason}")
    for head, probs in d.probabilities.items():
        values = list(probs.values())
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values) or abs(sum(values) - 1.0) > 1e-6:
            raise AssertionError(f"head {head}: not a distribution {probs}")


def same(a: Decision, b: Decision) -> None:
    if (a.tier, a.rule, a.flags, a.blocked) != (b.tier, b.rule, b.flags, b.blocked):
        raise AssertionError(f"batch and single differ: {a.reason!r} vs {b.reason!r}")
    for head, probs in a.probabilities.items():
        for cls, p in probs.items():
            if abs(p - b.probabilities[head][cls]) > 1e-5:
                raise AssertionError(f"batch and single probabilities differ on {head}.{cls}")


def probabilities(fdp: atheris.FuzzedDataProvider, n: int) -> dict[str, np.ndarray]:
    out = {}
    for head in ROUTER.schema.heads:
        rows = []
        for _ in range(n):
            raw = [fdp.ConsumeFloatInRange(0.0, 1.0) for _ in range(head.num_classes)]
            if fdp.ConsumeBool():
                total = sum(raw)
                raw = [x / total for x in raw] if total > 0 else [1.0 / head.num_classes] * head.num_classes
            rows.append(raw)
        out[head.name] = np.array(rows, dtype=np.float64)
    return out


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 0:
        text = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 4096))
        check(ROUTER.route(text), text)
    elif mode == 1:
        texts = [fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 300)) for _ in range(fdp.ConsumeIntInRange(1, 6))]
        batch = ROUTER.route(texts)
        for text, d in zip(texts, batch, strict=True):
            check(d, text)
            same(d, ROUTER.route(text))
    elif mode == 2:
        body = escape_invalid_utf8(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048)))
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return
        if isinstance(doc, dict):
            value = doc.get("text", doc.get("texts"))
            result = ROUTER.route(value)
            for d in result if isinstance(result, list) else [result]:
                if not isinstance(d, Decision):
                    raise AssertionError(f"not a Decision: {d!r}")
    elif mode == 3:
        texts = [t for t in (fdp.ConsumeUnicode(200) for _ in range(fdp.ConsumeIntInRange(1, 4))) if check_text(t) is None]
        if texts:
            ids, mask, truncated = ROUTER.encode(texts)
            if ids.shape != mask.shape or ids.shape[0] != len(texts) or truncated.shape != (len(texts),):
                raise AssertionError(f"encode shapes {ids.shape} {mask.shape} {truncated.shape}")
    else:
        n = fdp.ConsumeIntInRange(2, 5)
        probs = probabilities(fdp, n)
        batch = [d.to_dict() for d in ENGINE.decide_batch(probs, flags=[[] for _ in range(n)])]
        single = [ENGINE.decide({h: a[i] for h, a in probs.items()}).to_dict() for i in range(n)]
        if batch != single:
            raise AssertionError(f"decide and decide_batch differ:\n{batch}\n{single}")


def main() -> None:
    assert isinstance(ROUTER.schema, LabelSchema)
    atheris.Setup(ARGV, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
