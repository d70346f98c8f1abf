"""Prometheus metrics of the routing server.

``ServingMetrics`` owns its own ``CollectorRegistry`` (so several apps, e.g. in tests, never
clash in the global one) and records:

- ``tierwise_requests_total{endpoint, status}``: every HTTP request by endpoint and status code;
- ``tierwise_request_latency_seconds{endpoint}``: request latency (fine buckets from 100 us);
- ``tierwise_decisions_total{tier}``: decisions per routed tier (``blocked`` when blocked);
- ``tierwise_head_predictions_total{head, class}``: argmax class per head of classified prompts,
  e.g. ``head="sensitivity"`` counts decisions per sensitivity class;
- ``tierwise_decision_flags_total{flag}``: flags such as ``uncertain``, ``invalid_input``;
- ``tierwise_ready`` and ``tierwise_bundle_info{...}``: whether a bundle is loaded, and which;
- ``tierwise_audit_entries``, ``tierwise_audit_checkpoint_entries`` and
  ``tierwise_audit_checkpoint_info{head}``: the audit log's length and its latest checkpoint
  (entry count and head HMAC), so the scraper keeps a copy of the anchor off the machine.

Label values are bounded: endpoints are a fixed list (``other`` for the rest), tiers, heads,
classes and flags come from the policy and schema. What this module leaves out: serving the text
format (``app.py`` does, with ``generate_latest``) and any push gateway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE  # noqa: N811
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServingMetrics", "PROMETHEUS_CONTENT_TYPE"]

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """The server's metrics in a private registry."""

    def __init__(self, endpoints: Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.endpoints = frozenset(endpoints)
        r = self.registry
        self.requests = Counter("tierwise_requests", "HTTP requests by endpoint and status code",
                                ("endpoint", "status"), registry=r)
        self.latency = Histogram("tierwise_request_latency_seconds", "HTTP request latency in seconds",
                                 ("endpoint",), buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("tierwise_decisions", "Routing decisions by routed tier ('blocked' when blocked)",
                                 ("tier",), registry=r)
        self.head_predictions = Counter("tierwise_head_predictions",
                                        "Argmax class per head of classified prompts (e.g. per sensitivity class)",
                                        ("head", "class"), registry=r)
        self.flags = Counter("tierwise_decision_flags", "Decision flags (uncertain, truncated, invalid_input, ...)",
                             ("flag",), registry=r)
        self.ready = Gauge("tierwise_ready", "1 when a verified bundle is loaded", registry=r)
        self.bundle_info = Gauge("tierwise_bundle_info", "The loaded bundle (value 1)",
                                 ("kind", "quantization", "policy_version", "model_sha256"), registry=r)

        self.audit_entries = Gauge("tierwise_audit_entries", "Entries in the audit log (as this process saw it)",
                                   registry=r)
        self.audit_checkpoint_entries = Gauge("tierwise_audit_checkpoint_entries",
                                              "Entry count of the audit log's latest checkpoint", registry=r)
        self.audit_checkpoint_info = Gauge("tierwise_audit_checkpoint_info",
                                           "The audit log's latest checkpoint (value: its entry count)",
                                           ("head", "seq"), registry=r)

    def set_audit_entries(self, entries: int) -> None:
        self.audit_entries.set(entries)

    def set_audit_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Publish a checkpoint (``AuditLog.on_checkpoint``)."""
        self.audit_checkpoint_info.clear()
        self.audit_checkpoint_entries.set(int(checkpoint["entries"]))
        self.audit_checkpoint_info.labels(str(checkpoint["head"]), str(checkpoint["seq"])).set(int(checkpoint["entries"]))

    def endpoint_label(self, path: str) -> str:
        return path if path in self.endpoints else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        label = self.endpoint_label(path)
        self.requests.labels(label, str(status)).inc()
        self.latency.labels(label).observe(seconds)

    def observe_decisions(self, decisions: Iterable[Any]) -> None:
        """Count decisions (``Decision`` objects or their dicts)."""
        for d in decisions:
            data: Mapping[str, Any] = d if isinstance(d, Mapping) else d.__dict__
            tier = "blocked" if data.get("blocked") else str(data.get("tier"))
            self.decisions.labels(tier).inc()
            for flag in data.get("flags") or ():
                self.flags.labels(str(flag)).inc()
            for head, probs in (data.get("probabilities") or {}).items():
                if probs:
                    self.head_predictions.labels(str(head), str(max(probs, key=probs.get))).inc()

    def set_bundle(self, info: Mapping[str, Any] | None) -> None:
        self.bundle_info.clear()
        if info is None:
            self.ready.set(0)
            return
        self.ready.set(1)
        self.bundle_info.labels(
            str(info.get("kind")), str(info.get("quantization") or "none"),
            str(info.get("policy_version")), str(info.get("model_sha256") or "")[:12],
        ).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
