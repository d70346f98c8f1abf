"""Evaluation: metrics, cost curves and prices, calibration and risk-controlled thresholds, the
baselines (majority, keyword, TF-IDF), reports for policy owners and drift monitoring. No torch:
it scores bundles through the runtime."""
