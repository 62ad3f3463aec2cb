"""Bounded async load generator for loopback targets: closed loop (N clients) and open loop (a fixed schedule)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.reliability.rawhttp import ConnectionFailed, RawClient

# Anything else is a mistake in a test, not a load target.
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
REFUSAL_CODES = {429, 503}


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"load targets must be on loopback, got {url!r}")


@dataclass
class Sample:
    start: float  # seconds since the run began
    latency: float  # seconds
    status: int | None  # HTTP status, None when no response came
    outcome: str  # ok | refused | error | timeout | conn_error
    retry_after: bool = False
    detail: str = ""


def classify(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if status in REFUSAL_CODES:
        return "refused"
    return "error"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_stats(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else 0.0,
    }


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    duration: float = 0.0
    offered: int = 0  # requests the schedule asked for (open loop) or sent (closed loop)

    def of(self, outcome: str) -> list[Sample]:
        return [s for s in self.samples if s.outcome == outcome]

    def latencies(self, outcome: str) -> list[float]:
        return [s.latency for s in self.of(outcome)]

    def window(self, start: float, end: float) -> LoadResult:
        picked = [s for s in self.samples if start <= s.start < end]
        return LoadResult(picked, end - start, len(picked))

    def summary(self) -> dict[str, Any]:
        ok = self.of("ok")
        refused = self.of("refused")
        statuses: dict[str, int] = {}
        for s in self.samples:
            key = str(s.status) if s.status is not None else s.outcome
            statuses[key] = statuses.get(key, 0) + 1
        return {
            "duration_s": round(self.duration, 2),
            "offered": self.offered,
            "completed": len(self.samples),
            "throughput_rps": round(len(ok) / self.duration, 1) if self.duration else 0.0,
            "ok": latency_stats([s.latency for s in ok]),
            "refused": {
                **latency_stats([s.latency for s in refused]),
                "without_retry_after": sum(1 for s in refused if not s.retry_after),
            },
            "errors": len(self.of("error")),
            "timeouts": len(self.of("timeout")),
            "connection_errors": len(self.of("conn_error")),
            "statuses": dict(sorted(statuses.items())),
            "error_details": sorted({s.detail for s in self.samples if s.outcome != "ok" and s.detail})[:10],
        }


Request = Callable[[Any, int], Awaitable[Any]]


def make_client(base_url: str, *, timeout: float) -> RawClient:
    """A client whose `timeout` bounds each whole request; no pool limit (a pool wait would look like latency)."""
    check_loopback(base_url)
    return RawClient(base_url, timeout=timeout)


async def measure(client: Any, request: Request, i: int, t0: float) -> Sample:
    """One request through `request(client, i)`, which returns anything with status_code, headers and text."""
    start = time.perf_counter()
    try:
        response = await request(client, i)
    except (TimeoutError, httpx.TimeoutException) as exc:
        return Sample(start - t0, time.perf_counter() - start, None, "timeout", detail=type(exc).__name__)
    except (ConnectionFailed, httpx.TransportError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return Sample(start - t0, time.perf_counter() - start, None, "conn_error", detail=detail)
    latency = time.perf_counter() - start
    outcome = classify(response.status_code)
    detail = "" if outcome == "ok" else f"{response.status_code}: {response.text[:200]}"
    retry_after = "retry-after" in response.headers
    return Sample(start - t0, latency, response.status_code, outcome, retry_after, detail)


async def closed_loop(
    client: Any,
    request: Request,
    *,
    clients: int,
    duration: float,
    max_requests: int = 1_000_000,
    stop: asyncio.Event | None = None,
    t0: float | None = None,
    period: float = 0.0,
) -> LoadResult:
    """`clients` workers, each sending its next request when the previous answer arrives.

    With `period`, a worker starts at most one request every `period` s (a steady trickle, not as fast as it
    can); the pause is outside the measured latency. Ends after `duration` s, `max_requests` requests, or when
    `stop` is set; sample times count from `t0`.
    """
    result = LoadResult()
    started = time.perf_counter()
    origin = started if t0 is None else t0
    stop_at = started + duration
    counter = iter(range(max_requests))

    async def worker() -> None:
        for i in counter:
            if time.perf_counter() >= stop_at or (stop is not None and stop.is_set()):
                return
            begun = time.perf_counter()
            result.samples.append(await measure(client, request, i, origin))
            if period:
                await asyncio.sleep(max(0.0, period - (time.perf_counter() - begun)))

    await asyncio.gather(*(worker() for _ in range(clients)))
    result.duration = time.perf_counter() - started
    result.offered = len(result.samples)
    return result


async def open_loop(
    client: Any,
    request: Request,
    *,
    rate: float,
    duration: float,
    max_in_flight: int = 2000,
    drain_timeout: float = 60.0,
) -> LoadResult:
    """Arrivals every 1/rate s whatever the answers do; bounded by duration, count and in-flight requests."""
    result = LoadResult()
    total = int(rate * duration)
    t0 = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    skipped = 0

    async def one(i: int) -> None:
        result.samples.append(await measure(client, request, i, t0))

    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_in_flight:
            skipped += 1  # a safety bound for the client, reported: it means the server stopped answering
            continue
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=drain_timeout)
    for task in tasks:
        task.cancel()
    result.duration = duration
    result.offered = total
    if skipped:
        result.samples.extend(
            Sample(0.0, 0.0, None, "conn_error", detail="client bound: in flight") for _ in range(skipped)
        )
    return result


class Ticker:
    """Periodic task runner bounded in count and time (probes, samplers)."""

    def __init__(self, period: float, fn: Callable[[], Awaitable[None]], max_ticks: int = 100_000) -> None:
        self.period = period
        self.fn = fn
        self.max_ticks = max_ticks
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        next_at = time.perf_counter()
        for _ in range(self.max_ticks):
            await self.fn()
            next_at += self.period
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
