"""Pure ASGI edge middleware for /v1/*: body cap, API key, per-caller rate limit, adaptive admission, trace hook."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Protocol

from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragline_api.auth import KeyChecker
from ragline_api.limits import RateLimiter, admission_wait
from ragline_api.metrics import ApiMetrics
from ragline_common import tracing
from ragline_common.admission import AdmissionFull, AdmissionTimeout
from ragline_common.errors import Overloaded, RaglineError, TooLarge, Unauthenticated
from ragline_common.http import error_body

log = logging.getLogger(__name__)


class BodyTooLarge(TooLarge):
    pass


def _reason(exc: RaglineError) -> str:
    if isinstance(exc, TooLarge):
        return "too_large"
    if isinstance(exc, Unauthenticated):
        return "unauthenticated"
    if isinstance(exc, AdmissionFull):
        return "queue_full"
    if isinstance(exc, AdmissionTimeout):
        return "queue_timeout"
    if isinstance(exc, Overloaded):
        return "rate_limited"
    return exc.kind


async def send_error(send: Send, exc: RaglineError) -> None:
    headers = [(b"content-type", b"application/json")]
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(exc.retry_after))).encode()))
    if isinstance(exc, Unauthenticated):
        headers.append((b"www-authenticate", b"Bearer"))
    body = json.dumps(error_body(exc.message, exc.kind, exc.http_status)).encode()
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Slots(Protocol):
    """Admission: ragline_common.admission.AdmissionController (see limits.build_admission)."""

    async def acquire(self) -> float: ...

    def release(self, latency: float | None) -> None: ...


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyChecker | None,
        rate: RateLimiter,
        slots: Slots,
        max_body_bytes: int,
        metrics: ApiMetrics,
        release: str = "dev",
    ) -> None:
        self.app = app
        self.keys = keys
        self.rate = rate
        self.slots = slots
        self.max_body = max_body_bytes
        self.metrics = metrics
        self.release = release.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                raise BodyTooLarge(f"request body is larger than the {self.max_body} bytes allowed")
            if self.keys is not None:
                caller = self.keys.identify(headers.get(b"authorization", b"").decode("latin-1") or None)
            else:
                client = scope.get("client")
                caller = "ip:" + (client[0] if client else "unknown")
            self.rate.check(caller)
            waited = await self.slots.acquire()
            admission_wait.set(waited)
        except RaglineError as exc:
            self.metrics.rejected.labels(_reason(exc)).inc()
            await send_error(send, exc)
            return

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # Chunked bodies carry no Content-Length: count while reading. FastAPI re-raises an
                    # HTTPException from the body read (any other error would become a 400).
                    self.metrics.rejected.labels("too_large").inc()
                    raise HTTPException(413, f"request body is larger than the {self.max_body} bytes allowed")
            return message

        trace = _traceparent(headers.get(b"traceparent"))

        status = 0

        async def send_extra(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [
                    (b"server-timing", f"admission;dur={waited * 1000:.2f}".encode()),
                    (b"x-ragline-release", self.release),
                    (b"traceparent", trace.encode()),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        admitted = time.perf_counter()
        try:
            await self.app(scope, capped_receive, send_extra)
        finally:
            # The time from admission to the end is what the adaptive limit learns from: for requests that were
            # served, or ran out of time (504, the clearest sign of congestion). A fast 503 from a dead downstream
            # or a 4xx would teach it a latency the work does not have.
            learn = 200 <= status < 400 or status == 504
            self.slots.release(time.perf_counter() - admitted if learn else None)


def _traceparent(incoming: bytes | None) -> str:
    """The response's W3C traceparent: this request's span when tracing is on, else the caller's trace id kept
    (or a new one), so a client can always quote a trace id that an upstream tracer may know."""
    span = trace.get_current_span().get_span_context()
    if tracing.enabled() and span.is_valid:
        return f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}"
    if incoming:
        parts = incoming.decode("latin-1").split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            return f"00-{parts[1]}-{os.urandom(8).hex()}-{parts[3][:2]}"
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
