"""Unit tests for adaptive admission: the limit against a simulated server, and the controller's slots and line."""

from __future__ import annotations

import asyncio

import pytest

from ragline_common.admission import (
    AdmissionController,
    AdmissionFull,
    AdmissionTimeout,
    GradientLimit,
    GradientParams,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A processor-shared server: alone a request takes `base` s; `n` at once share `capacity` requests/s, so past
    the knee (capacity x base in flight) each takes n / capacity s."""

    def __init__(self, capacity: float, base: float) -> None:
        self.capacity = capacity
        self.base = base


def simulate(
    limit: GradientLimit, clock: Clock, server: Server, *, rate: float, seconds: float, dt: float = 0.001
) -> list[tuple[float, int, float]]:
    """Open-loop arrivals at `rate`/s for `seconds`; returns (time, limit, admitted latency) per completion."""
    in_flight: list[list[float]] = []  # [work left (1 = a whole request), admitted at]
    out = []
    due = 0.0
    end = clock.now + seconds
    while clock.now < end:
        due += rate * dt
        while due >= 1.0:
            due -= 1.0
            if len(in_flight) < limit.limit:
                in_flight.append([1.0, clock.now])
        n = len(in_flight)
        if n:
            speed = min(1.0 / server.base, server.capacity / n)
            for item in in_flight:
                item[0] -= speed * dt
        clock.now += dt
        done = [item for item in in_flight if item[0] <= 0]
        for item in done:
            in_flight.remove(item)
            latency = clock.now - item[1]
            limit.sample(latency, len(in_flight) + 1)
            out.append((clock.now, limit.limit, latency))
    return out


def params(**kw: float) -> GradientParams:
    return GradientParams(**{"min_limit": 2, "max_limit": 200, "initial_limit": 20, **kw})  # type: ignore[arg-type]


def settled_limit(trace: list[tuple[float, int, float]], after: float) -> list[int]:
    return [lim for t, lim, _ in trace if t >= after]


def test_limit_settles_near_the_knee_times_tolerance_under_overload() -> None:
    clock = Clock()
    limit = GradientLimit(params(), clock=clock)
    server = Server(capacity=1000, base=0.02)  # knee: 20 in flight
    trace = simulate(limit, clock, server, rate=3000, seconds=20)
    late = settled_limit(trace, 10.0)
    # Latency may stretch to 2x the uncongested 20 ms: about 40 in flight at 1000/s, plus the sqrt headroom.
    assert 30 <= min(late) and max(late) <= 60, (min(late), max(late))
    latencies = [lat for t, _, lat in trace if t >= 10.0]
    assert max(latencies) <= 0.02 * 2 * 1.6, max(latencies)


def test_limit_follows_capacity_halving_within_five_seconds() -> None:
    clock = Clock()
    limit = GradientLimit(params(), clock=clock)
    server = Server(capacity=1000, base=0.02)
    simulate(limit, clock, server, rate=3000, seconds=15)
    before = limit.limit
    server.capacity = 500  # another process took half the cores
    halved_at = clock.now
    trace = simulate(limit, clock, server, rate=3000, seconds=15)
    converged = next(t for t, lim, _ in trace if lim <= 0.6 * before) - halved_at
    assert converged <= 5.0, converged
    late = settled_limit(trace, halved_at + 5.0)
    assert 15 <= min(late) and max(late) <= 32, (before, min(late), max(late))


def test_limit_stays_within_floor_and_ceiling() -> None:
    clock = Clock()
    limit = GradientLimit(params(min_limit=16, max_limit=24, initial_limit=20, probe_interval=2.0), clock=clock)
    slow = Server(capacity=100, base=0.02)  # knee at 2: far below the floor
    trace = simulate(limit, clock, slow, rate=500, seconds=10)
    limits = {lim for _, lim, _ in trace} - {4}  # 4: the probes'
    assert min(limits) == 16
    fast = Server(capacity=100_000, base=0.02)  # never congested: grows to the ceiling and stops
    trace = simulate(limit, clock, fast, rate=5000, seconds=10)
    assert max(lim for _, lim, _ in trace) == 24


def test_limit_holds_when_traffic_uses_little_of_it() -> None:
    clock = Clock()
    limit = GradientLimit(params(initial_limit=40), clock=clock)
    trace = simulate(limit, clock, Server(capacity=1000, base=0.02), rate=100, seconds=10)  # ~2 in flight
    assert {lim for _, lim, _ in trace} == {40}


def test_params_refuse_inconsistent_bounds() -> None:
    with pytest.raises(ValueError, match="min .*initial"):
        GradientParams(min_limit=10, initial_limit=5, max_limit=20)
    with pytest.raises(ValueError, match="tolerance"):
        GradientParams(tolerance=0.5)


def fixed(n: int, clock: Clock | None = None) -> GradientLimit:
    return GradientLimit(GradientParams(min_limit=n, initial_limit=n, max_limit=n), clock=clock or Clock())


async def test_beyond_limit_and_line_refuses_at_once_with_retry_after() -> None:
    ctl = AdmissionController(fixed(2), max_queue=100, timeout=5.0)
    assert await ctl.acquire() == 0.0 and await ctl.acquire() == 0.0
    waiters = [asyncio.create_task(ctl.acquire()) for _ in range(2)]  # the line is as long as the limit
    await asyncio.sleep(0)
    assert ctl.waiting == 2
    with pytest.raises(AdmissionFull) as info:
        await ctl.acquire()
    assert info.value.retry_after == 1.0 and info.value.http_status == 429
    ctl.release(0.01)
    ctl.release(0.01)
    assert all(w >= 0 for w in await asyncio.gather(*waiters))
    assert ctl.active == 2 and ctl.waiting == 0


async def test_max_queue_caps_the_line_and_zero_means_no_line() -> None:
    ctl = AdmissionController(fixed(3), max_queue=0, timeout=5.0)
    for _ in range(3):
        await ctl.acquire()
    with pytest.raises(AdmissionFull):
        await ctl.acquire()
    assert ctl.queue_limit == 0


async def test_waiting_past_the_timeout_is_a_503_and_frees_its_place() -> None:
    ctl = AdmissionController(fixed(1), max_queue=5, timeout=0.05)
    await ctl.acquire()
    with pytest.raises(AdmissionTimeout) as info:
        await ctl.acquire()
    assert info.value.http_status == 503 and info.value.retry_after == 1.0
    assert ctl.waiting == 0
    ctl.release(None)
    assert ctl.active == 0


async def test_a_cancelled_waiter_leaves_the_line_and_slots_are_not_lost() -> None:
    ctl = AdmissionController(fixed(1), max_queue=5, timeout=5.0)
    await ctl.acquire()
    waiter = asyncio.create_task(ctl.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    ctl.release(0.01)
    assert ctl.active == 0 and ctl.waiting == 0
    assert await ctl.acquire() == 0.0


async def test_a_lowered_limit_is_not_exceeded_and_a_raised_one_admits_waiters_at_once() -> None:
    limit = fixed(2)
    ctl = AdmissionController(limit, max_queue=10, timeout=5.0)
    await ctl.acquire()
    await ctl.acquire()
    waiters = [asyncio.create_task(ctl.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    limit.limit = 1
    ctl.release(None)  # 2 running > 1 allowed: this slot is not handed on
    await asyncio.sleep(0)
    assert ctl.active == 1 and ctl.waiting == 2
    limit.limit = 4
    ctl.release(None)  # now below: both waiters get in
    await asyncio.gather(*waiters)
    assert ctl.active == 2 and ctl.waiting == 0


def test_no_probe_while_the_limit_is_at_its_floor_and_probes_resume_above_it() -> None:
    clock = Clock()
    limit = GradientLimit(params(min_limit=16, max_limit=64, initial_limit=16, probe_interval=2.0), clock=clock)
    slow = Server(capacity=100, base=0.02)  # latency says "lower" at any limit above the floor
    trace = simulate(limit, clock, slow, rate=500, seconds=20)
    # The first probe teaches the uncongested latency; from then on the limit stays on its floor and is never the
    # probe's 4 again: the wait line is not stalled for nothing.
    assert 4 in {lim for _, lim, _ in trace}
    assert {lim for t, lim, _ in trace if t >= 10.0} == {16}
    fast = Server(capacity=100_000, base=0.02)
    trace = simulate(limit, clock, fast, rate=5000, seconds=10)
    assert 4 in {lim for _, lim, _ in trace} and limit.limit > 16


async def test_while_refusing_the_line_is_half_as_long_and_full_again_a_second_after() -> None:
    clock = Clock()
    ctl = AdmissionController(fixed(4, clock), max_queue=100, timeout=5.0, clock=clock)
    for _ in range(4):
        await ctl.acquire()
    waiters = [asyncio.create_task(ctl.acquire()) for _ in range(4)]  # a closed loop of 8 fits: 4 run, 4 wait
    await asyncio.sleep(0)
    assert ctl.waiting == 4 and ctl.queue_limit == 4
    with pytest.raises(AdmissionFull):
        await ctl.acquire()  # a ninth: overload
    assert ctl.queue_limit == 2
    for _ in range(3):
        ctl.release(0.01)  # three waiters get slots, one still waits
    await asyncio.sleep(0)
    assert ctl.waiting == 1
    second = asyncio.create_task(ctl.acquire())  # 1 < 2: may wait
    await asyncio.sleep(0)
    assert ctl.waiting == 2
    with pytest.raises(AdmissionFull):
        await ctl.acquire()  # the half-length line is full
    clock.now += 1.0
    assert ctl.queue_limit == 4  # a second without refusals: full length again
    for _ in range(6):
        ctl.release(0.01)
    await asyncio.gather(*waiters, second)
