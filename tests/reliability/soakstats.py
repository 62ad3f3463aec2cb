"""Per-minute figures for the soak: medians, and the cores each process and the host's hypervisor took."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Sample = dict[str, Any]  # {"t": seconds since start, "cpu": {name: cumulative CPU s}, "host": host_cpu_seconds()}


@dataclass(frozen=True)
class Minutes:
    """`count` windows of `length` seconds, the first starting `first` seconds after the load started."""

    first: float
    length: float
    count: int

    def bounds(self) -> list[tuple[float, float]]:
        return [(self.first + m * self.length, self.first + (m + 1) * self.length) for m in range(self.count)]

    def medians(self, points: list[tuple[float, float]]) -> list[float]:
        """Median of the values whose time falls in each window (0.0 for a window without any)."""
        out = []
        for start, end in self.bounds():
            window = [v for t, v in points if start <= t < end]
            out.append(round(statistics.median(window), 2) if window else 0.0)
        return out

    def rates(self, samples: list[Sample], value: Callable[[Sample], float]) -> list[float]:
        """How fast a cumulative figure grew per second in each window, between the samples nearest its edges
        (for CPU seconds: cores)."""
        out = []
        for start, end in self.bounds():
            a = min(samples, key=lambda s: abs(s["t"] - start))
            b = min(samples, key=lambda s: abs(s["t"] - end))
            out.append(round((value(b) - value(a)) / (b["t"] - a["t"]), 3) if b["t"] > a["t"] else 0.0)
        return out

    def cpu(self, samples: list[Sample]) -> dict[str, list[float]]:
        """Cores used in each window by every process in the samples' `cpu`, by everything else on the host
        (`other`), and the share of the host's time its hypervisor gave to other machines (`steal_share`)."""
        names = list(samples[0]["cpu"])
        out = {n: self.rates(samples, _cpu_of(n)) for n in names}
        busy = self.rates(samples, lambda s: s["host"]["busy"])
        out["other"] = [round(max(0.0, b - sum(out[n][m] for n in names)), 3) for m, b in enumerate(busy)]
        steal = self.rates(samples, lambda s: s["host"]["steal"])
        total = self.rates(samples, lambda s: s["host"]["total"])
        out["steal_share"] = [round(st / t, 4) if t else 0.0 for st, t in zip(steal, total, strict=True)]
        return out


def _cpu_of(name: str) -> Callable[[Sample], float]:
    return lambda s: float(s["cpu"][name])
