"""gRPC client side: channels made once, calls carrying deadline and request id, errors mapped back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragline_common import context, tracing
from ragline_common.errors import DeadlineExceeded, RaglineError, Unavailable, from_grpc

R = TypeVar("R")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Retries are the caller's decision (budgeted in the api), not the channel's.
    ("grpc.enable_retries", 0),
    # Spread calls over every address a headless Service resolves to, not one pinned pod.
    ("grpc.lb_policy_name", "round_robin"),
    # Reconnect quickly after a peer restarts: the default backoff climbs to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


def make_channel(addr: str, interceptors: list[Any] | None = None) -> grpc.aio.Channel:
    """One long-lived channel per downstream; `addr` is host:port or any gRPC target (dns:///…)."""
    interceptors = [*tracing.client_interceptors(), *(interceptors or [])]
    return grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS, interceptors=interceptors or None)


def metadata() -> tuple[tuple[str, str], ...]:
    request_id = context.request_id_var.get()
    return ((context.REQUEST_ID_HEADER, request_id),) if request_id else ()


def timeout_for(default: float) -> float:
    """This hop's deadline: the caller's remaining time, capped by the hop's own default."""
    left = context.remaining()
    if left is None:
        return default
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed before the call was made")
    return min(left, default)


def map_rpc_error(exc: grpc.aio.AioRpcError, peer: str) -> RaglineError:
    trailing = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"{peer} is unavailable: {exc.details()}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{peer} did not answer within the deadline")
    return from_grpc(code, exc.details(), trailing)


async def unary(method: Callable[..., Awaitable[R]], request: Any, *, peer: str, timeout: float) -> R:
    """Call a unary RPC with this request's remaining deadline and id; raise the mapped error on failure."""
    try:
        return await method(request, timeout=timeout_for(timeout), metadata=metadata())
    except grpc.aio.AioRpcError as exc:
        raise map_rpc_error(exc, peer) from None


async def stream(method: Callable[..., Any], request: Any, *, peer: str, timeout: float) -> AsyncIterator[Any]:
    call = method(request, timeout=timeout_for(timeout), metadata=metadata())
    try:
        async for item in call:
            yield item
    except grpc.aio.AioRpcError as exc:
        raise map_rpc_error(exc, peer) from None
    finally:
        # Leaving early (client gone, error upstream) must cancel the downstream work too.
        call.cancel()


def health_probe(channel: grpc.aio.Channel, service: str, timeout: float = 2.0) -> Callable[[], Awaitable[None]]:
    """A readiness probe that asks a peer's grpc.health.v1 whether `service` is SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def probe() -> None:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"{service}: {exc.code().name} {exc.details()}") from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise ConnectionError(
                f"{service} reports {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            )

    return probe
