"""Steady background load on the gateway (search and a short query) while a test breaks something."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tests.reliability.loadgen import LoadResult, closed_loop, make_client
from tests.reliability.rawhttp import RawClient, Reply

QUESTIONS = ["What is a dpkg trigger?", "How are users and groups allocated?", "What is a rootless build?"]


async def search(client: RawClient, i: int) -> Reply:
    return await client.post("/v1/search", {"query": QUESTIONS[i % len(QUESTIONS)], "k": 4})


async def short_query(client: RawClient, i: int) -> Reply:
    return await client.post("/v1/query", {"question": QUESTIONS[i % len(QUESTIONS)], "k": 1, "max_tokens": 4})


# Steady, not saturating: a fault test measures the fault, not a machine already at its limit (test_overload does).
SEARCH_PERIOD = 0.1  # 10 searches a second per client
QUERY_PERIOD = 1.0


@dataclass
class Steady:
    searches: LoadResult
    queries: LoadResult
    t0: float

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def all(self) -> LoadResult:
        return LoadResult([*self.searches.samples, *self.queries.samples])


@contextlib.asynccontextmanager
async def steady_load(
    base_url: str, *, search_clients: int = 3, query_clients: int = 1, timeout: float, max_seconds: float = 120.0
) -> AsyncIterator[Steady]:
    """Paced load until the block ends (bounded by `max_seconds` too); results are complete after it."""
    stop = asyncio.Event()
    t0 = time.perf_counter()
    steady = Steady(LoadResult(), LoadResult(), t0)
    async with make_client(base_url, timeout=timeout) as c1, make_client(base_url, timeout=timeout) as c2:
        tasks = []
        if search_clients:
            tasks.append(
                closed_loop(
                    c1, search, clients=search_clients, duration=max_seconds, stop=stop, t0=t0, period=SEARCH_PERIOD
                )
            )
        if query_clients:
            tasks.append(
                closed_loop(
                    c2, short_query, clients=query_clients, duration=max_seconds, stop=stop, t0=t0, period=QUERY_PERIOD
                )
            )
        running = asyncio.gather(*tasks)
        try:
            yield steady
        finally:
            stop.set()
            results = await running
            if search_clients:
                steady.searches = results[0]
            if query_clients:
                steady.queries = results[-1]
