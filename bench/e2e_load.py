"""Closed-loop HTTP load on 127.0.0.1, and per-hop time from the services' own Prometheus histograms."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Run:
    """One closed-loop run: successful latencies (s) and errors counted apart, never mixed."""

    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0
    server_timing: collections.defaultdict[str, float] = field(default_factory=lambda: collections.defaultdict(float))

    def merge(self, other: Run) -> None:
        self.latencies += other.latencies
        self.errors.update(other.errors)
        self.seconds += other.seconds
        for name, value in other.server_timing.items():
            self.server_timing[name] += value

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1000
        ok = len(lat)
        out: dict[str, Any] = {
            "requests": ok,
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "seconds": round(self.seconds, 3),
            "rps": round(ok / self.seconds, 3) if self.seconds > 0 else 0.0,
        }
        if ok:
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            out.update(
                mean_ms=round(float(lat.mean()), 3),
                p50_ms=round(float(p50), 3),
                p95_ms=round(float(p95), 3),
                p99_ms=round(float(p99), 3),
                max_ms=round(float(lat.max()), 3),
                server_timing_ms={k: round(v / ok, 3) for k, v in sorted(self.server_timing.items())},
            )
        return out


def _loopback_only(url: str) -> None:
    host = urlsplit(url).hostname
    if host != "127.0.0.1":
        raise ValueError(f"the load generator targets 127.0.0.1 only, got {url!r}")


def _parse_server_timing(value: str, into: dict[str, float]) -> None:
    for part in value.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name and rest:
            try:
                into[name] += float(rest)
            except ValueError:
                pass


async def closed_loop(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    *,
    clients: int,
    max_requests: int,
    max_seconds: float,
) -> Run:
    """`clients` workers, each sending its next request when the previous answer is read; stops issuing at
    `max_requests` or `max_seconds`, whichever comes first, and waits for the requests in flight."""
    _loopback_only(url)
    run = Run()
    issued = 0
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    stop_at = start + max_seconds

    async def worker(index: int) -> None:
        nonlocal issued
        n = 0
        while issued < max_requests and time.perf_counter() < stop_at:
            issued += 1
            body = bodies[(index + n * clients) % len(bodies)]  # all clients together walk the list in order
            n += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    elapsed = time.perf_counter() - t0
                    if resp.status != 200:
                        run.errors[f"http_{resp.status}"] += 1
                        continue
                    run.latencies.append(elapsed)
                    for value in resp.headers.getall("server-timing", ()):
                        _parse_server_timing(value, run.server_timing)
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.errors[type(exc).__name__] += 1

    await asyncio.gather(*(worker(i) for i in range(clients)))
    run.seconds = time.perf_counter() - start
    return run


# ---- metrics -------------------------------------------------------------------------------------------------


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time each process (all its threads) has used so far, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime: fields 14 and 15 of stat(5)
    return out


def cpu_ms_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    if not requests:
        return {}
    per = {name: round((after[name] - before[name]) / requests * 1000, 3) for name in after if name in before}
    per["total"] = round(sum(per.values()), 3)
    return per


async def scrape(session: aiohttp.ClientSession, urls: Iterable[str]) -> Samples:
    """Every sample of every /metrics page, keyed by (sample name, labels)."""
    out: Samples = {}
    for url in urls:
        _loopback_only(url)
        async with session.get(url + "/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                out[key] = out.get(key, 0.0) + s.value
    return out


def hist(before: Samples, after: Samples, name: str, **labels: str) -> tuple[float, float]:
    """(sum, count) added to histogram `name` between two scrapes, over every series matching `labels`."""
    want = set(labels.items())
    total = {"_sum": 0.0, "_count": 0.0}
    for suffix in total:
        for (sample, lbls), value in after.items():
            if sample == name + suffix and want <= lbls:
                total[suffix] += value - before.get((sample, lbls), 0.0)
    return total["_sum"], total["_count"]


def mean_ms(before: Samples, after: Samples, name: str, **labels: str) -> float | None:
    s, c = hist(before, after, name, **labels)
    return round(s / c * 1000, 3) if c > 0 else None


def breakdown(before: Samples, after: Samples, route: str, split: bool) -> dict[str, Any]:
    """Mean time per request at each hop (ms). `split`: the four-service stack, whose gRPC servers and
    clients also report, so that the cost of each hop (client view minus server view) shows."""
    method = f"POST {route}"
    b: dict[str, Any] = {
        "api_http": mean_ms(
            before, after, "ragline_request_duration_seconds", service="api", transport="http", method=method
        ),
        "retriever_embed_call": mean_ms(before, after, "ragline_retriever_embed_seconds", purpose="query"),
        "embedder_queue": mean_ms(before, after, "ragline_embedder_queue_seconds"),
        "embedder_inference_per_batch": mean_ms(before, after, "ragline_embedder_inference_seconds"),
        "qdrant_search": mean_ms(before, after, "ragline_retriever_search_seconds"),
    }
    s, c = hist(before, after, "ragline_embedder_batch_size")
    b["embedder_batch_size"] = round(s / c, 2) if c else None
    if route == "/v1/query":
        b["generator_ttft"] = mean_ms(before, after, "ragline_generator_time_to_first_token_seconds")
        b["generator_queue"] = mean_ms(before, after, "ragline_generator_queue_seconds")
    if split:
        rpc = "ragline_request_duration_seconds"
        b["api_to_retriever_call"] = mean_ms(
            before, after, "ragline_api_downstream_duration_seconds", downstream="retriever", method="Search"
        )
        b["retriever_grpc"] = mean_ms(before, after, rpc, service="retriever", transport="grpc", method="Search")
        b["embedder_grpc"] = mean_ms(before, after, rpc, service="embedder", transport="grpc", method="Embed")
        if route == "/v1/query":
            b["api_to_generator_call"] = mean_ms(
                before, after, "ragline_api_downstream_duration_seconds", downstream="generator", method="Generate"
            )
            b["generator_grpc"] = mean_ms(before, after, rpc, service="generator", transport="grpc", method="Generate")

        def diff(a: str, *minus: str) -> float | None:
            vals: list[float] = [b[key] for key in (a, *minus) if b.get(key) is not None]
            if len(vals) != 1 + len(minus):
                return None
            return round(vals[0] - sum(vals[1:]), 3)

        # Concurrent queries share Embed RPCs in the retriever: how many rode in each one.
        _, queries = hist(before, after, "ragline_retriever_embed_seconds", purpose="query")
        _, rpcs = hist(before, after, rpc, service="embedder", transport="grpc", method="Embed")
        if queries and rpcs:
            b["queries_per_embed_rpc"] = round(queries / rpcs, 2)
        b["hop_api_to_retriever"] = diff("api_to_retriever_call", "retriever_grpc")
        # Per query: the wait for a shared RPC and the hop, the caller's view minus the embedder's per RPC.
        b["hop_retriever_to_embedder"] = diff("retriever_embed_call", "embedder_grpc")
        if route == "/v1/query":
            b["hop_api_to_generator"] = diff("api_to_generator_call", "generator_grpc")
            b["api_own"] = diff("api_http", "api_to_retriever_call", "api_to_generator_call")
        else:
            b["api_own"] = diff("api_http", "api_to_retriever_call")
        b["retriever_own"] = diff("retriever_grpc", "retriever_embed_call", "qdrant_search")
    return {k: v for k, v in b.items() if v is not None}


# ---- one system under test ---------------------------------------------------------------------------------


@dataclass
class System:
    """One system under test and what its measured rounds of the current case have added up to."""

    base: str
    metric_urls: list[str]
    pids: dict[str, int]
    run: Run = field(default_factory=Run)
    samples: Samples = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.run, self.samples, self.cpu = Run(), {}, {}


async def measure_round(
    session: aiohttp.ClientSession,
    system: System,
    url_path: str,
    payloads: list[bytes],
    *,
    clients: int,
    max_requests: int,
    max_seconds: float,
) -> None:
    """One measured slice; its requests, CPU time and histogram deltas add to the system's totals."""
    before = await scrape(session, system.metric_urls)
    cpu_before = cpu_seconds(system.pids)
    run = await closed_loop(
        session,
        system.base + url_path,
        payloads,
        clients=clients,
        max_requests=max_requests,
        max_seconds=max_seconds,
    )
    cpu_after = cpu_seconds(system.pids)
    after = await scrape(session, system.metric_urls)
    system.run.merge(run)
    for key, value in after.items():
        system.samples[key] = system.samples.get(key, 0.0) + value - before.get(key, 0.0)
    for name, used in cpu_after.items():
        system.cpu[name] = system.cpu.get(name, 0.0) + used - cpu_before.get(name, used)


def summary(system: System, route: str) -> dict[str, Any]:
    return {
        **system.run.summary(),
        "cpu_ms_per_request": cpu_ms_per_request(dict.fromkeys(system.cpu, 0.0), system.cpu, len(system.run.latencies)),
        "breakdown_ms": breakdown({}, system.samples, route, split=len(system.metric_urls) > 1),
    }
