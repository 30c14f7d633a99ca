"""The alerts service's own metrics, on the service's registry (`/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from berth_shared.telemetry import Metrics


class AlertMetrics:
    def __init__(self, base: Metrics) -> None:
        r = base.registry
        self.received = Counter(
            "berth_alerts_received",
            "Alerts received, by source and outcome (new, changed, duplicate)",
            ["source", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "berth_alerts_rejected", "Malformed ingest payloads refused and kept", ["source"], registry=r
        )
        self.bus_events = Counter(
            "berth_alerts_bus_events",
            "Berth bus events turned into alerts, by type and severity",
            ["type", "severity"],
            registry=r,
        )
        self.notifications = Counter(
            "berth_alerts_notifications",
            "Notifications by receiver and outcome (delivered, failed, expired, collapsed)",
            ["receiver", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "berth_alerts_delivery_attempts",
            "Requests to messengers by receiver and result (ok, throttled, too_large, retry, rejected)",
            ["receiver", "result"],
            registry=r,
        )
        self.latency = Histogram(
            "berth_alerts_delivery_latency_seconds",
            "From an alert's change reaching Berth to its notification reaching the messenger",
            ["receiver"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
        )
        self.template_failures = Counter(
            "berth_alerts_template_failures",
            "Messages sent as plain text because a template failed",
            ["receiver"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "berth_alerts_queue_depth", "Notifications waiting to be delivered", ["receiver"], registry=r
        )
        self.firing = Gauge("berth_alerts_firing", "Alerts firing now, by severity", ["severity"], registry=r)
        self.dashboard_syncs = Counter(
            "berth_alerts_dashboard_syncs",
            "Dashboard pushes by Grafana instance and outcome",
            ["instance", "outcome"],
            registry=r,
        )
