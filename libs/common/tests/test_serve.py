"""serve.run: both servers in one loop, clear port errors, and a drain that refuses new work first."""

from __future__ import annotations

import asyncio
import gc
import socket

import grpc
import httpx
import pytest
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import PortInUse, Service, StartupFailed, run
from ragline_common.settings import ServiceSettings
from ragline_common.testing import running

pytestmark = pytest.mark.integration


def make_service(http_port: int = 0, grpc_port: int = 0) -> tuple[Service, asyncio.Event]:
    readiness = Readiness(["demo.v1.Demo"])
    readiness.require("model", "loading")
    app: FastAPI = create_app(
        service="demo", version="0", readiness=readiness, metrics=RequestMetrics(CollectorRegistry(), "demo")
    )
    release = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await release.wait()
        return {"done": "yes"}

    async def startup() -> None:
        await readiness.set("model", True)

    settings = ServiceSettings(http_port=http_port, grpc_port=grpc_port, shutdown_grace_seconds=5, drain_seconds=0.5)
    svc = Service("demo", settings, "DEMO_", app, readiness, lambda server: None, startup=startup)
    return svc, release


async def test_http_port_in_use_names_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        svc, _ = make_service(http_port=taken.getsockname()[1])
        with pytest.raises(PortInUse, match="DEMO_HTTP_PORT"):
            await run(svc, handle_signals=False)


async def test_grpc_port_in_use_names_the_variable() -> None:
    async with running(make_service()[0]) as first:
        svc, _ = make_service(grpc_port=first.grpc_port)
        with pytest.raises(PortInUse, match="DEMO_GRPC_PORT"):
            await run(svc, handle_signals=False)


async def test_stop_turns_unready_then_finishes_in_flight_requests() -> None:
    svc, release = make_service()
    async with running(svc):
        base = f"http://127.0.0.1:{svc.http_port}"
        async with (
            httpx.AsyncClient(timeout=10) as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as ch,
        ):
            health = health_pb2_grpc.HealthStub(ch)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="demo.v1.Demo"), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            in_flight = asyncio.create_task(client.get(base + "/slow"))
            await asyncio.sleep(0.1)
            svc.request_stop()
            await asyncio.sleep(0.1)
            assert not svc.readiness.ready
            reply = await health.Check(health_pb2.HealthCheckRequest(service="demo.v1.Demo"), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await asyncio.sleep(0.6)  # past the drain: listeners close, the in-flight request goes on
            with pytest.raises(httpx.ConnectError):
                await client.get(base + "/healthz")
            release.set()
            response = await in_flight
            assert response.status_code == 200 and response.json() == {"done": "yes"}


async def test_a_failed_startup_stops_the_service_with_an_error() -> None:
    svc, _ = make_service()

    async def broken() -> None:
        raise FileNotFoundError("model.gguf")

    svc.startup = broken
    with pytest.raises(StartupFailed, match="FileNotFoundError: model.gguf"):
        await asyncio.wait_for(run(svc, handle_signals=False), 30)


async def test_what_startup_loaded_is_frozen_out_of_the_collectors_reach() -> None:
    svc, _ = make_service()
    loaded: list[list[dict[str, int]]] = []

    async def startup() -> None:
        loaded.extend([{"weights": i}] for i in range(1000))  # stands in for a model's long-lived objects
        await svc.readiness.set("model", True)

    svc.startup = startup
    gc.unfreeze()
    try:
        async with running(svc):
            async with asyncio.timeout(10):
                while not gc.get_freeze_count():
                    await asyncio.sleep(0.01)
            collected = {id(o) for o in gc.get_objects()}  # generations 0-2; the permanent one is not listed
            assert not any(id(o) in collected for o in loaded)
    finally:
        gc.unfreeze()
