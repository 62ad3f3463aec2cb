"""A service dies (kill -9) under steady load: the supervisor restarts it alone, fast clear 503s meanwhile, nothing
lost."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import grpc
import httpx
import pytest

from ragline.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragline_cli.localstack import SERVICES, Stack
from ragline_cli.supervisor import Supervisor
from tests.reliability.conftest import RELIABILITY_ENV
from tests.reliability.loadgen import LoadResult
from tests.reliability.report import busy_host, record
from tests.reliability.steady import steady_load

pytestmark = pytest.mark.reliability

DEADLINE = float(RELIABILITY_ENV["api"]["API_REQUEST_TIMEOUT_SECONDS"])
# From the kill to a stack that answers a search and a query again: the supervisor's first backoff (1 s) plus
# the victim's cold start (the embedder's is the longest: its ONNX graph from the cache).
RECOVERED_WITHIN = 30.0
# What the api's 503 says while each victim is down (the api itself cannot answer: nothing listens).
NAMED_IN_503 = {"embedder": "embedder", "retriever": "retriever", "generator": "generator"}
# The route that needs the victim.
ROUTE = {"embedder": "search", "retriever": "search", "generator": "query"}


def ready_code(url: str) -> int | str:
    try:
        return httpx.get(url + "/readyz", timeout=1.0).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def clear_503(sample_detail: str) -> bool:
    """The error envelope with a message, no trace and no address (the load generator keeps 200 characters of a
    body, so a long message may be cut: then its envelope's start is what can be checked)."""
    body = sample_detail.partition(": ")[2]
    if "Traceback" in body or "127.0.0.1" in body:
        return False
    try:
        return bool(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return len(body) >= 200 and body.startswith('{"error":{"message":"')


def points(stack: Stack) -> int:
    with grpc.insecure_channel(stack.procs["retriever"].grpc_addr) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        return int(stub.Info(retriever_pb2.InfoRequest(), timeout=10).points)


async def while_down(stack: Stack, victim: str) -> dict[str, Any]:
    """One request on the route that needs the victim, and every other service's readiness, while it is down."""
    out: dict[str, Any] = {"others_ready": {n: ready_code(stack.procs[n].url) for n in SERVICES if n != victim}}
    if victim == "api":
        return out
    body = (
        {"query": "dpkg trigger", "k": 2}
        if ROUTE[victim] == "search"
        else {"question": "dpkg trigger?", "k": 1, "max_tokens": 2}
    )
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=DEADLINE + 1) as client:
        start = time.perf_counter()
        r = await client.post(f"/v1/{ROUTE[victim]}", json=body)
        out["answer"] = {
            "status": r.status_code,
            "ms": round((time.perf_counter() - start) * 1000, 1),
            "retry_after": r.headers.get("retry-after"),
            "message": r.json().get("error", {}).get("message") if r.status_code != 200 else None,
        }
    return out


async def wait_healthy(stack: Stack, timeout: float) -> float:
    """Seconds until every process is ready and a search and a query both succeed end to end."""
    start = time.perf_counter()
    last: list[object] = []
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=DEADLINE + 1) as client:
        while time.perf_counter() - start < timeout:
            codes = [ready_code(stack.procs[name].url) for name in SERVICES]  # not replicas other tests stopped
            if all(c == 200 for c in codes):
                try:
                    s = await client.post("/v1/search", json={"query": "dpkg trigger", "k": 2})
                    q = await client.post("/v1/query", json={"question": "dpkg trigger?", "k": 1, "max_tokens": 2})
                except httpx.HTTPError as exc:
                    last = [type(exc).__name__]
                else:
                    if s.status_code == 200 and q.status_code == 200:
                        return time.perf_counter() - start
                    last = [s.status_code, s.text[:200], q.status_code, q.text[:200]]
            await asyncio.sleep(0.1)
    codes = [ready_code(stack.procs[name].url) for name in SERVICES]  # not replicas other tests stopped
    raise AssertionError(f"stack not healthy {timeout:.0f}s after the kill: {codes}, last answers {last}")


@pytest.mark.parametrize("victim", ["embedder", "generator", "retriever", "api"])
async def test_kill_9_under_load_is_restarted_alone_and_nothing_is_lost(stack: Stack, victim: str) -> None:
    others = {name: stack.procs[name].popen.pid for name in SERVICES if name != victim}  # type: ignore[union-attr]
    points_before = points(stack)
    said: list[str] = []
    supervisor = Supervisor(stack, SERVICES, say=said.append)
    with supervisor.running():
        async with steady_load(stack.api_url, timeout=DEADLINE + 2.0, max_seconds=150.0) as steady:
            await asyncio.sleep(2.0)
            killed_at = steady.now()
            stack.kill(victim)
            down = await while_down(stack, victim)
            healthy_after = await wait_healthy(stack, RECOVERED_WITHIN + 60.0)  # past the target: report it
            recovered_at = steady.now()
            await asyncio.sleep(2.0)
            end = steady.now()
    points_after = points(stack)

    every = steady.all()
    before = LoadResult([x for x in every.samples if x.start + x.latency < killed_at])
    outage = LoadResult([x for x in every.samples if x.start < recovered_at and x.start + x.latency >= killed_at])
    after = every.window(recovered_at + 0.5, end)
    late = [s for s in every.samples if s.latency > DEADLINE + 0.1]
    # With the api itself down nothing listens on its port: refused connections are the honest answer then.
    allowed = {"conn_error"} if victim == "api" else set()
    unclear = [
        s
        for s in outage.samples
        if s.outcome != "ok" and s.outcome not in allowed and not (s.status == 503 and clear_503(s.detail))
    ]
    restarted = {n: c for n, c in supervisor.restarted.items() if c}
    figures = {
        "summary": {
            "victim": victim,
            "requests": len(every.samples),
            "failed_during_outage": len(outage.samples) - len(outage.of("ok")),
            "max_latency_ms": round(max((s.latency for s in every.samples), default=0) * 1000, 1),
            "late": len(late),
            "unclear_failures": len(unclear),
            "seconds_from_kill_to_healthy": round(healthy_after, 2),
            "restarted_by_supervisor": restarted,
            "others_restarted": [n for n, pid in others.items() if stack.procs[n].popen.pid != pid],  # type: ignore[union-attr]
            "points_before_after": [points_before, points_after],
        },
        "deadline_s": DEADLINE,
        "while_down": down,
        "supervisor_said": said,
        "before": before.summary(),
        "outage": outage.summary(),
        "after_recovery": after.summary(),
        "timeline_s": {"killed": round(killed_at, 2), "healthy": round(recovered_at, 2)},
    }
    record(f"downstream_dies[{victim}]", figures)

    # The supervisor restarted the victim once, by itself, and nothing else; it said so.
    assert restarted == {victim: 1}, (restarted, said)
    assert any(line.startswith(f"{victim} exited unexpectedly") for line in said), said
    assert all(stack.procs[n].popen.pid == pid for n, pid in others.items()), "another service restarted"  # type: ignore[union-attr]
    # While it was down the rest of the stack stayed ready (readiness does not cascade), and the route that needs
    # the victim answered a fast 503 with Retry-After naming it.
    assert len(outage.of("ok")) < len(outage.samples), "nothing failed while a service was dead: was it killed?"
    assert all(code == 200 for code in down["others_ready"].values()), down
    if victim != "api":
        answer = down["answer"]
        if answer["status"] != 200:  # it may already be back on a fast machine
            assert answer["status"] == 503 and answer["retry_after"], answer
            assert NAMED_IN_503[victim] in answer["message"], answer
            assert answer["ms"] <= 1000, answer
    # No document was lost.
    assert points_after == points_before
    # Timing: back within 30 s, every answer in time, failures only as clear 503s, everything fine afterwards.
    timing = {
        "healthy within 30 s": healthy_after <= RECOVERED_WITHIN,
        "no late answer": not late,
        "no unclear failure": not unclear,
        "all ok before": before.summary()["errors"] == 0 and len(before.of("ok")) == len(before.samples),
        "all ok after": bool(after.samples) and len(after.of("ok")) == len(after.samples),
    }
    missed = [name for name, ok in timing.items() if not ok]
    details = {
        "healthy_after_s": round(healthy_after, 1),
        "late": [(round(s.latency, 2), s.status) for s in late[:3]],
        "unclear": [s.detail[:120] for s in unclear[:3]],
        "after": after.summary()["statuses"],
    }
    if missed and busy_host():
        # As the soak does for its p99: timing is judged on a host that is not oversubscribed by other work.
        pytest.xfail(f"host busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): {missed} {details}")
    assert not missed, (missed, details)
