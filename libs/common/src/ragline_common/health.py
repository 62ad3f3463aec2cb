"""Readiness with reasons, mirrored into the stock gRPC health service."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    """Named conditions that must all hold before the service takes traffic (model loaded, peers up…)."""

    def __init__(self, grpc_service_names: list[str]) -> None:
        self.health = health_aio.HealthServicer()
        self._names = ["", *grpc_service_names]
        self._conditions: dict[str, str | None] = {}
        self.draining = False
        self.fatal: str | None = None  # set once by fail(): the process is alive no more

    def require(self, name: str, reason: str = "starting") -> None:
        self._conditions[name] = reason

    async def set(self, name: str, ok: bool, reason: str = "") -> None:
        before = self.ready
        previous = self._conditions.get(name, "")
        self._conditions[name] = None if ok else (reason or "not ready")
        if ok != (previous is None):
            if ok:
                log.info("%s is ready", name)
            else:
                log.warning("%s is not ready: %s", name, reason)
        if self.ready != before:
            await self._publish()

    async def fail(self, reason: str) -> None:
        """A condition that will not heal (e.g. the engine died): not ready, and not live, from now on.

        /healthz then answers 503, so the orchestrator restarts the process instead of leaving it idle."""
        if self.fatal is not None:
            return
        before = self.ready
        self.fatal = reason
        log.error("not live: %s", reason)
        if before:
            await self._publish()

    @property
    def alive(self) -> bool:
        return self.fatal is None

    @property
    def ready(self) -> bool:
        return self.alive and not self.draining and all(v is None for v in self._conditions.values())

    def reasons(self) -> dict[str, str]:
        out = {k: v for k, v in self._conditions.items() if v is not None}
        if self.fatal is not None:
            out["fatal"] = self.fatal
        if self.draining:
            out["server"] = "draining"
        return out

    async def _publish(self) -> None:
        status = SERVING if self.ready else NOT_SERVING
        for name in self._names:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self._publish()

    async def drain(self) -> None:
        self.draining = True
        await self.health.enter_graceful_shutdown()


async def watch(
    readiness: Readiness,
    name: str,
    probe: Callable[[], Awaitable[None]],
    *,
    interval: float = 5.0,
    max_backoff: float = 2.0,
) -> None:
    """Probe a dependency forever: ready while it answers; on failure retry with jittered backoff.

    The backoff stays short (2 s at most): a health check is cheap, and a peer that comes back should be
    noticed within seconds, not after the long sleeps a dead peer has built up."""
    readiness.require(name, "not checked yet")
    backoff = 0.2
    while True:
        try:
            await probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure means "not ready", with its text as the reason
            await readiness.set(name, False, f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, max_backoff)
            continue
        await readiness.set(name, True)
        backoff = 0.2
        await asyncio.sleep(interval)


def add_health_to_server(servicer: health_aio.HealthServicer, server: grpc.aio.Server) -> None:
    """The stock health servicer behind our own request parsing.

    grpc's generated registration lets the library deserialize, and bytes that are not a HealthCheckRequest
    then fail as UNKNOWN ("Exception deserializing request"); a probe with bad bytes is the caller's fault.
    """

    async def parse(raw: bytes, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckRequest:
        try:
            return health_pb2.HealthCheckRequest.FromString(raw)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid grpc.health.v1.HealthCheckRequest"
            )
            raise AssertionError("unreachable") from None  # abort always raises

    async def check(raw: bytes, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return await servicer.Check(await parse(raw, context), context)

    async def watch(raw: bytes, context: grpc.aio.ServicerContext) -> None:
        await servicer.Watch(await parse(raw, context), context)

    serialize = health_pb2.HealthCheckResponse.SerializeToString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(check, response_serializer=serialize),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, response_serializer=serialize),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.health.v1.Health", handlers),))
