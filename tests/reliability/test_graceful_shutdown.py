"""Rolling restart: SIGTERM to one of two api replicas under load; readiness off first, in-flight work finishes."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from ragline_cli.localstack import Stack
from tests.reliability.loadgen import LoadResult, closed_loop
from tests.reliability.rawhttp import RawClient, Reply
from tests.reliability.report import record
from tests.reliability.steady import QUESTIONS

pytestmark = pytest.mark.reliability

PROBE_PERIOD = 0.1  # the balancer's readiness probe (an endpoints controller, much faster than a kubelet)


class RoundRobin:
    """The test's own load balancer: round-robin over the replicas whose /readyz said 200 last time."""

    def __init__(self, urls: dict[str, str], timeout: float) -> None:
        self.urls = urls
        self.clients = {name: RawClient(url, timeout=timeout) for name, url in urls.items()}
        self.ready = set(urls)
        self.turn = 0
        self.served: dict[str, int] = dict.fromkeys(urls, 0)
        self.first_not_ready: dict[str, float] = {}

    async def probe_forever(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=1.0) as client:
            while not stop.is_set():
                for name, url in self.urls.items():
                    try:
                        ok = (await client.get(url + "/readyz")).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        self.ready.add(name)
                    else:
                        self.ready.discard(name)
                        self.first_not_ready.setdefault(name, time.perf_counter())
                await asyncio.sleep(PROBE_PERIOD)

    async def search(self, _: object, i: int) -> Reply:
        names = sorted(self.ready)
        if not names:
            raise AssertionError("no replica is ready")
        self.turn += 1
        name = names[self.turn % len(names)]
        self.served[name] += 1
        return await self.clients[name].post("/v1/search", {"query": QUESTIONS[i % len(QUESTIONS)], "k": 4})

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


async def stream_answer(url: str, started: asyncio.Event) -> dict[str, object]:
    """A streamed /v1/query read to its end: the events it got, and whether it finished with `done`."""
    events: list[str] = []
    body = {"question": QUESTIONS[0], "k": 2, "max_tokens": 48, "stream": True}
    try:
        async with httpx.AsyncClient(timeout=60.0) as client, client.stream("POST", url + "/v1/query", json=body) as r:
            status = r.status_code
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    events.append(line[7:])
                    if line == "event: token":
                        started.set()
    except httpx.HTTPError as exc:
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "events": len(events)}
    finally:
        started.set()
    return {
        "status": status,
        "tokens": events.count("token"),
        "last_event": events[-1] if events else None,
        "errors": events.count("error"),
    }


async def test_sigterm_one_api_replica_under_load_loses_nothing(stack: Stack) -> None:
    replica = stack.start_replica("api", "api-2")
    await asyncio.to_thread(stack.wait_ready, ("api-2",), 120.0)
    lb = RoundRobin({"api": stack.procs["api"].url, "api-2": replica.url}, timeout=7.0)
    stop = asyncio.Event()
    prober = asyncio.create_task(lb.probe_forever(stop))
    t0 = time.perf_counter()
    try:
        load = asyncio.create_task(closed_loop(None, lb.search, clients=6, duration=60.0, stop=stop, t0=t0))
        await asyncio.sleep(2.0)
        # Streams in flight on the replica that is about to stop: they must finish, not be cut.
        started = [asyncio.Event() for _ in range(2)]
        streams = [asyncio.create_task(stream_answer(stack.procs["api"].url, ev)) for ev in started]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in started)), 30.0)
        sigterm_at = time.perf_counter()
        stopping = asyncio.create_task(asyncio.to_thread(stack.stop, "api", 60.0))
        exit_code = await stopping
        exited_at = time.perf_counter()
        stream_results = await asyncio.gather(*streams)
        await asyncio.sleep(1.0)
        stop.set()
        run: LoadResult = await load
    finally:
        stop.set()
        await prober
        await lb.close()
        stack.stop("api-2")
        stack.start("api")
    not_ready_after = lb.first_not_ready.get("api", float("inf")) - sigterm_at
    summary = run.summary()
    figures = {
        "summary": {
            "requests": len(run.samples),
            "failed": len(run.samples) - len(run.of("ok")),
            "served_by": lb.served,
            "seconds_to_not_ready": round(not_ready_after, 3),
            "seconds_to_exit": round(exited_at - sigterm_at, 2),
            "exit_code": exit_code,
            "streams_completed": sum(1 for s in stream_results if s.get("last_event") == "done"),
        },
        "load": summary,
        "streams": stream_results,
    }
    record("graceful_shutdown", figures)
    print(json.dumps(figures["summary"]))

    assert exit_code == 0, stack.tail("api")
    assert not_ready_after < exited_at - sigterm_at, "the replica exited before it reported not-ready"
    assert len(run.of("ok")) == len(run.samples), summary
    assert lb.served["api"] > 0 and lb.served["api-2"] > 0, lb.served
    for result in stream_results:
        assert result["status"] == 200 and result["last_event"] == "done" and result["errors"] == 0, result
