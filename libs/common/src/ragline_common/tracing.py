"""OpenTelemetry traces across HTTP and gRPC hops; off unless the standard OTEL_* variables ask for them."""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanProcessor

log = logging.getLogger(__name__)

_enabled = False


def enabled() -> bool:
    return _enabled


def _exporter_from_env() -> SpanExporter | None:
    name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not name and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        name = "otlp"
    if name in ("", "none"):
        return None
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise SystemExit(f"configuration error: OTEL_TRACES_EXPORTER must be otlp, console or none, got {name!r}")


def configure_tracing(service: str, release: str, processor: SpanProcessor | None = None) -> bool:
    """Install a tracer provider when OTEL_* asks for one (or a processor is given, as tests do)."""
    global _enabled
    if processor is None:
        exporter = _exporter_from_env()
        if exporter is None:
            return False
        processor = BatchSpanProcessor(exporter)
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", f"ragline-{service}"), "service.version": release}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info("tracing on: spans of ragline-%s exported by %s", service, type(processor).__name__)
    return True


def server_interceptors() -> list[Any]:
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[Any]:
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
