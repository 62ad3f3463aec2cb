"""Downstream gRPC clients: one channel each, deadlines from the request, budgeted retries, a breaker each."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from ragline.embedder.v1 import embedder_pb2_grpc
from ragline.generator.v1 import generator_pb2_grpc
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_api.limits import admission_wait
from ragline_api.metrics import ApiMetrics
from ragline_api.resilience import CircuitBreaker, CircuitOpen, RetryBudget
from ragline_api.settings import ApiSettings
from ragline_common import context
from ragline_common.errors import ERROR_KIND_KEY, DeadlineExceeded, RaglineError, Unavailable
from ragline_common.grpc_client import make_channel, map_rpc_error, metadata

log = logging.getLogger(__name__)

# Safe to repeat: reads, and the embedder (a pure function). Upsert/Delete/Generate are never retried.
IDEMPOTENT = {"Search", "Get", "Info", "Embed"}
_BACKOFF_BASE = 0.01


_PEERS = ("embedder", "retriever", "generator", "Qdrant")
_NOT_READY = re.compile(r"^the (\w+) is not ready: ([^:]*)")


def unavailable_reason(name: str, exc: grpc.aio.AioRpcError) -> str:
    """Why `name` could not serve, naming the service that is really missing.

    A downstream that answered itself (its error kind is in the trailers) is starting or relays its own peer
    (the retriever reports its embedder); one that did not answer is down or restarting."""
    trailing = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    details = exc.details() or ""
    if trailing.get(ERROR_KIND_KEY) != Unavailable.kind:
        return f"{name} is unavailable: not reachable (down or restarting)"
    starting = _NOT_READY.match(details)
    if starting:
        return f"{name} is starting: {starting.group(2).strip() or 'not ready yet'}"
    for peer in _PEERS:
        if peer != name and details.startswith(f"{peer} is unavailable"):
            return f"{peer} is unavailable (reported by the {name})"
    return f"{name} is unavailable"


def time_left() -> float | None:
    """Seconds before this request's deadline, counted from its arrival (its wait for admission included)."""
    left = context.remaining()
    return None if left is None else left - admission_wait.get()


def hop_timeout(default: float) -> float:
    """This hop's deadline: what the request has left, capped by the hop's own default."""
    left = time_left()
    if left is None:
        return default
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed before the call was made")
    return min(left, default)


def _is_failure(exc: RaglineError) -> bool:
    """Errors that say the downstream is unhealthy (not the caller's fault, not a deliberate 429)."""
    return isinstance(exc, (Unavailable, DeadlineExceeded)) and not isinstance(exc, CircuitOpen)


class Downstream:
    """One downstream service: its channel, stub, circuit breaker and retry budget."""

    def __init__(self, name: str, addr: str, stub_cls: Any, timeout: float, settings: ApiSettings, metrics: ApiMetrics):
        self.name = name
        self.addr = addr
        self.channel = make_channel(addr)
        self.stub = stub_cls(self.channel)
        self.timeout = timeout
        self.max_attempts = settings.retry_max_attempts
        self.metrics = metrics
        gauge = metrics.circuit_state.labels(name)
        self.breaker = CircuitBreaker(
            name,
            failure_threshold=settings.breaker_failure_threshold,
            open_seconds=settings.breaker_open_seconds,
            on_change=lambda state: gauge.set(int(state)),
        )
        self.budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_burst)

    def _error(self, exc: grpc.aio.AioRpcError) -> RaglineError:
        err = map_rpc_error(exc, self.name)
        if isinstance(err, Unavailable):
            # The details name internal addresses: they go to the log; the client learns which service is down
            # and why, in words of our own, with a Retry-After.
            log.warning("%s unavailable: %s", self.name, exc.details())
            err = Unavailable(unavailable_reason(self.name, exc), retry_after=err.retry_after or 1.0)
        return err

    def _observe(self, method: str, code: str, start: float) -> None:
        self.metrics.downstream_duration.labels(self.name, method, code).observe(time.perf_counter() - start)

    async def _attempt(self, method: str, request: Any, timeout: float | None) -> Any:
        self.breaker.before_call()
        start = time.perf_counter()
        try:
            reply = await getattr(self.stub, method)(
                request, timeout=hop_timeout(timeout or self.timeout), metadata=metadata()
            )
        except grpc.aio.AioRpcError as exc:
            self._observe(method, exc.code().name, start)
            err = self._error(exc)
            self.breaker.on_failure(err.message) if _is_failure(err) else self.breaker.on_success()
            raise err from None
        except BaseException:
            self.breaker.on_neutral()
            raise
        self._observe(method, "OK", start)
        self.breaker.on_success()
        return reply

    async def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """A unary call; idempotent methods are retried on UNAVAILABLE while budget and deadline allow.

        `timeout` caps this call instead of the downstream's default (ingestion is slower than search)."""
        try:
            self.breaker.before_call()
        except CircuitOpen:
            self.metrics.rejected.labels("circuit_open").inc()
            raise
        self.breaker.on_neutral()
        self.budget.on_request()
        attempts = self.max_attempts if method in IDEMPOTENT else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(method, request, timeout)
            except Unavailable as exc:
                if isinstance(exc, CircuitOpen) or attempt == attempts:
                    raise
                pause = _BACKOFF_BASE * (2 ** (attempt - 1)) * (0.5 + random.random())  # noqa: S311 - jitter
                left = time_left()
                if (left is not None and left <= pause) or not self.budget.try_spend():
                    raise
                self.metrics.retries.labels(self.name).inc()
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def stream(self, method: str, request: Any) -> AsyncIterator[Any]:
        """A server-streaming call (never retried); the breaker learns from whether it started."""
        try:
            self.breaker.before_call()
        except CircuitOpen:
            self.metrics.rejected.labels("circuit_open").inc()
            raise
        start = time.perf_counter()
        call = getattr(self.stub, method)(request, timeout=hop_timeout(self.timeout), metadata=metadata())
        code = "OK"
        first = True
        try:
            async for item in call:
                if first:
                    self.breaker.on_success()
                    first = False
                yield item
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            err = self._error(exc)
            if first:
                self.breaker.on_failure(err.message) if _is_failure(err) else self.breaker.on_success()
            raise err from None
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            if first:
                self.breaker.on_neutral()
            # Leaving early (client gone, error upstream) must cancel the downstream work too.
            call.cancel()
            self._observe(method, code, start)

    async def close(self) -> None:
        await self.channel.close(grace=None)


class Downstreams:
    def __init__(self, settings: ApiSettings, metrics: ApiMetrics) -> None:
        self.retriever = Downstream(
            "retriever",
            settings.retriever_addr,
            retriever_pb2_grpc.RetrieverServiceStub,
            settings.retriever_timeout_seconds,
            settings,
            metrics,
        )
        self.generator = Downstream(
            "generator",
            settings.generator_addr,
            generator_pb2_grpc.GeneratorServiceStub,
            settings.generator_timeout_seconds,
            settings,
            metrics,
        )
        self.embedder = Downstream(
            "embedder",
            settings.embedder_addr,
            embedder_pb2_grpc.EmbedderServiceStub,
            settings.embedder_timeout_seconds,
            settings,
            metrics,
        )

    async def close(self) -> None:
        await asyncio.gather(self.retriever.close(), self.generator.close(), self.embedder.close())
