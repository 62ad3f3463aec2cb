"""The adaptive admission limit under 3x overload when the host's capacity halves mid-run (other processes take
the cores): it comes down and settles within a stated time, and admitted latency comes back."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import pytest

from ragline_cli.localstack import Stack
from tests.reliability.limitwatch import LimitWatch
from tests.reliability.loadgen import LoadResult, Ticker, closed_loop, make_client, open_loop
from tests.reliability.report import env_float, record
from tests.reliability.test_overload import CLIENT_TIMEOUT, search

pytestmark = pytest.mark.reliability

RUN_SECONDS = env_float("RAGLINE_RELIABILITY_CONVERGE_SECONDS", 30.0)
HALVED_AT = RUN_SECONDS / 3
# The stated bound: the limit is within ±25 % (±2) of where it ends up at most this long after the cores went.
SETTLES_WITHIN = 15.0
# On 2 cores the limit under overload sits at the default floor (16, above this host's knee), where it cannot
# show movement; this replica lets it go down to 2, everything else default.
REPLICA_ENV = {"API_MIN_CONCURRENCY": "2"}
BURNERS = 2  # one busy process per core: the pipeline keeps about half of the machine


def settle_time(samples: list[tuple[float, float]], start: float, final: float) -> float | None:
    """Seconds after `start` from which every sample stays within ±25 % of `final`, or ±2 for a small limit that
    moves in whole requests (None: never)."""
    band = max(0.25 * final, 2.0)
    after = [(t, v) for t, v in samples if t >= start]
    for i, (t, _) in enumerate(after):
        if all(abs(v - final) <= band for _, v in after[i:]):
            return t - start
    return None


async def test_limit_settles_after_capacity_halves(stack: Stack) -> None:
    stack.extra_env["api-adaptive"] = dict(REPLICA_ENV)
    replica = stack.start_replica("api", "api-adaptive")
    burners: list[subprocess.Popen[bytes]] = []
    try:
        stack.wait_ready(("api-adaptive",), timeout=60)
        async with make_client(replica.url, timeout=CLIENT_TIMEOUT) as client:
            await closed_loop(client, search, clients=8, duration=3.0)  # warm-up, and a baseline probe
            capacity_run = await closed_loop(client, search, clients=32, duration=5.0)
            capacity = len(capacity_run.of("ok")) / capacity_run.duration
            watch = LimitWatch(replica.url)

            async def take_the_cores() -> None:
                if not burners and time.perf_counter() - watch.t0 >= HALVED_AT:
                    for _ in range(BURNERS):
                        burners.append(
                            subprocess.Popen(  # noqa: S603 - our own interpreter, a busy loop
                                [sys.executable, "-c", "while True: pass"]
                            )
                        )

            async def tick() -> None:
                await watch.once()
                await take_the_cores()

            watch.t0 = time.perf_counter()
            async with Ticker(0.25, tick):
                overload = await open_loop(client, search, rate=3 * capacity, duration=RUN_SECONDS)
            await watch.close()
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(timeout=10)
        stack.stop("api-adaptive")

    before = watch.between(HALVED_AT - 5.0, HALVED_AT)
    final = statistics.median(watch.between(RUN_SECONDS - 8.0, RUN_SECONDS))
    settled = settle_time(watch.samples, HALVED_AT, final)

    def admitted(start: float, end: float) -> dict[str, float]:
        return LoadResult([s for s in overload.samples if start <= s.start < end]).summary()["ok"]

    figures = {
        "summary": {
            "capacity_rps": round(capacity, 1),
            "offered_rps": round(3 * capacity, 1),
            "limit_before_median": statistics.median(before) if before else None,
            "limit_after_median": final,
            "seconds_to_settle": None if settled is None else round(settled, 2),
            "admitted_p99_ms_before": admitted(HALVED_AT - 5.0, HALVED_AT)["p99_ms"],
            "admitted_p99_ms_last_8s": admitted(RUN_SECONDS - 8.0, RUN_SECONDS)["p99_ms"],
            "timeouts": overload.summary()["timeouts"],
        },
        "halved_at_s": HALVED_AT,
        "burners": BURNERS,
        "replica_env": REPLICA_ENV,
        "limit": watch.samples,
        "overload_run": overload.summary(),
    }
    record("limit_converges", figures)

    assert before and final < statistics.median(before), (before, final)
    assert settled is not None and settled <= SETTLES_WITHIN, (settled, watch.samples)
    assert overload.summary()["timeouts"] == 0 and overload.summary()["connection_errors"] == 0
