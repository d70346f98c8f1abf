"""The short public API: ``from classifier import Router, Policy, Decision, LabelSchema, TierwiseError``.

Importing the package runs nothing, and the runtime names never bring in torch. Checked in a fresh
interpreter, since other tests in this process may have imported torch already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import classifier
after_package = sorted(m for m in sys.modules if m.startswith("classifier"))
from classifier import Decision, LabelSchema, Policy, Router, TierwiseError
print(json.dumps({
    "after_package": after_package,
    "heavy": sorted(m for m in ("torch", "transformers", "sklearn", "mlflow", "pandas") if m in sys.modules),
    "where": {n: getattr(classifier, n).__module__ for n in ("Router", "Policy", "Decision", "LabelSchema", "TierwiseError")},
}))
"""


@pytest.mark.slow  # a child interpreter
def test_public_names_import_without_torch() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["after_package"] == ["classifier"]  # nothing done at import time
    assert result["heavy"] == []
    assert result["where"] == {
        "Router": "classifier.serving.runtime",
        "Policy": "classifier.serving.policy",
        "Decision": "classifier.serving.policy",
        "LabelSchema": "classifier.data.schema",
        "TierwiseError": "classifier.errors",
    }


def test_public_names_are_the_real_classes(tiny_bundle: Path) -> None:
    import classifier
    from classifier.errors import PolicyError
    from classifier.serving.runtime import Router

    assert classifier.Router is Router
    assert issubclass(PolicyError, classifier.TierwiseError)
    assert set(classifier.__all__) <= set(dir(classifier))
    with classifier.Router.load(tiny_bundle) as router:
        decision = router.route("write a haiku about the sea")
    assert isinstance(decision, classifier.Decision)
    assert isinstance(router.schema, classifier.LabelSchema)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        classifier.Nope  # noqa: B018
