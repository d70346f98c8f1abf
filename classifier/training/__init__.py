"""Training: the multi-head encoder, its trainer, MLflow tracking, Optuna search, ONNX export,
baselines and distillation into the fast student. Imports torch; nothing here runs at import."""
