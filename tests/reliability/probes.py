"""Probe samplers: /healthz, /readyz and grpc.health.v1 Check latency and answers while a test runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.reliability.loadgen import latency_stats

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class ProbeLog:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    def all_latencies(self) -> list[float]:
        return [v for values in self.latencies.values() for v in values]

    def summary(self) -> dict[str, object]:
        return {
            "all": latency_stats(self.all_latencies()),
            **{kind: latency_stats(values) for kind, values in sorted(self.latencies.items())},
            "failures": self.failures[:10],
        }


class Prober:
    """Times /healthz and /readyz of each HTTP base URL and a gRPC health Check of each gRPC address."""

    def __init__(self, http_urls: dict[str, str], grpc_addrs: dict[str, str], *, timeout: float = 2.0) -> None:
        self.http_urls = http_urls
        self.grpc_addrs = grpc_addrs
        self.timeout = timeout
        self.log = ProbeLog()
        # Its own connections: a kubelet does not queue behind the load either.
        self.client = httpx.AsyncClient(timeout=timeout)
        self.channels = {name: grpc.aio.insecure_channel(addr) for name, addr in grpc_addrs.items()}
        self.stubs = {name: health_pb2_grpc.HealthStub(ch) for name, ch in self.channels.items()}

    async def once(self) -> None:
        for name, url in self.http_urls.items():
            for path in ("/healthz", "/readyz"):
                start = time.perf_counter()
                try:
                    reply = await self.client.get(url + path)
                    self.log.add(f"{name}{path}", time.perf_counter() - start)
                    if path == "/healthz" and reply.status_code != 200:
                        self.log.failures.append(f"{name}{path} {reply.status_code}")
                except httpx.HTTPError as exc:
                    self.log.failures.append(f"{name}{path} {type(exc).__name__}")
        for name, stub in self.stubs.items():
            start = time.perf_counter()
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
                self.log.add(f"{name}/grpc.health", time.perf_counter() - start)
            except grpc.aio.AioRpcError as exc:
                self.log.failures.append(f"{name}/grpc.health {exc.code().name}")

    async def close(self) -> None:
        await self.client.aclose()
        for channel in self.channels.values():
            await channel.close()


async def grpc_health(addr: str, service: str = "", timeout: float = 2.0) -> str:
    """The grpc.health.v1 status name of `service` at `addr` (or the error code's name)."""
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
