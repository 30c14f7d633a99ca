"""The watcher's Prometheus metrics, on the service's registry (`/metrics`).

Gauges describe the last complete picture (set by the jobs on the leader); counters count
runs and actions. A standby replica exports the gauges it last set, and `berth_watcher_leader`
says which replica leads, so dashboards take the leader's series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WatcherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.leader = Gauge("berth_watcher_leader", "1 while this replica leads the jobs", registry=registry)
        self.runs = Counter("berth_watcher_runs", "Job runs finished", ["job", "status"], registry=registry)
        self.run_seconds = Histogram(
            "berth_watcher_run_seconds",
            "Job run duration",
            ["job"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.source_ok = gauge("berth_watcher_source_ok", "1 if the last read of a source was complete", ["source"])
        self.actions = Counter(
            "berth_watcher_actions", "Actions taken (quarantine, purge, ...)", ["kind", "outcome"], registry=registry
        )
        self.findings_open = gauge("berth_watcher_findings_open", "Unresolved findings", ["kind", "severity"])
        self.quarantined = gauge("berth_watcher_quarantined", "Objects in quarantine", ["cluster"])
        self.quarantined_bytes = gauge("berth_watcher_quarantined_bytes", "Bytes in quarantine", ["cluster"])
        self.qos_volumes = gauge("berth_watcher_qos_volumes", "Volumes with QoS limits", ["cluster", "enforced"])
        self.qos_saturated = gauge("berth_watcher_qos_saturated", "Volumes at their IO limit", ["cluster"])
        self.qos_load = gauge("berth_watcher_qos_load", "Measured IO rate of a volume at its limit", ["volume", "rate"])
        self.provisioned = gauge("berth_watcher_provisioned_bytes", "Provisioned bytes", ["scope", "key"])
        self.used = gauge("berth_watcher_used_bytes", "Used (allocated) bytes", ["scope", "key"])
        self.volumes = gauge("berth_watcher_volumes", "Volumes", ["scope", "key"])
        self.overcommit = gauge(
            "berth_watcher_overcommit_ratio", "Provisioned / capacity (cluster) or / used", ["scope", "key"]
        )
        self.growth = gauge("berth_watcher_growth_bytes_per_day", "Fitted growth of used bytes", ["scope", "key"])
        self.capacity = gauge("berth_watcher_capacity_bytes", "A cluster's capacity", ["cluster"])
        self.fill = gauge("berth_watcher_fill_ratio", "Used / capacity", ["cluster"])
        self.days_left = gauge(
            "berth_watcher_days_until_threshold",
            "Forecast days until the fill threshold (-1: not growing)",
            ["cluster"],
        )

    def set_findings(self, counts: list[tuple[str, str, int]]) -> None:
        self.findings_open.clear()
        for kind, severity, n in counts:
            self.findings_open.labels(kind, severity).set(n)
