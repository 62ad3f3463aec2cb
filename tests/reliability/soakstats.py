"""Per-minute figures for the soak: medians, CPU per process and the host's steal, and p99 against steal and time."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def steal_controlled_fit(p99: list[float], steal: list[float]) -> dict[str, Any]:
    """Least squares p99 = base + per_steal * steal + per_minute * minute: what each minute's p99 owes to the
    hypervisor and what it owes to time. `trend` is per_minute over the whole run as a fraction of the fitted
    first minute: a stack that slows down as it runs shows there even while steal moves p99 more."""
    y = np.array(p99, dtype=float)
    x = np.column_stack([np.ones(len(y)), np.array(steal, dtype=float), np.arange(len(y), dtype=float)])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    base, per_steal, per_minute = (float(c) for c in coef)
    fitted = x @ coef
    first = float(fitted[0])
    return {
        "base_ms": round(base, 2),
        "ms_per_steal_point": round(per_steal / 100, 3),  # per percentage point of the host's time
        "ms_per_minute": round(per_minute, 3),
        "trend": round(per_minute * (len(y) - 1) / first, 3) if first > 0 else 0.0,
        "residuals": [round(float(v), 3) for v in y / fitted - 1],
    }
