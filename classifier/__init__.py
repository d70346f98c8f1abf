"""tierwise: a learned, calibrated request classifier for routing LLM prompts between model tiers.

The short public API, for code that routes with a bundle::

    from classifier import Router, Policy, Decision, LabelSchema, TierwiseError

    with Router.load("bundles/teacher") as router:
        decision: Decision = router.route("write a haiku")

These names are resolved lazily (PEP 562 ``__getattr__``): ``import classifier`` runs nothing and
imports nothing beyond this file, and ``Router`` brings in the torch-free runtime only (numpy,
onnxruntime, tokenizers), never torch. Everything else is imported from its own module:
``classifier.data`` (schema, loading, splits, the default data set), ``classifier.evaluation``
(metrics, calibration, baselines, reports), ``classifier.serving`` (runtime, policy, audit log,
HTTP app), ``classifier.training`` (model, trainer, distillation, HPO, export),
``classifier.tracking`` (MLflow). The layer order between them is in ``docs/design.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC: dict[str, str] = {
    "Router": "classifier.serving.runtime",
    "Policy": "classifier.serving.policy",
    "Decision": "classifier.serving.policy",
    "LabelSchema": "classifier.data.schema",
    "TierwiseError": "classifier.errors",
}

__all__ = ["Decision", "LabelSchema", "Policy", "Router", "TierwiseError", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time the names load on first use
    from classifier.data.schema import LabelSchema
    from classifier.errors import TierwiseError
    from classifier.serving.policy import Decision, Policy
    from classifier.serving.runtime import Router


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'classifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
