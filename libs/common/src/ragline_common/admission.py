"""Adaptive admission: a concurrency limit that follows measured latency, a short wait line, immediate refusal."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ragline_common.errors import Overloaded, Unavailable


class AdmissionFull(Overloaded):
    """Refused at once: the limit is reached and the wait line is full."""


class AdmissionTimeout(Unavailable):
    """Waited for a slot as long as allowed."""


@dataclass(frozen=True)
class GradientParams:
    """How the limit moves. The shape is that of Netflix concurrency-limits' Gradient and Envoy's adaptive
    concurrency filter: every window, compare the window's median latency with the lowest window median of the
    recent past (the latency the work has when nothing queues); if it is more than `tolerance` times that, shrink
    the limit in proportion, else grow it by its square root (room for a queue to form and be measured)."""

    min_limit: int = 16
    max_limit: int = 64
    initial_limit: int = 32
    # 2x the uncongested latency is the widest a request's service time may stretch before the limit shrinks.
    tolerance: float = 2.0
    # The new limit is blended with the old one: one noisy window moves it a fifth of the way.
    smoothing: float = 0.2
    # A window closes after this long and at least `min_samples` completions: at 100+ requests/s, ~25 samples.
    window_seconds: float = 0.25
    min_samples: int = 10
    # The baseline is the lowest window median seen in this long: old enough to remember an unloaded moment,
    # young enough to follow a workload that became slower for good (bigger k, a slower host).
    baseline_seconds: float = 30.0
    # Under lasting overload no window is uncongested, and a baseline learned from congested windows would let the
    # limit drift up. So, as Envoy's filter does, every `probe_interval` s the limit drops to `probe_limit` until
    # `probe_samples` requests have finished with no more than that in flight (or `probe_seconds` pass): their
    # median is the uncongested latency. Requests beyond it wait in the line meanwhile, which keeps its length.
    # No probe while the limit is at its floor (nothing it learns could lower it).
    probe_interval: float = 30.0
    probe_limit: int = 4
    probe_samples: int = 10
    probe_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"admission limits must satisfy 1 <= min ({self.min_limit}) <= initial ({self.initial_limit}) "
                f"<= max ({self.max_limit})"
            )
        if self.probe_limit < 1:
            raise ValueError(f"probe_limit must be >= 1, got {self.probe_limit}")
        if self.tolerance < 1.0:
            raise ValueError(f"tolerance must be >= 1.0, got {self.tolerance}")


class GradientLimit:
    """The limit itself: fed with (latency, in flight) samples, it recomputes at the end of each window."""

    def __init__(
        self,
        params: GradientParams,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.p = params
        self._clock = clock
        self._on_change = on_change
        self._estimate = float(params.initial_limit)
        self.limit = params.initial_limit
        self._window_start = clock()
        self._samples: list[float] = []
        self._max_in_flight = 0
        self._medians: deque[tuple[float, float]] = deque()  # (when, median), ascending medians: a sliding min
        self._probed = math.inf  # the last probe's median
        self._probe_until: float | None = None
        self._probe_samples: list[float] = []
        self._next_probe = self._window_start + params.probe_interval
        self.short_rtt = 0.0
        if on_change:
            on_change(self.limit)

    @property
    def baseline(self) -> float:
        """The uncongested latency: the last probe's, or lower if a recent window was faster."""
        low = min(self._probed, self._medians[0][1] if self._medians else math.inf)
        return 0.0 if math.isinf(low) else low

    @property
    def estimate(self) -> int:
        """The limit outside probes (the wait line is sized by it, so a probe does not shorten the line)."""
        return round(self._estimate)

    @property
    def probing(self) -> bool:
        return self._probe_until is not None

    def sample(self, latency: float, in_flight: int) -> None:
        now = self._clock()
        if self._probe_until is not None:
            if in_flight <= min(self.p.probe_limit, self.p.min_limit):
                self._probe_samples.append(latency)
            if len(self._probe_samples) >= self.p.probe_samples or now >= self._probe_until:
                self._end_probe(now)
            return
        if now >= self._next_probe and self._estimate <= self.p.min_limit:
            # At its floor the limit can go no lower, so what a probe would learn cannot change it; and a probe
            # stalls the wait line for a few service times. Windows keep the baseline; probe again once above.
            self._next_probe = now + self.p.probe_interval
        elif now >= self._next_probe:
            self._probe_until = now + self.p.probe_seconds
            self._probe_samples = []
            self._set(min(self.p.probe_limit, self.p.min_limit))
            return
        self._samples.append(latency)
        self._max_in_flight = max(self._max_in_flight, in_flight)
        if now - self._window_start >= self.p.window_seconds and len(self._samples) >= self.p.min_samples:
            self._close_window(now)

    def _end_probe(self, now: float) -> None:
        if len(self._probe_samples) >= self.p.probe_samples:
            ordered = sorted(self._probe_samples)
            self._probed = ordered[len(ordered) // 2]
        self._probe_until = None
        self._next_probe = now + self.p.probe_interval
        self._samples = []
        self._max_in_flight = 0
        self._window_start = now
        self._set(round(self._estimate))

    def _set(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            if self._on_change:
                self._on_change(limit)

    def _close_window(self, now: float) -> None:
        ordered = sorted(self._samples)
        median = ordered[len(ordered) // 2]
        in_flight = self._max_in_flight
        self._samples = []
        self._max_in_flight = 0
        self._window_start = now
        while self._medians and self._medians[-1][1] >= median:
            self._medians.pop()
        self._medians.append((now, median))
        while now - self._medians[0][0] > self.p.baseline_seconds:
            self._medians.popleft()
        self.short_rtt = median
        gradient = max(0.5, min(1.0, self.p.tolerance * self.baseline / median)) if median > 0 else 1.0
        estimate = self._estimate
        if gradient < 1.0:
            target = estimate * gradient
        elif in_flight >= estimate / 2:
            target = estimate + math.sqrt(estimate)
        else:
            # The traffic did not use half the limit: latency says nothing about a larger one; hold it.
            target = estimate
        estimate = (1 - self.p.smoothing) * estimate + self.p.smoothing * target
        self._estimate = min(float(self.p.max_limit), max(float(self.p.min_limit), estimate))
        self._set(round(self._estimate))


class AdmissionController:
    """At most `limit.limit` requests run; as many more may wait (FIFO, `max_queue` at most, `timeout` s at most);
    the rest are refused at once with Retry-After. The wait line is as long as the limit, so a closed loop of
    clients up to twice the limit is never refused; while requests are being refused (lasting overload: the slots
    stay busy either way) it is half as long, so an admitted request waits for at most half a generation of those
    running. It is back to full length `full_line_after` s after the last refusal."""

    full_line_after: float = 1.0

    def __init__(
        self,
        limit: GradientLimit,
        *,
        max_queue: int,
        timeout: float,
        what: str = "the service",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.timeout = timeout
        self.what = what
        self._clock = clock
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._refused_at = -math.inf

    @property
    def queue_limit(self) -> int:
        full = min(self.max_queue, self.limit.estimate)
        return full // 2 if self._clock() - self._refused_at < self.full_line_after else full

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> float:
        """Take a slot; return the seconds spent waiting for it. Raises AdmissionFull or AdmissionTimeout."""
        if self.active < self.limit.limit and not self._waiters:
            self.active += 1
            return 0.0
        if len(self._waiters) >= self.queue_limit:
            self._refused_at = self._clock()
            raise AdmissionFull(
                f"{self.what} is at capacity ({self.active} requests in flight, limit {self.limit.limit}, "
                f"{len(self._waiters)} waiting); retry later"
            )
        start = self._clock()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self._release_slot()  # the slot was handed over just as we gave up: pass it on
            else:
                fut.cancel()
                self._waiters.remove(fut)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise AdmissionTimeout(
                f"{self.what} is at capacity; no slot freed within {self.timeout:g}s", retry_after=1.0
            ) from None
        return self._clock() - start

    def release(self, latency: float | None) -> None:
        """Give the slot back; `latency` is the request's time from admission to its end (None: not a sample,
        e.g. the client went away)."""
        if latency is not None:
            self.limit.sample(latency, self.active)
        self._release_slot()

    def _release_slot(self) -> None:
        self.active -= 1
        # Let waiters in while below the limit: one per finished request, or several when the limit was raised;
        # none when it was lowered below what runs now.
        while self._waiters and self.active < self.limit.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)
