"""Registers a servicer behind one wrapper: request parsing, errors → codes, metrics, request id, deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.protobuf import symbol_database
from google.protobuf.descriptor import ServiceDescriptor

from ragline_common import context
from ragline_common.errors import ERROR_KIND_KEY, RETRY_AFTER_KEY, InvalidInput, RaglineError
from ragline_common.metrics import RequestMetrics

log = logging.getLogger(__name__)
access_log = logging.getLogger("ragline.access")

_INTERNAL_MESSAGE = "internal error; see the service logs for request id {}"


def _begin(ctx: grpc.aio.ServicerContext) -> str:
    md = {k: v for k, v in (ctx.invocation_metadata() or ()) if isinstance(v, str)}
    request_id = context.accept_request_id(md.get(context.REQUEST_ID_HEADER))
    context.request_id_var.set(request_id)
    context.set_deadline_in(ctx.time_remaining())
    return request_id


async def _fail(ctx: grpc.aio.ServicerContext, exc: BaseException, request_id: str) -> grpc.StatusCode:
    if isinstance(exc, RaglineError):
        trailing: list[tuple[str, str]] = [(ERROR_KIND_KEY, exc.kind)]
        if exc.retry_after is not None:
            trailing.append((RETRY_AFTER_KEY, f"{exc.retry_after:g}"))
        ctx.set_trailing_metadata(tuple(trailing))
        await ctx.abort(exc.grpc_code, exc.message)
    log.exception("unhandled error in gRPC handler")
    await ctx.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE.format(request_id))
    raise AssertionError("unreachable")  # abort always raises


def _parse(request_cls: type[pb_message.Message], raw: bytes) -> pb_message.Message:
    try:
        return request_cls.FromString(raw)
    except pb_message.DecodeError as exc:
        # Bad wire bytes, or a string field that is not UTF-8: the caller's fault, not ours.
        raise InvalidInput(f"request is not a valid {request_cls.DESCRIPTOR.full_name}: {exc}") from None


def _record(metrics: RequestMetrics, name: str, code: grpc.StatusCode, start: float) -> None:
    seconds = time.perf_counter() - start
    metrics.observe("grpc", name, code.name, seconds)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s %.1fms", name, code.name, seconds * 1000,
            extra={"transport": "grpc", "status": code.name, "duration_ms": round(seconds * 1000, 2)},
        )  # fmt: skip


def _unary(
    fn: Callable[..., Any], request_cls: type[pb_message.Message], metrics: RequestMetrics, name: str
) -> Callable[..., Any]:
    async def handler(raw: bytes, ctx: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        request_id = _begin(ctx)
        code = grpc.StatusCode.OK
        metrics.in_flight.labels(metrics.service, "grpc").inc()
        try:
            response = await fn(_parse(request_cls, raw), ctx)
            return response.SerializeToString()  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            code = exc.grpc_code if isinstance(exc, RaglineError) else grpc.StatusCode.INTERNAL
            await _fail(ctx, exc, request_id)
            raise
        finally:
            metrics.in_flight.labels(metrics.service, "grpc").dec()
            _record(metrics, name, code, start)

    return handler


def _stream(
    fn: Callable[..., Any], request_cls: type[pb_message.Message], metrics: RequestMetrics, name: str
) -> Callable[..., Any]:
    async def handler(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        start = time.perf_counter()
        request_id = _begin(ctx)
        code = grpc.StatusCode.OK
        metrics.in_flight.labels(metrics.service, "grpc").inc()
        try:
            async for item in fn(_parse(request_cls, raw), ctx):
                yield item.SerializeToString()
        except (GeneratorExit, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            code = exc.grpc_code if isinstance(exc, RaglineError) else grpc.StatusCode.INTERNAL
            await _fail(ctx, exc, request_id)
        finally:
            metrics.in_flight.labels(metrics.service, "grpc").dec()
            _record(metrics, name, code, start)

    return handler


def add_servicer(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, metrics: RequestMetrics
) -> None:
    """Expose every RPC of `service` that `servicer` implements as `async def Name(request, context)`."""
    db = symbol_database.Default()
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        fn = getattr(servicer, method.name)
        request_cls = db.GetSymbol(method.input_type.full_name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(_stream(fn, request_cls, metrics, method.name))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unary(fn, request_cls, metrics, method.name))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
