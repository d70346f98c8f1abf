"""Training: the multi-head encoder, its trainer, Optuna search, ONNX export and distillation into
the fast student. MLflow helpers live in ``classifier.tracking``, the baselines in
``classifier.evaluation.baselines``. Imports torch; nothing here runs at import."""
