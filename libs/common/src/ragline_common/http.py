"""HTTP side shared by every service: app factory, request-id/metrics middleware, error handlers, probes."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import propagate, trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragline_common import context, tracing
from ragline_common.errors import InvalidInput, RaglineError, TooLarge
from ragline_common.health import Readiness
from ragline_common.metrics import RequestMetrics

log = logging.getLogger(__name__)
access_log = logging.getLogger("ragline.access")

_PROBE_PATHS = {"/healthz", "/readyz", "/metrics"}


def error_body(message: str, kind: str, code: int | str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope, used by every route so clients parse one shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(exc: RaglineError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None) or exc.http_status
    return JSONResponse(error_body(exc.message, exc.kind, code, param), exc.http_status, headers=headers)


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): request id in and out, RED metrics per route template."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        request_id = context.accept_request_id(
            headers.get(context.REQUEST_ID_HEADER.encode(), b"").decode("latin-1") or None
        )
        context.request_id_var.set(request_id)
        context.deadline_var.set(None)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                extra = [(b"x-request-id", request_id.encode())]
                trace_id = tracing.current_trace_id()
                if trace_id:
                    extra.append((b"x-trace-id", trace_id.encode()))
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        path = scope.get("path", "")
        track = path not in _PROBE_PATHS
        if track:
            self.metrics.in_flight.labels(self.metrics.service, "http").inc()
        span_cm = None
        if track and tracing.enabled():
            carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
            span_cm = trace.get_tracer("ragline.http").start_as_current_span(
                f"{scope.get('method', '')} {path}", context=propagate.extract(carrier), kind=trace.SpanKind.SERVER
            )
            span_cm.__enter__()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if span_cm is not None:
                span_cm.__exit__(None, None, None)
            if track:
                self.metrics.in_flight.labels(self.metrics.service, "http").dec()
                route = scope.get("route")
                method = f"{scope.get('method', '')} {getattr(route, 'path', 'unmatched')}"
                seconds = time.perf_counter() - start
                self.metrics.observe("http", method, str(status), seconds)
                if access_log.isEnabledFor(logging.INFO):
                    access_log.info(
                        "%s %d %.1fms", method, status, seconds * 1000,
                        extra={"transport": "http", "status": status, "duration_ms": round(seconds * 1000, 2)},
                    )  # fmt: skip


class FieldError(InvalidInput):
    """An InvalidInput that names the request field it is about (the envelope's `param`)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


# A JSON escape of a UTF-16 surrogate ("\\ud800") or of NUL: the only ways a parsed JSON string can hold text that
# UTF-8, protobuf or the store cannot keep. A valid surrogate pair passes the scan's second look (the walk).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "holds a NUL character (\\u0000), which is not accepted in text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode: it holds an unpaired UTF-16 surrogate (U+{ord(value[exc.start]):04X})"
    return None


def find_bad_text(value: Any, path: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The first string (key or value) in a parsed JSON document that cannot be kept as UTF-8 text, as
    (dotted path, what is wrong); None when every string is fine."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return (".".join(path) or "body", problem) if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _text_problem(key)
            if problem:
                return ".".join((*path, key.encode("utf-8", "backslashreplace").decode())), f"key {problem}"
            found = find_bad_text(item, (*path, key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = find_bad_text(item, (*path, str(i)))
            if found:
                return found
    return None


async def reject_unencodable_text(request: Request) -> None:
    """Every route's edge check: a JSON body whose strings hold a lone surrogate or NUL is a 400 naming the
    field, before any handler encodes it (UTF-8, protobuf) and fails with a 500."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    body = await request.body()  # cached: the route's own body parsing reads the same bytes
    if not _SUSPECT_ESCAPE.search(body):
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return  # not JSON: the route's own parsing answers it
    found = find_bad_text(parsed)
    if found:
        param, problem = found
        raise FieldError(f"{param} {problem}", param)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # loc is ("body", <character offset>): the offset is not a field.
            loc = err.get("loc", ())
            at = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            reason = (err.get("ctx") or {}).get("error", "JSON decode error")
            parts.append(f"the body is not valid JSON: {reason}{at}")
            continue
        loc = [str(p) for p in err.get("loc", ())]
        # Drop only the leading source ("body", "query"…): a field may itself be named "query".
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


async def get_core(request: Request) -> Any:
    """The service's core, for `Annotated[CoreType, Depends(get_core)]` in each service's routes.

    async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop on every request."""
    return request.app.state.core


def create_app(
    *, service: str, version: str, readiness: Readiness, metrics: RequestMetrics, **fastapi_kwargs: Any
) -> FastAPI:
    dependencies = [Depends(reject_unencodable_text), *fastapi_kwargs.pop("dependencies", [])]
    app = FastAPI(title=f"ragline {service}", version=version, dependencies=dependencies, **fastapi_kwargs)
    app.state.readiness = readiness
    app.state.metrics = metrics

    @app.exception_handler(RaglineError)
    async def _ragline(_: Request, exc: RaglineError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, "invalid_request_error", 400, param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # One type per status, however the error arose (a 413 from a Content-Length check or a chunked body).
        kinds = {404: "not_found_error", 413: TooLarge.kind}
        kind = kinds.get(exc.status_code, "invalid_request_error")
        return JSONResponse(error_body(str(exc.detail), kind, exc.status_code), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error in HTTP handler", exc_info=exc)
        message = f"internal error; see the service logs for request id {context.request_id_var.get()}"
        return JSONResponse(error_body(message, "internal_error", 500), 500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        if readiness.alive:
            return JSONResponse({"status": "alive"})
        return JSONResponse({"status": "dead", "reason": readiness.fatal}, 503)

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if readiness.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reasons": readiness.reasons()}, 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
