"""Readiness.fail: a condition that will not heal makes the process unready and not live, on HTTP and gRPC."""

from __future__ import annotations

import httpx
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from ragline_common.health import NOT_SERVING, SERVING, Readiness
from ragline_common.http import create_app
from ragline_common.metrics import RequestMetrics

pytestmark = pytest.mark.unit


async def status(r: Readiness, service: str = "") -> int:
    reply = await r.health.Check(health_pb2.HealthCheckRequest(service=service), None)
    return reply.status


async def test_fail_turns_ready_and_live_off_for_good() -> None:
    r = Readiness(["demo.v1.Demo"])
    r.require("model", "loading")
    await r.start()
    await r.set("model", True)
    assert r.ready and r.alive and await status(r, "demo.v1.Demo") == SERVING
    await r.fail("engine dead: EngineDeadError")
    assert not r.ready and not r.alive
    assert r.reasons() == {"fatal": "engine dead: EngineDeadError"}
    assert await status(r) == NOT_SERVING and await status(r, "demo.v1.Demo") == NOT_SERVING
    await r.set("model", True)  # nothing brings it back
    await r.fail("a second reason")  # the first reason stays
    assert not r.ready and r.fatal == "engine dead: EngineDeadError"
    assert await status(r, "demo.v1.Demo") == NOT_SERVING


async def test_healthz_answers_503_with_the_reason_once_failed() -> None:
    r = Readiness([])
    await r.start()
    app = create_app(service="demo", version="0", readiness=r, metrics=RequestMetrics(CollectorRegistry(), "demo"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as client:
        alive = await client.get("/healthz")
        assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
        await r.fail("engine dead")
        dead = await client.get("/healthz")
        assert (dead.status_code, dead.json()) == (503, {"status": "dead", "reason": "engine dead"})
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reasons"] == {"fatal": "engine dead"}
