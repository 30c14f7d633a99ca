"""Tracing (OpenTelemetry, W3C traceparent carried in NATS headers) and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter, Histogram

_configured = False


def configure_tracing(service: str) -> None:
    """Install an SDK tracer provider once per process; exporters are added by deployment."""
    global _configured
    if _configured:
        return
    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": f"berth-{service}"})))
    _configured = True


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_headers(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))


class Metrics:
    """One registry per service process, so tests running several services stay apart."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "berth_http_requests", "HTTP requests", ["service", "method", "route", "status"], registry=self.registry
        )
        self.http_latency = Histogram(
            "berth_http_request_seconds", "HTTP request latency", ["service", "route"], registry=self.registry
        )
        self.commands = Counter(
            "berth_bus_commands", "Bus commands handled", ["service", "subject", "outcome"], registry=self.registry
        )
        self.command_latency = Histogram(
            "berth_bus_command_seconds", "Bus command latency", ["service", "subject"], registry=self.registry
        )
        self.events_published = Counter(
            "berth_events_published", "Events relayed from the outbox", ["service"], registry=self.registry
        )
        self.operations = Counter(
            "berth_operations",
            "Attempts of persisted operations, by outcome (done, failed, retried)",
            ["service", "kind", "outcome"],
            registry=self.registry,
        )
        # A claim starts an attempt: the first, a retry, a resume after a restart, a takeover
        # from a crashed replica.
        self.operation_claims = Counter(
            "berth_operation_claims",
            "Attempts of persisted operations started",
            ["service", "kind"],
            registry=self.registry,
        )
        self.operation_leases_lost = Counter(
            "berth_operation_leases_lost",
            "Running operations stopped because another replica took them over",
            ["service"],
            registry=self.registry,
        )
        self.service = service
