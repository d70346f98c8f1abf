"""tierwise: a learned, calibrated request classifier for routing LLM prompts between model tiers.

The package is split by role: ``classifier.data`` (schema, loading, splits, the default data set),
``classifier.training`` (model, trainer, distillation, HPO, tracking, export),
``classifier.evaluation`` (metrics, calibration, cost curves, reports) and
``classifier.serving`` (the torch-free runtime, policy engine, audit log and HTTP app).
Nothing is imported here beyond the version, so ``import classifier`` stays cheap.
"""

__version__ = "0.1.0"
