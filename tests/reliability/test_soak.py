"""Soak: 10 minutes of steady mixed load (search, query, ingest); memory, file descriptors and p99 stay flat."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any

import pytest

from ragline_cli.localstack import SERVICES, Stack
from tests.reliability.loadgen import LoadResult, closed_loop, make_client
from tests.reliability.procstat import cpu_seconds, growth, host_cpu_seconds, open_fds, rss_bytes
from tests.reliability.rawhttp import RawClient, Reply
from tests.reliability.report import env_float, record
from tests.reliability.soakstats import Minutes
from tests.reliability.steady import SEARCH_PERIOD, search, short_query

STAGE = re.compile(r"(\w+);dur=([\d.]+)")

pytestmark = pytest.mark.reliability

SOAK_SECONDS = env_float("RAGLINE_SOAK_SECONDS", 600.0)
MINUTE = min(60.0, SOAK_SECONDS / 5)  # the unit of comparison; shorter only when the soak is shortened
# The same load runs one minute before the measured ten (not counted, failures apart): the first measured minute,
# the p99 reference, is then steady state, not a process that just started (the minute after start measured
# 64 ms at p99 where the next nine measured 33-50 ms).
WARMUP_SECONDS = MINUTE
MEMORY_WARMUP = 2 * MINUTE
FD_SLACK = 10  # pools open and close connections; a leak per request would add hundreds in 10 minutes
# This host is a VM on a shared machine, and per-minute p99 follows what its hypervisor does, not ragline:
# - steal (/proc/stat): 0.2-24 % of the host's time per minute under this load; one run's minutes at 2 % and
#   24 % measured p99 37.8 and 103 ms, with every service's CPU flat within 10 %;
# - a change that steal does not show: the last two minutes of another run, steal under 0.4 %, every process
#   (the load generator too) used 30 % less CPU for the same work while every stage, the in-process store
#   search included, took 50 % longer. The load generator does the same work every minute, whatever ragline
#   does, so its CPU moves only when the host does.
# A minute is judged only when the host left it alone: steal at most QUIET_STEAL of its time, at most
# QUIET_OTHER cores used by processes outside the test, and the load generator's cores within QUIET_LOADGEN of
# its median over the soak. Every minute is still recorded, judged or not.
QUIET_STEAL = 0.02
QUIET_OTHER = 0.1
QUIET_LOADGEN = 0.10


# Steady means every minute offers the same work: searches at a fixed rate (not as fast as the stack can
# answer, which would let the offered load swing with the latency), one short answer a second, one ingest
# every two seconds whose sizes repeat every minute. Saturation is test_overload's subject, not this one's.
SEARCH_CLIENTS = 4
INGEST_PERIOD = 2.0
# One short answer every 4 s, not every second: an answer costs the generator 1.1-1.7 core-seconds on this
# machine under the search load (2 threads), so one a second is more than it can give: the closed loop falls
# behind and the answers a minute completes vary with the generator's speed (37-46 a minute in one run), not the
# same work every minute. At one every 4 s the whole load takes about 1.1 of the 2 cores, which leaves room for
# what the hypervisor takes back (steal: 6-20 % of the host's time per minute under load in one run) instead of
# turning it into queueing; saturation is test_overload's subject.
QUERY_PERIOD = 4.0
INGEST_CYCLE = int(60 / INGEST_PERIOD)  # 30 ingests: one minute


def median_rss(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, int]:
    # A shortened soak (RAGLINE_SOAK_SECONDS) can leave a window without a sample: take the one nearest its start.
    window = [s["rss"] for s in samples if start <= s["t"] < end] or [
        min(samples, key=lambda s: abs(s["t"] - start))["rss"]
    ]
    return {name: int(statistics.median(w[name] for w in window)) for name in window[0]}


async def ingest(client: RawClient, i: int) -> Reply:
    # 30 ids over and over, with new text each time: real re-chunking, re-embedding and orphan cleanup.
    n = i % INGEST_CYCLE
    body = {"documents": [{"id": f"soak-{n}", "text": f"Soak document {i}. " + "Steady load text. " * (20 + n)}]}
    return await client.post("/v1/documents", body)


def host_reference_ms() -> float:
    """CPU milliseconds for a fixed piece of work (sha256 of 8 MiB): how fast this host runs right now, measured in
    the same run as the stack. Thread CPU time, not wall time, so waiting for a core does not count; on a thread
    (hashlib releases the GIL), so the load's loop never waits for it."""
    data = b"\x5a" * (1 << 20)
    started = time.thread_time()
    for _ in range(8):
        hashlib.sha256(data).digest()
    return (time.thread_time() - started) * 1000


@pytest.mark.timeout(int(WARMUP_SECONDS + SOAK_SECONDS) + 300)
async def test_soak_mixed_load_stays_flat(stack: Stack) -> None:
    pids = {name: stack.procs[name].popen.pid for name in SERVICES}  # type: ignore[union-attr]
    samples: list[dict[str, Any]] = []
    stages: list[tuple[float, dict[str, float]]] = []  # (seconds since t0, Server-Timing of one search)
    host: list[tuple[float, float]] = []
    stop = asyncio.Event()
    t0 = time.perf_counter()

    async def timed_search(client: RawClient, i: int) -> Reply:
        reply = await search(client, i)
        if reply.status_code == 200:
            stages.append(
                (
                    time.perf_counter() - t0,
                    {k: float(v) for k, v in STAGE.findall(reply.headers.get("server-timing", ""))},
                )
            )
        return reply

    async def sample_forever(cpu_pids: dict[str, int]) -> None:
        while not stop.is_set():
            samples.append(
                {
                    "t": round(time.perf_counter() - t0, 1),
                    "rss": {n: rss_bytes(p) for n, p in pids.items()},
                    "fds": {n: open_fds(p) for n, p in pids.items()},
                    "cpu": {n: cpu_seconds(p) for n, p in cpu_pids.items()},
                    "host": host_cpu_seconds(),
                }
            )
            host.append((time.perf_counter() - t0, await asyncio.to_thread(host_reference_ms)))
            await asyncio.sleep(10.0)

    total = WARMUP_SECONDS + SOAK_SECONDS
    # The host's wake-up latency beside the load, in its own process (stopped by its PID below).
    probe = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.wakeprobe", "--seconds", str(total + 30)],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids_cpu = {**pids, "loadgen": os.getpid(), "wakeprobe": probe.pid}
    sampler = asyncio.create_task(sample_forever(pids_cpu))
    try:
        async with make_client(stack.api_url, timeout=7.0) as c1, make_client(stack.api_url, timeout=7.0) as c2:
            async with make_client(stack.api_url, timeout=7.0) as c3:
                runs = await asyncio.gather(
                    closed_loop(c1, timed_search, clients=SEARCH_CLIENTS, duration=total, t0=t0, period=SEARCH_PERIOD),
                    closed_loop(c2, short_query, clients=1, duration=total, t0=t0, period=QUERY_PERIOD),
                    closed_loop(c3, ingest, clients=1, duration=total, t0=t0, period=INGEST_PERIOD),
                )
    finally:
        stop.set()
        await sampler
        probe.terminate()
        try:
            wake_lines, _ = probe.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            probe.kill()
            wake_lines, _ = probe.communicate()
    wake = [json.loads(line) for line in wake_lines.splitlines() if line.startswith("{")]
    searches, queries, ingests = runs
    everything = LoadResult([s for r in runs for s in r.samples], total)  # warm-up included: nothing may fail

    minutes = int(SOAK_SECONDS // MINUTE)
    windows = Minutes(first=WARMUP_SECONDS, length=MINUTE, count=minutes)
    per_minute = [
        searches.window(WARMUP_SECONDS + m * MINUTE, WARMUP_SECONDS + (m + 1) * MINUTE).summary()["ok"]
        for m in range(minutes)
    ]
    p99 = [m["p99_ms"] for m in per_minute]
    # Memory: the embedder's allocator swings ±30 MB with the shapes of the batches it has just run, so one
    # sample against another measures the swing, not a leak. Compare the median of a minute right after
    # warm-up (two minutes: every ingest size of the cycle seen twice) with the median of the last minute.
    warm_rss = median_rss(samples, MEMORY_WARMUP, MEMORY_WARMUP + MINUTE)
    last_rss = median_rss(samples, total - MINUTE, total + MINUTE)
    rss_growth = growth(warm_rss, last_rss)
    warm = next(s for s in samples if s["t"] >= WARMUP_SECONDS)  # caches and pools are warm
    last = samples[-1]
    fd_change = {n: last["fds"][n] - warm["fds"][n] for n in pids}
    p99_drift = [round(v / p99[0] - 1, 3) for v in p99[1:]] if p99 and p99[0] else []
    cores = windows.cpu(samples)
    loadgen = statistics.median([c for c in cores["loadgen"] if c > 0] or [0.0])
    quiet = [
        m
        for m in range(minutes)
        if cores["loadgen"][m] > 0  # 0: no sample in a (shortened) minute, nothing known
        and cores["steal_share"][m] <= QUIET_STEAL
        and cores["other"][m] <= QUIET_OTHER
        and abs(cores["loadgen"][m] - loadgen) <= QUIET_LOADGEN * loadgen
    ]
    # The reference is the first measured minute, or the first quiet one after it when the host was busy then.
    judged = {m: round(p99[m] / p99[quiet[0]] - 1, 3) for m in quiet[1:]} if quiet and p99[quiet[0]] else {}
    figures = {
        "summary": {
            "seconds": SOAK_SECONDS,
            "warmup_seconds": WARMUP_SECONDS,
            "requests": len(everything.samples),
            "offered_per_second": {
                "search": SEARCH_CLIENTS / SEARCH_PERIOD,
                "query": 1 / QUERY_PERIOD,
                "ingest": 1 / INGEST_PERIOD,
            },
            "failed": len(everything.samples) - len(everything.of("ok")),
            "search_p99_ms_per_minute": p99,
            # Beside p99: a host that slows down moves the median too; a tail that grows moves p99 alone.
            "search_p50_ms_per_minute": [m["p50_ms"] for m in per_minute],
            "search_p95_ms_per_minute": [m["p95_ms"] for m in per_minute],
            # Where a shift comes from: each stage's median per minute, as the api's Server-Timing reports it
            # (embed and store search as the retriever saw them, the whole retriever call as the api saw it),
            # and the host's own speed on a fixed piece of work, sampled every 10 s.
            "stage_p50_ms_per_minute": {
                name: windows.medians([(t, st[name]) for t, st in stages if name in st])
                for name in ("embed", "search", "retriever")
            },
            "host_reference_ms_per_minute": windows.medians(host),
            "cpu_cores_per_minute": cores,
            # How late the host woke a process sleeping 2 ms (overshoot, µs; median of the 10-s windows' p99):
            # a hypervisor slow to run a halted vCPU shows here and not in steal.
            "host_wakeup_p99_us_per_minute": windows.medians([(w["t"] - t0, w["p99_us"]) for w in wake]),
            "query_completed_per_minute": [
                queries.window(WARMUP_SECONDS + m * MINUTE, WARMUP_SECONDS + (m + 1) * MINUTE).summary()["ok"]["count"]
                for m in range(minutes)
            ],
            "max_p99_drift": max((abs(d) for d in p99_drift), default=0.0),
            # The bound's verdict: p99 drift of each quiet minute (index from 0) against the first quiet one.
            "p99_reference_minute": quiet[0] if quiet else None,
            "p99_drift_quiet_minutes": judged,
            "max_p99_drift_quiet": max((abs(d) for d in judged.values()), default=0.0),
            "max_rss_growth": max(rss_growth.values()),
            "fd_change": fd_change,
        },
        "search": searches.summary(),
        "query": queries.summary(),
        "ingest": ingests.summary(),
        "rss_growth": rss_growth,
        "rss_median_bytes": {"after_warm_up": warm_rss, "last_minute": last_rss},
        "samples": [{k: s[k] for k in ("t", "rss", "fds")} for s in samples],  # cpu: per minute above
    }
    record("soak", figures)

    assert len(everything.of("ok")) == len(everything.samples), everything.summary()["error_details"]
    assert all(g <= 0.05 for g in rss_growth.values()), rss_growth
    assert all(abs(c) <= FD_SLACK for c in fd_change.values()), fd_change
    if len(quiet) < minutes / 2:
        pytest.skip(
            f"p99 not judged: only {len(quiet)} of {minutes} minutes had a quiet host "
            f"(steal share per minute {cores['steal_share']}, other processes' cores {cores['other']}, the load "
            f"generator's {cores['loadgen']}; limits {QUIET_STEAL}, {QUIET_OTHER}, ±{QUIET_LOADGEN:.0%} of its "
            "median); memory, fds and failures passed. Figures: report.json 'soak'"
        )
    assert all(abs(d) <= 0.20 for d in judged.values()), {"p99_ms_per_minute": p99, "quiet_minutes_drift": judged}
