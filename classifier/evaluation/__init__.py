"""Evaluation: metrics, cost curves and prices, calibration and risk-controlled thresholds,
reports for policy owners and drift monitoring. No torch: it scores bundles through the runtime."""
