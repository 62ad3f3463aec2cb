"""Run one service: gRPC (grpc.aio) and HTTP (uvicorn) in one event loop, with a SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import uvicorn
from fastapi import FastAPI

from ragline_common import tracing
from ragline_common.grpc_client import MAX_MESSAGE_BYTES
from ragline_common.health import Readiness, add_health_to_server
from ragline_common.logs import configure_logging
from ragline_common.settings import ReleaseSettings, ServiceSettings, load_settings

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ServiceSettings)


class PortInUse(RuntimeError):
    pass


class StartupFailed(RuntimeError):
    pass


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: serve() owns SIGTERM so that the drain runs in order."""

    def install_signal_handlers(self) -> None:
        pass

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


def freeze_startup_heap() -> None:
    """Move everything startup allocated into the collector's permanent generation, once it is loaded.

    torch, transformers and a model leave ~450k tracked objects that live as long as the process; every full
    collection walks them all, stopping the process for ~200 ms (measured in the embedder on 2 cores), and
    those pauses land on requests. Frozen, a full collection walks only what serving allocates.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("froze %d startup objects out of the collector's reach in %.0f ms",
             gc.get_freeze_count(), (time.perf_counter() - started) * 1000)  # fmt: skip


def bind_http(host: str, port: int, env_var: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: accepted sockets inherit it, and asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP. With proto 0, Nagle + delayed ACK add ~40 ms to every HTTP response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"HTTP port {port} on {host} is already in use; set {env_var} to a free port") from None
        raise SystemExit(f"cannot bind HTTP {host}:{port} ({env_var}): {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass
class Service:
    """What serve() runs; __main__ builds it, tests can build and run it in-process too."""

    name: str
    settings: ServiceSettings
    env_prefix: str
    app: FastAPI
    readiness: Readiness
    register_grpc: Callable[[grpc.aio.Server], None]
    startup: Callable[[], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None
    grpc_interceptors: list[Any] = field(default_factory=list)
    # Set once both servers listen, with the bound ports (useful with port 0).
    bound: asyncio.Event = field(default_factory=asyncio.Event)
    http_port: int = 0
    grpc_port: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def request_stop(self) -> None:
        self._stop.set()


async def run(service: Service, *, handle_signals: bool = True) -> None:
    s = service.settings
    sock = bind_http(s.host, s.http_port, f"{service.env_prefix}HTTP_PORT")
    service.http_port = sock.getsockname()[1]

    server = grpc.aio.server(
        interceptors=[*tracing.server_interceptors(), *service.grpc_interceptors] or None,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    service.register_grpc(server)
    add_health_to_server(service.readiness.health, server)
    target = f"[{s.host}]:{s.grpc_port}" if ":" in s.host else f"{s.host}:{s.grpc_port}"
    try:
        service.grpc_port = server.add_insecure_port(target)
    except RuntimeError:
        sock.close()
        raise PortInUse(
            f"gRPC port {s.grpc_port} on {s.host} is already in use; set {service.env_prefix}GRPC_PORT to a free port"
        ) from None

    await service.readiness.start()
    await server.start()
    config = uvicorn.Config(
        service.app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(s.shutdown_grace_seconds),
        timeout_keep_alive=75,  # above the usual 60 s idle timeout of load balancers in front
        lifespan="off",
    )
    http = _Server(config)
    http_task = asyncio.create_task(http.serve(sockets=[sock]))

    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop)
    log.info(
        "%s listening: http %s:%d, grpc %s:%d",
        service.name, s.host, service.http_port, s.host, service.grpc_port,
    )  # fmt: skip
    service.bound.set()

    async def start_then_freeze() -> None:
        if service.startup:
            await service.startup()
        freeze_startup_heap()

    startup_task = asyncio.create_task(start_then_freeze())
    stop_task = asyncio.create_task(service._stop.wait())
    watched: set[asyncio.Task[Any]] = {stop_task, http_task, startup_task}
    failed: BaseException | None = None
    while True:
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if startup_task in done and not startup_task.cancelled() and startup_task.exception() is not None:
            # A model that cannot load or a store that cannot open will not heal: exit non-zero so the
            # orchestrator restarts it (with backoff) and the failure is visible, instead of idling not-ready.
            failed = startup_task.exception()
            log.error("startup failed: %s: %s", type(failed).__name__, failed, exc_info=failed)
            break
        if startup_task in done:
            watched.discard(startup_task)
            continue
        if http_task in done and not stop_task.done():
            log.error("HTTP server stopped unexpectedly")
        break

    log.info("draining: not ready, finishing in-flight requests (up to %.0fs)", s.shutdown_grace_seconds)
    await service.readiness.drain()
    if s.drain_seconds:
        await asyncio.sleep(s.drain_seconds)
    http.should_exit = True
    await asyncio.gather(server.stop(s.shutdown_grace_seconds), http_task, return_exceptions=True)
    stop_task.cancel()
    if not startup_task.done():
        startup_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await startup_task
    if service.shutdown:
        await service.shutdown()
    log.info("%s stopped", service.name)
    if failed is not None:
        raise StartupFailed(f"{service.name} failed to start: {type(failed).__name__}: {failed}")


def _event_loop_runner() -> Callable[[Any], Any]:
    """uvloop when installed (it is a dependency on Linux), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def main(build: Callable[[], Service]) -> None:
    """Entry point body for `python -m ragline_<svc>`: build the service, run it, exit cleanly."""

    async def _go() -> None:
        await run(build())

    try:
        _event_loop_runner()(_go())
    except PortInUse as exc:
        log.error("%s", exc)
        raise SystemExit(3) from None
    except StartupFailed:
        raise SystemExit(1) from None


def run_service(name: str, settings_cls: type[S], build: Callable[[S, ReleaseSettings], Service]) -> None:
    """Every service's `main()`: settings → release → logging → tracing → serve, in that order."""
    settings = load_settings(settings_cls)
    release = load_settings(ReleaseSettings)
    configure_logging(name, settings.log_level, release.release)
    tracing.configure_tracing(name, release.release)
    main(lambda: build(settings, release))
