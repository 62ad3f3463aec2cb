"""Readiness follows its conditions and mirrors them into grpc.health.v1."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2

from ragline_common.health import NOT_SERVING, SERVING, Readiness, watch

pytestmark = pytest.mark.unit


async def status(r: Readiness, service: str = "") -> int:
    reply = await r.health.Check(health_pb2.HealthCheckRequest(service=service), None)
    return reply.status


async def test_ready_only_when_every_condition_holds_and_not_draining() -> None:
    r = Readiness(["demo.v1.Demo"])
    r.require("model", "loading")
    await r.start()
    assert not r.ready and r.reasons() == {"model": "loading"}
    assert await status(r) == NOT_SERVING
    await r.set("model", True)
    assert r.ready and await status(r, "demo.v1.Demo") == SERVING
    await r.set("peer", False, "peer down")
    assert not r.ready and await status(r) == NOT_SERVING
    await r.set("peer", True)
    await r.drain()
    assert not r.ready and r.reasons() == {"server": "draining"}


async def test_watch_goes_unready_with_the_reason_and_recovers() -> None:
    r = Readiness([])
    up = asyncio.Event()

    async def probe() -> None:
        if not up.is_set():
            raise ConnectionError("refused")

    task = asyncio.create_task(watch(r, "peer", probe, interval=0.01, max_backoff=0.02))
    await asyncio.sleep(0.05)
    assert r.reasons()["peer"] == "ConnectionError: refused"
    up.set()
    for _ in range(100):
        if r.ready:
            break
        await asyncio.sleep(0.01)
    assert r.ready
    task.cancel()
