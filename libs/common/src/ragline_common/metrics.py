"""Prometheus metrics shared by every service; each service adds its own on the same registry."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# `*_created` series double the scrape size and no dashboard or alert here reads them.
disable_created_metrics()

# Buckets from 1 ms to 60 s: loopback hops are sub-millisecond, a long generation is tens of seconds.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
)  # fmt: skip


class RequestMetrics:
    """RED metrics: one histogram by service, transport, method and code, plus requests in flight."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        self.service = service
        # The standard process_* (RSS, fds, CPU), python_gc_* and python_info series, as on the default registry:
        # what an operator compares across services before reading any ragline_ metric.
        for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
            registry.register(collector)
        self.duration = Histogram(
            "ragline_request_duration_seconds",
            "Time to answer a request, by transport (http, grpc), method (route or RPC) and status code.",
            ["service", "transport", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "ragline_requests_in_flight",
            "Requests being handled now.",
            ["service", "transport"],
            registry=registry,
        )

    def observe(self, transport: str, method: str, code: str, seconds: float) -> None:
        self.duration.labels(self.service, transport, method, code).observe(seconds)
