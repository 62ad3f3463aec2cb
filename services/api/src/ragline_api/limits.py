"""Edge limits: per-caller token buckets, and a fixed concurrency cap (the adaptive one is in ragline_common)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextvars import ContextVar

from ragline_common.errors import Overloaded, Unavailable

# Seconds this request waited in line for admission. Its deadline counts from arrival, not from admission: the
# hops get that much less, so a request that waited is not answered later than its deadline allows.
admission_wait: ContextVar[float] = ContextVar("admission_wait", default=0.0)


class RateLimiter:
    """A token bucket per caller; the least recently seen callers are forgotten beyond `max_callers`."""

    def __init__(
        self, rate: float, burst: float, *, max_callers: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_callers = max_callers
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, caller: str) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        tokens, last = self._buckets.pop(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            raise Overloaded(
                f"rate limit of {self.rate:g} requests/s for this caller exceeded",
                retry_after=(1.0 - tokens) / self.rate,
            )
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)


class QueueFull(Overloaded):
    pass


class QueueTimeout(Unavailable):
    pass


class ConcurrencyLimiter:
    """At most `limit` requests run; up to `max_queue` wait (FIFO) at most `timeout` s; the rest are refused."""

    def __init__(self, limit: int, max_queue: int, timeout: float) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self.timeout = timeout
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> float:
        """Take a slot; return the seconds spent waiting for it."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return 0.0
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(f"the gateway is at capacity ({self.limit} requests in flight, queue full)")
        start = time.perf_counter()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                fut.cancel()
                self._waiters.remove(fut)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise QueueTimeout(
                f"the gateway is at capacity; no slot freed within {self.timeout:g}s", retry_after=1.0
            ) from None
        return time.perf_counter() - start

    def release(self, latency: float | None = None) -> None:
        """Give the slot back (`latency` is accepted for the adaptive controller's interface, and unused)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over: `active` stays the same
                return
        self.active -= 1
