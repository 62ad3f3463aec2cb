"""API gateway metrics (ragline_api_*)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ragline_common.metrics import LATENCY_BUCKETS


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.downstream_duration = Histogram(
            "ragline_api_downstream_duration_seconds",
            "Time of one downstream gRPC attempt, by downstream, method and gRPC code.",
            ["downstream", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "ragline_api_retries_total", "Retried downstream attempts (budgeted).", ["downstream"], registry=registry
        )
        self.circuit_state = Gauge(
            "ragline_api_circuit_state",
            "Circuit breaker state per downstream: 0 closed, 1 half-open, 2 open.",
            ["downstream"],
            registry=registry,
        )
        self.admission_limit = Gauge(
            "ragline_api_admission_limit",
            "Requests the gateway admits at once now: the adaptive limit, between API_MIN_CONCURRENCY and "
            "API_MAX_CONCURRENCY.",
            registry=registry,
        )
        self.rejected = Counter(
            "ragline_api_rejected_total",
            "Requests refused at the edge or failed fast, by reason "
            "(unauthenticated, rate_limited, too_large, queue_full, queue_timeout, circuit_open).",
            ["reason"],
            registry=registry,
        )
