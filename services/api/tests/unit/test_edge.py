"""Auth, rate limit, body cap, concurrency cap and CORS at the gateway's edge, over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.unit


def client(svc: Any, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.http_port}", headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("auth", "expect"),
    [
        (None, "missing API key"),
        ("Basic abc", "must be `Bearer <key>`"),
        ("Bearer wrong-key-0123456789abcdef", "invalid API key"),
        ("Bearer", "must be `Bearer <key>`"),
    ],
)
async def test_requests_without_a_valid_key_get_401(start_gateway, auth, expect) -> None:
    async with start_gateway() as svc, client(svc, None) as c:
        r = await c.post("/v1/search", json={"query": "x"}, headers={"Authorization": auth} if auth else {})
        assert r.status_code == 401
        assert expect in r.json()["error"]["message"] and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer" and r.headers["x-request-id"]
        metrics = (await c.get("/metrics")).text
        assert 'ragline_api_rejected_total{reason="unauthenticated"} 1.0' in metrics


async def test_every_configured_key_works(start_gateway, api_key) -> None:
    async with start_gateway() as svc:
        for key in (api_key, "other-key-0123456789abcdef"):
            async with client(svc, key) as c:
                assert (await c.post("/v1/search", json={"query": "x"})).status_code == 200


async def test_auth_off_is_explicit_and_logged(start_gateway, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="ragline_api")
    async with start_gateway(enable_auth=False) as svc, client(svc, None) as c:
        assert (await c.post("/v1/search", json={"query": "x"})).status_code == 200
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records)


async def test_rate_limit_per_key_answers_429_with_retry_after(start_gateway, api_key) -> None:
    async with start_gateway(rate_limit_per_second=0.5, rate_limit_burst=2) as svc:
        async with client(svc, api_key) as c:
            codes = [(await c.post("/v1/search", json={"query": "x"})).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            r = await c.post("/v1/search", json={"query": "x"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert "rate limit" in r.json()["error"]["message"]
        async with client(svc, "other-key-0123456789abcdef") as other:  # another key has its own bucket
            assert (await other.post("/v1/search", json={"query": "x"})).status_code == 200


async def test_body_over_the_cap_is_413_by_content_length(start_gateway, api_key) -> None:
    async with start_gateway(max_body_bytes=2048) as svc, client(svc, api_key) as c:
        r = await c.post("/v1/documents", content=b'{"documents": "' + b"x" * 4096 + b'"}')
        assert r.status_code == 413 and "2048 bytes" in r.json()["error"]["message"]


async def test_chunked_body_over_the_cap_is_413_while_reading(start_gateway, api_key) -> None:
    async def chunks():
        yield b'{"documents": [{"id": "a", "text": "'
        for _ in range(8):
            yield b"y" * 1024
        yield b'"}]}'

    async with start_gateway(max_body_bytes=2048) as svc, client(svc, api_key) as c:
        r = await c.post("/v1/documents", content=chunks())
        assert "content-length" not in r.request.headers
        assert r.status_code == 413, r.text


async def test_concurrency_cap_refuses_fast_when_the_queue_is_full(start_gateway, api_key, fakes) -> None:
    fakes.generator.fault.delay = 1.0
    async with start_gateway(max_concurrency=1, max_queue=1, queue_timeout_seconds=5) as svc, client(svc, api_key) as c:
        slow = [asyncio.create_task(c.post("/v1/query", json={"question": "q"})) for _ in range(2)]
        await asyncio.sleep(0.3)  # one runs, one waits in the queue
        start = time.perf_counter()
        r = await c.post("/v1/query", json={"question": "q"})
        assert r.status_code == 429 and time.perf_counter() - start < 0.5
        assert "capacity" in r.json()["error"]["message"] and r.headers["retry-after"]
        assert [x.status_code for x in await asyncio.gather(*slow)] == [200, 200]
        assert 'ragline_api_rejected_total{reason="queue_full"} 1.0' in (await c.get("/metrics")).text


async def test_concurrency_cap_queue_timeout_is_503(start_gateway, api_key, fakes) -> None:
    fakes.generator.fault.delay = 1.0
    settings = {"max_concurrency": 1, "max_queue": 4, "queue_timeout_seconds": 0.2}
    async with start_gateway(**settings) as svc, client(svc, api_key) as c:
        slow = asyncio.create_task(c.post("/v1/query", json={"question": "q"}))
        await asyncio.sleep(0.2)
        r = await c.post("/v1/query", json={"question": "q"})
        assert r.status_code == 503 and "no slot freed within 0.2s" in r.json()["error"]["message"]
        assert (await slow).status_code == 200


async def test_probes_and_metrics_bypass_admission_and_the_limit_is_exported(start_gateway, api_key, fakes) -> None:
    fakes.generator.fault.delay = 1.0
    async with start_gateway(max_concurrency=1, max_queue=0) as svc, client(svc, api_key) as c:
        slow = asyncio.create_task(c.post("/v1/query", json={"question": "q"}))
        await asyncio.sleep(0.3)  # the only slot is taken, and there is no line
        assert (await c.post("/v1/query", json={"question": "q"})).status_code == 429
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        metrics = await c.get("/metrics")
        assert metrics.status_code == 200 and "ragline_api_admission_limit 1.0" in metrics.text
        assert (await slow).status_code == 200


async def test_cors_is_off_unless_configured(start_gateway, api_key) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.options("/v1/search", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    async with start_gateway(cors_origins="https://app.example") as svc, client(svc, None) as c:
        r = await c.options("/v1/search", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"


async def test_every_response_carries_a_trace_id_and_the_release(start_gateway, api_key) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post(
            "/v1/search", json={"query": "x"}, headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        )
        assert r.headers["traceparent"].split("-")[1] == trace_id
        minted = (await c.post("/v1/search", json={"query": "x"})).headers["traceparent"].split("-")
        assert len(minted[1]) == 32 and minted[1] != trace_id
        assert r.headers["x-ragline-release"]


async def test_grpc_port_serves_health_only(start_gateway) -> None:
    async with start_gateway() as svc:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}")
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await channel.close()
