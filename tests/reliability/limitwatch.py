"""Samples the api's adaptive admission limit (ragline_api_admission_limit on /metrics) while a test runs."""

from __future__ import annotations

import time

import httpx

METRIC = "ragline_api_admission_limit"


def parse_limit(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(METRIC + " "):
            return float(line.split()[1])
    return None


class LimitWatch:
    """`once()` appends (seconds since `t0`, limit); give it to a Ticker."""

    def __init__(self, api_url: str, t0: float | None = None) -> None:
        self.client = httpx.AsyncClient(base_url=api_url, timeout=2.0)
        self.t0 = time.perf_counter() if t0 is None else t0
        self.samples: list[tuple[float, float]] = []

    async def once(self) -> None:
        try:
            reply = await self.client.get("/metrics")
        except httpx.HTTPError:
            return
        value = parse_limit(reply.text)
        if value is not None:
            self.samples.append((round(time.perf_counter() - self.t0, 2), value))

    def between(self, start: float, end: float) -> list[float]:
        return [v for t, v in self.samples if start <= t < end]

    async def close(self) -> None:
        await self.client.aclose()
