"""Downstream resilience: a circuit breaker per downstream and a retry budget (token bucket)."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from ragline_common.errors import Unavailable


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitOpen(Unavailable):
    """Failed fast: the downstream's circuit is open."""


class CircuitBreaker:
    """Closed → open after N consecutive failures → half-open after a pause (one probe) → closed on success."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        open_seconds: float,
        on_change: Callable[[CircuitState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._on_change = on_change
        self._clock = clock
        self.state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.last_failure = ""
        if on_change:
            on_change(self.state)

    def _set(self, state: CircuitState) -> None:
        if state != self.state:
            self.state = state
            if self._on_change:
                self._on_change(state)

    def before_call(self) -> None:
        """Let a call through or raise CircuitOpen; in half-open only one probe call is in flight."""
        if self.state == CircuitState.OPEN:
            left = self._opened_at + self.open_seconds - self._clock()
            if left > 0:
                why = f" ({self.last_failure})" if self.last_failure else ""
                raise CircuitOpen(f"{self.name} is failing{why}; its circuit is open", retry_after=max(1.0, left))
            self._set(CircuitState.HALF_OPEN)
            self._probing = False
        if self.state == CircuitState.HALF_OPEN:
            if self._probing:
                why = f" ({self.last_failure})" if self.last_failure else ""
                raise CircuitOpen(f"{self.name} is recovering{why}; one probe call is in flight", retry_after=1.0)
            self._probing = True

    def on_success(self) -> None:
        self._failures = 0
        self._probing = False
        self._set(CircuitState.CLOSED)

    def on_failure(self, reason: str = "") -> None:
        """`reason`: the failure's message, safe to show; an open circuit's refusals repeat it."""
        self._probing = False
        self.last_failure = reason
        self._failures += 1
        if self.state == CircuitState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def on_neutral(self) -> None:
        """The call ended without telling us about the downstream's health (cancelled, caller error)."""
        self._probing = False


class RetryBudget:
    """Each request deposits `ratio` tokens (up to `burst`); each retry spends one.

    So retries never exceed `burst + ratio × requests`: with every attempt failing, a downstream sees at most
    about (1 + ratio) attempts per request instead of `max_attempts` times the load.
    """

    def __init__(self, ratio: float, burst: float) -> None:
        self.ratio = ratio
        self.burst = burst
        self._tokens = burst

    def on_request(self) -> None:
        self._tokens = min(self.burst, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
