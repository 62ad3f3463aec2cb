"""Overload: /v1/search capacity at 32 clients, then 3x that rate open-loop; refusals fast, admitted ones on time."""

from __future__ import annotations

import os

import pytest

from ragline_cli.localstack import SERVICES, Stack
from tests.reliability.limitwatch import LimitWatch
from tests.reliability.loadgen import Ticker, closed_loop, latency_stats, make_client, open_loop
from tests.reliability.probes import Prober
from tests.reliability.procstat import cpu_seconds, growth, rss_bytes
from tests.reliability.rawhttp import RawClient, Reply
from tests.reliability.report import busy_host, env_float, record

pytestmark = pytest.mark.reliability

# The issue asks for 30 s at 3x capacity; CI may shorten it (the README says what CI ran).
OPEN_LOOP_SECONDS = env_float("RAGLINE_RELIABILITY_OVERLOAD_SECONDS", 30.0)
CAPACITY_SECONDS = env_float("RAGLINE_RELIABILITY_CAPACITY_SECONDS", 10.0)
CLIENTS = 32
QUERIES = [
    "What is a dpkg trigger?",
    "How are users and groups allocated?",
    "How do I run the zstd tests?",
    "What does procps report as bugs?",
    "How does libsodium encrypt a message?",
    "What is a rootless build?",
    "How does httplib2 cache responses?",
    "How do I load YAML safely?",
]
# Longer than the gateway's 5 s request deadline: a client timeout means the server broke its deadline.
CLIENT_TIMEOUT = 7.0


async def search(client: RawClient, i: int) -> Reply:
    return await client.post("/v1/search", {"query": QUERIES[i % len(QUERIES)], "k": 5})


async def test_overload_refuses_fast_and_keeps_admitted_latency(stack: Stack) -> None:
    pids = {name: stack.procs[name].popen.pid for name in SERVICES}  # type: ignore[union-attr]
    cpu_pids = {**pids, "load_generator": os.getpid()}
    prober = Prober(
        {name: stack.procs[name].url for name in SERVICES}, {name: stack.procs[name].grpc_addr for name in SERVICES}
    )
    async with make_client(stack.api_url, timeout=CLIENT_TIMEOUT) as client:
        await closed_loop(client, search, clients=CLIENTS, duration=3.0)  # warm-up: caches, pools, allocator
        rss_before = {name: rss_bytes(pid) for name, pid in pids.items()}
        cpu0 = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
        capacity_run = await closed_loop(client, search, clients=CLIENTS, duration=CAPACITY_SECONDS)
        cpu1 = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
        capacity = len(capacity_run.of("ok")) / capacity_run.duration
        limits = LimitWatch(stack.api_url)
        async with Ticker(0.1, prober.once), Ticker(0.5, limits.once):
            overload = await open_loop(client, search, rate=3 * capacity, duration=OPEN_LOOP_SECONDS)
        await limits.close()
        rss_after = {name: rss_bytes(pid) for name, pid in pids.items()}
        cpu2 = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
    await prober.close()

    cap, over = capacity_run.summary(), overload.summary()
    cap_p99 = cap["ok"]["p99_ms"]
    rss_growth = growth(rss_before, rss_after)
    probes = prober.log.summary()
    figures = {
        "summary": {
            "capacity_rps": round(capacity, 1),
            "capacity_p99_ms": cap_p99,
            "offered_rps": round(3 * capacity, 1),
            "admitted_rps": over["throughput_rps"],
            "admitted_p99_ms": over["ok"]["p99_ms"],
            "refused": over["refused"]["count"],
            "refused_p99_ms": over["refused"]["p99_ms"],
            "timeouts": over["timeouts"],
            "connection_errors": over["connection_errors"],
            "max_rss_growth": max(rss_growth.values()),
            "probe_p99_ms": probes["all"]["p99_ms"],  # type: ignore[index]
            "admission_limit_min_max": [min(limits.between(0, 1e9), default=0), max(limits.between(0, 1e9), default=0)],
        },
        "admission_limit_during_overload": limits.samples,
        "open_loop_seconds": OPEN_LOOP_SECONDS,
        "capacity_seconds": CAPACITY_SECONDS,
        "capacity_run": cap,
        "overload_run": over,
        # Where the 2 cores went: share of one core per service in each phase (and the test process itself).
        "cpu_share_capacity": {n: round((cpu1[n] - cpu0[n]) / capacity_run.duration, 2) for n in cpu_pids},
        "cpu_share_overload": {n: round((cpu2[n] - cpu1[n]) / overload.duration, 2) for n in cpu_pids},
        "rss_bytes_before": rss_before,
        "rss_bytes_after": rss_after,
        "rss_growth": rss_growth,
        "probes": probes,
    }
    record("overload", figures)

    # Under normal load (the capacity run) nothing is refused and nothing fails.
    assert cap["refused"]["count"] == 0 and cap["errors"] == 0, cap
    assert cap["timeouts"] == 0 and cap["connection_errors"] == 0, cap
    # At 3x: the rest are refused with Retry-After, nothing hangs or drops, and admitted ones stay on time.
    assert over["refused"]["count"] > 0, "3x capacity was offered and nothing was refused"
    assert over["refused"]["without_retry_after"] == 0, over["refused"]
    assert over["errors"] == 0, over["error_details"]
    assert over["timeouts"] == 0 and over["connection_errors"] == 0, over["error_details"]
    assert over["ok"]["p99_ms"] <= 2 * cap_p99, f"admitted p99 {over['ok']['p99_ms']} ms > 2 x {cap_p99} ms"
    assert all(g < 0.10 for g in rss_growth.values()), rss_growth
    assert not prober.log.failures, prober.log.failures
    # The probes kept their schedule (every 100 ms): a prober starved by the load would prove nothing.
    assert latency_stats(prober.log.latencies.get("api/healthz", []))["count"] >= OPEN_LOOP_SECONDS / 0.1 / 2
    # Milliseconds: refusals and probes answer fast. With the host oversubscribed by other work these measure the
    # wait for a core (refusals' p50 stays ~1 ms), so they are reported, not judged, then.
    probe_p99 = probes["all"]["p99_ms"]  # type: ignore[index]
    fast = {"refused p99 <= 50 ms": over["refused"]["p99_ms"] <= 50, "probe p99 <= 50 ms": probe_p99 <= 50}
    missed = [name for name, ok in fast.items() if not ok]
    if missed and busy_host():
        pytest.xfail(
            f"host busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): {missed}: "
            f"refused {over['refused']}, probes p99 {probe_p99} ms"
        )
    assert not missed, (missed, over["refused"], probes["all"])
