"""Circuit breaker, retry budget and the gateway's behaviour with a downstream that is down, crashing or hanging."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import time
from typing import Any

import grpc
import httpx
import pytest

from ragline_api.clients import hop_timeout, unavailable_reason
from ragline_api.limits import RateLimiter, admission_wait
from ragline_api.resilience import CircuitBreaker, CircuitOpen, CircuitState, RetryBudget
from ragline_common import context
from ragline_common.errors import ERROR_KIND_KEY, DeadlineExceeded, Overloaded

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_then_half_opens_with_one_probe() -> None:
    clock, states = Clock(), []
    b = CircuitBreaker("retriever", failure_threshold=3, open_seconds=5, on_change=states.append, clock=clock)
    for _ in range(2):
        b.before_call()
        b.on_failure()
    b.before_call()
    b.on_success()  # a success resets the count
    for _ in range(3):
        b.before_call()
        b.on_failure()
    assert b.state == CircuitState.OPEN
    with pytest.raises(CircuitOpen) as exc:
        b.before_call()
    assert exc.value.retry_after == 5 and exc.value.http_status == 503
    clock.now += 5
    b.before_call()  # the probe
    assert b.state == CircuitState.HALF_OPEN
    with pytest.raises(CircuitOpen):
        b.before_call()  # only one probe at a time
    b.on_failure()
    assert b.state == CircuitState.OPEN  # a failed probe reopens at once
    clock.now += 5
    b.before_call()
    b.on_success()
    assert b.state == CircuitState.CLOSED
    assert states == [0, 2, 1, 2, 1, 0]


def test_breaker_probe_released_when_the_call_ends_without_verdict() -> None:
    clock = Clock()
    b = CircuitBreaker("g", failure_threshold=1, open_seconds=1, clock=clock)
    b.before_call()
    b.on_failure()
    clock.now += 1
    b.before_call()
    b.on_neutral()  # e.g. the client went away
    b.before_call()  # another probe may go
    assert b.state == CircuitState.HALF_OPEN


def test_retry_budget_bounds_retries_to_burst_plus_ratio() -> None:
    budget = RetryBudget(ratio=0.1, burst=3)
    retries = 0
    for _ in range(1000):
        budget.on_request()
        while budget.try_spend():  # a caller that would retry forever
            retries += 1
    assert retries <= 3 + 0.1 * 1000
    assert retries >= 0.1 * 1000 - 1


def test_rate_limiter_refills_at_its_rate() -> None:
    clock = Clock()
    rl = RateLimiter(rate=2, burst=2, clock=clock)
    rl.check("a")
    rl.check("a")
    with pytest.raises(Overloaded) as exc:
        rl.check("a")
    assert exc.value.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    rl.check("a")
    rl.check("b")


def test_rate_limiter_forgets_old_callers() -> None:
    rl = RateLimiter(rate=1, burst=1, max_callers=10)
    for i in range(100):
        rl.check(f"k{i}")
    assert len(rl._buckets) == 10


# Through the gateway ---------------------------------------------------------------------------------------------


def client(svc: Any, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{svc.http_port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


async def test_down_retriever_gives_503_and_retries_stay_within_budget(start_gateway, api_key, fakes) -> None:
    fakes.retriever.fault.mode = "unavailable"
    # The breaker is held closed so that every request reaches the downstream: the budget alone bounds attempts.
    async with start_gateway(breaker_failure_threshold=10_000) as svc, client(svc, api_key) as c:
        requests = 60
        for _ in range(requests):
            r = await c.post("/v1/search", json={"query": "x"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            # It answered UNAVAILABLE itself; its details stay in the log.
            assert r.json()["error"]["message"] == "retriever is unavailable"
        metrics = (await c.get("/metrics")).text
    attempts = fakes.retriever.fault.calls["Search"]
    assert requests < attempts <= 1.2 * requests
    assert f'ragline_api_retries_total{{downstream="retriever"}} {attempts - requests}.0' in metrics


async def test_breaker_opens_and_fails_fast(start_gateway, api_key, fakes) -> None:
    fakes.retriever.fault.mode = "unavailable"
    async with start_gateway(breaker_failure_threshold=3, breaker_open_seconds=30) as svc, client(svc, api_key) as c:
        for _ in range(10):
            r = await c.post("/v1/search", json={"query": "x"})
            assert r.status_code == 503
        assert fakes.retriever.fault.calls["Search"] <= 4  # threshold (+ at most one budgeted retry)
        assert "circuit is open" in r.json()["error"]["message"]
        assert r.json()["error"]["message"].startswith("retriever is failing (retriever is unavailable)")
        assert 20 <= int(r.headers["retry-after"]) <= 30
        metrics = (await c.get("/metrics")).text
        assert 'ragline_api_circuit_state{downstream="retriever"} 2.0' in metrics
        assert 'ragline_api_circuit_state{downstream="generator"} 0.0' in metrics
        assert 'ragline_api_rejected_total{reason="circuit_open"}' in metrics
        # A different downstream is unaffected.
        assert (await c.post("/v1/embeddings", json={"input": "x"})).status_code == 200


async def test_breaker_recovers_through_half_open(start_gateway, api_key, fakes) -> None:
    fakes.retriever.fault.mode = "unavailable"
    async with start_gateway(breaker_failure_threshold=2, breaker_open_seconds=0.3) as svc, client(svc, api_key) as c:
        for _ in range(3):
            await c.post("/v1/search", json={"query": "x"})
        fakes.retriever.fault.mode = "ok"
        await asyncio.sleep(0.35)
        assert (await c.post("/v1/search", json={"query": "x"})).status_code == 200
        assert 'ragline_api_circuit_state{downstream="retriever"} 0.0' in (await c.get("/metrics")).text


async def test_writes_and_generation_are_never_retried(start_gateway, api_key, fakes) -> None:
    fakes.retriever.fault.mode = "unavailable"
    fakes.generator.fault.mode = "unavailable"
    async with start_gateway(breaker_failure_threshold=100) as svc, client(svc, api_key) as c:
        r = await c.post("/v1/documents", json={"documents": [{"id": "a", "text": "t"}]})
        assert r.status_code == 503
        r = await c.delete("/v1/documents/a")
        assert r.status_code == 503
        r = await c.post("/v1/query", json={"question": "q", "k": 1})
        assert r.status_code == 503  # the search fails first, with retries
        fakes.retriever.fault.mode = "ok"
        r = await c.post("/v1/query", json={"question": "q"})
        assert r.status_code == 503 and "generator is unavailable" in r.json()["error"]["message"]
    assert fakes.retriever.fault.calls["Upsert"] == 1 and fakes.retriever.fault.calls["Delete"] == 1
    assert fakes.generator.fault.calls["Generate"] == 1


async def test_hanging_downstream_gives_504_within_the_deadline(start_gateway, api_key, fakes) -> None:
    fakes.retriever.fault.mode = "hang"
    async with start_gateway(request_timeout_seconds=0.5) as svc, client(svc, api_key) as c:
        start = time.perf_counter()
        r = await c.post("/v1/search", json={"query": "x"})
        elapsed = time.perf_counter() - start
    assert r.status_code == 504 and "deadline" in r.json()["error"]["message"]
    assert 0.4 < elapsed < 1.5


async def test_crashing_downstream_is_503_without_a_stack_trace(start_gateway, api_key, fakes) -> None:
    fakes.generator.fault.mode = "internal"
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/query", json={"question": "q"})
    assert r.status_code == 503
    assert "Traceback" not in r.text and "fake crash" not in r.text


async def test_nothing_listening_is_a_fast_503(start_gateway, api_key) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connections are refused
        async with start_gateway(generator_addr=dead) as svc, client(svc, api_key) as c:
            start = time.perf_counter()
            r = await c.post("/v1/query", json={"question": "q"})
            assert r.status_code == 503 and time.perf_counter() - start < 2
            # Transport details (internal addresses) stay in the logs.
            assert r.json()["error"]["message"].startswith("generator is unavailable: not reachable")
            assert "127.0.0.1" not in r.text
            r = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}]})
            assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"


def rpc_error(details: str, kind: str | None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(*([(ERROR_KIND_KEY, kind)] if kind else []))
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), trailing, details)


@pytest.mark.parametrize(
    ("details", "kind", "reason"),
    [
        ("failed to connect to all addresses; 127.0.0.1:50052", None,
         "retriever is unavailable: not reachable (down or restarting)"),
        ("the retriever is not ready: waiting for the embedder's model info", "service_unavailable",
         "retriever is starting: waiting for the embedder's model info"),
        ("the retriever is not ready: waiting for embedder/store: embedder is unavailable: 127.0.0.1:1",
         "service_unavailable", "retriever is starting: waiting for embedder/store"),
        ("embedder is unavailable: failed to connect to all addresses; 127.0.0.1:50051", "service_unavailable",
         "embedder is unavailable (reported by the retriever)"),
        ("something else", "service_unavailable", "retriever is unavailable"),
    ],
)  # fmt: skip
def test_unavailable_reason_names_the_missing_service_and_never_an_address(
    details: str, kind: str | None, reason: str
) -> None:
    assert unavailable_reason("retriever", rpc_error(details, kind)) == reason


def test_a_hop_gets_the_requests_time_left_less_its_wait_for_admission() -> None:
    def run(waited: float) -> float:
        context.set_deadline_in(5.0)
        admission_wait.set(waited)
        return hop_timeout(10.0)

    assert 4.9 < contextvars.copy_context().run(run, 0.0) <= 5.0
    assert 3.9 < contextvars.copy_context().run(run, 1.0) <= 4.0
    with pytest.raises(DeadlineExceeded):
        contextvars.copy_context().run(run, 6.0)
