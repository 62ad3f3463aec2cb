"""Edge limits: per-caller token buckets, and the gateway's admission built from its settings."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar

from ragline_api.settings import ApiSettings
from ragline_common.admission import AdmissionController, GradientLimit, GradientParams
from ragline_common.errors import Overloaded

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


def build_admission(settings: ApiSettings, on_change: Callable[[int], None] | None = None) -> AdmissionController:
    """The gateway's admission from its settings: an adaptive limit between API_MIN_CONCURRENCY and
    API_MAX_CONCURRENCY (equal: a fixed limit), a wait line of at most API_MAX_QUEUE."""
    ceiling = settings.max_concurrency
    floor = min(settings.min_concurrency, ceiling)
    params = GradientParams(
        min_limit=floor, max_limit=ceiling, initial_limit=max(floor, min(32, ceiling)),
        tolerance=settings.admission_tolerance,
    )  # fmt: skip
    return AdmissionController(
        GradientLimit(params, on_change=on_change),
        max_queue=settings.max_queue,
        timeout=settings.queue_timeout_seconds,
        what="the gateway",
    )
