"""The soak's per-minute arithmetic, on made-up samples with known answers."""

from __future__ import annotations

import pytest

from tests.reliability.procstat import host_cpu_seconds
from tests.reliability.soakstats import Minutes

pytestmark = pytest.mark.unit


def samples(seconds: int, *, api_cores: float, busy_cores: float, steal_share: float) -> list[dict]:
    # Every 10 s, like the soak's sampler: cumulative CPU seconds of one process and of the 2-core host.
    return [
        {
            "t": float(t),
            "cpu": {"api": api_cores * t},
            "host": {"busy": busy_cores * t, "steal": steal_share * 2 * t, "total": 2.0 * t},
        }
        for t in range(0, seconds + 1, 10)
    ]


def test_cpu_per_window_splits_the_host_into_processes_others_and_steal() -> None:
    cpu = Minutes(first=60, length=60, count=3).cpu(samples(240, api_cores=0.5, busy_cores=0.8, steal_share=0.05))
    assert cpu["api"] == [0.5, 0.5, 0.5]
    assert cpu["other"] == [0.3, 0.3, 0.3]
    assert cpu["steal_share"] == [0.05, 0.05, 0.05]


def test_medians_per_window_and_empty_windows() -> None:
    points = [(61.0, 1.0), (62.0, 3.0), (63.0, 2.0), (125.0, 7.0)]
    assert Minutes(first=60, length=60, count=3).medians(points) == [2.0, 7.0, 0.0]


def test_host_cpu_seconds_reads_this_host() -> None:
    first = host_cpu_seconds()
    assert 0 <= first["steal"] <= first["total"]
    assert 0 < first["busy"] <= first["total"]
