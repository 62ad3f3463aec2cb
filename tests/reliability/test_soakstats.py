"""The soak's per-minute arithmetic, on made-up samples with known answers."""

from __future__ import annotations

import pytest

from tests.reliability.procstat import host_cpu_seconds
from tests.reliability.soakstats import Minutes, steal_controlled_fit

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


def test_fit_separates_steal_from_time() -> None:
    steal = [0.03, 0.15, 0.2, 0.02, 0.24, 0.1, 0.02, 0.16, 0.12, 0.09]
    flat = [30 + 280 * s for s in steal]  # p99 moves with steal alone
    fit = steal_controlled_fit(flat, steal)
    assert fit["ms_per_steal_point"] == pytest.approx(2.8, abs=1e-3)
    assert abs(fit["trend"]) < 1e-3
    assert max(abs(r) for r in fit["residuals"]) < 1e-3

    growing = [v + 1.5 * m for m, v in enumerate(flat)]  # plus 1.5 ms a minute: 13.5 ms over the run
    fit = steal_controlled_fit(growing, steal)
    assert fit["ms_per_minute"] == pytest.approx(1.5, abs=1e-3)
    assert fit["trend"] == pytest.approx(13.5 / (30 + 280 * 0.03), abs=1e-3)


def test_host_cpu_seconds_reads_this_host() -> None:
    first = host_cpu_seconds()
    assert 0 <= first["steal"] <= first["total"]
    assert 0 < first["busy"] <= first["total"]
