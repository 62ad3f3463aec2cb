"""Slow downstream: latency on the api → retriever hop; deadlines and the breaker bound p99, then it recovers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ragline_cli.localstack import Stack
from tests.reliability.conftest import RELIABILITY_ENV
from tests.reliability.loadgen import LoadResult, make_client, open_loop
from tests.reliability.proxy import ProxyThread
from tests.reliability.report import record
from tests.reliability.steady import search

pytestmark = pytest.mark.reliability

# The hop's deadline is what is left of the request's (its own cap is longer).
HOP_DEADLINE = float(RELIABILITY_ENV["api"]["API_REQUEST_TIMEOUT_SECONDS"])
DELAY = HOP_DEADLINE + 1.0  # every call on the hop overruns its deadline
BREAKER_OPEN_SECONDS = 5.0  # the api's default API_BREAKER_OPEN_SECONDS
RECOVER_WITHIN = BREAKER_OPEN_SECONDS + DELAY + 2.0  # breaker pause + delayed bytes still in the pipe + a probe
SLOW_SECONDS = 10.0  # long enough for the first calls to reach their deadline and open the breaker
RATE = 20.0  # searches a second, open loop: well under capacity


def recovered_at(run: LoadResult, since: float, streak: int = 20) -> float | None:
    """Start time of the first request after `since` that begins a run of `streak` successes to the end."""
    ordered = sorted((s for s in run.samples if s.start >= since), key=lambda s: s.start)
    for i, sample in enumerate(ordered):
        tail = ordered[i:]
        if len(tail) >= streak and all(s.outcome == "ok" for s in tail):
            return sample.start
    return None


@pytest.fixture
def slow_gateway(stack: Stack) -> Iterator[tuple[Stack, ProxyThread]]:
    """An api replica that reaches the retriever through the delay proxy (the shared api talks to it directly)."""
    proxy = ProxyThread("127.0.0.1", stack.procs["retriever"].grpc_port).start()
    stack.extra_env["api-slow"] = {"API_RETRIEVER_ADDR": proxy.addr}
    stack.start_replica("api", "api-slow")
    try:
        stack.wait_ready(("api-slow",), 120.0)
        yield stack, proxy
    finally:
        stack.stop("api-slow")
        proxy.close()


async def test_slow_hop_is_cut_by_deadlines_and_breaker_then_recovers(
    slow_gateway: tuple[Stack, ProxyThread],
) -> None:
    stack, delay_proxy = slow_gateway
    # Open loop: clients keep arriving while the hop is slow, as they would; a closed loop would just wait.
    slow_from, fast_from = 3.0, 3.0 + SLOW_SECONDS
    total = fast_from + RECOVER_WITHIN + 3.0

    async def switch() -> None:
        await asyncio.sleep(slow_from)
        delay_proxy.set_delay(DELAY)
        await asyncio.sleep(SLOW_SECONDS)
        delay_proxy.set_delay(0.0)

    async with make_client(stack.procs["api-slow"].url, timeout=HOP_DEADLINE + 2.0) as client:
        switching = asyncio.create_task(switch())
        run = await open_loop(client, search, rate=RATE, duration=total)
        await switching
    # Before: requests that also ended before the delay began (bytes in flight at the switch are delayed too).
    before = LoadResult([x for x in run.samples if 0.5 <= x.start and x.start + x.latency < slow_from - 0.05])
    slow = run.window(slow_from, fast_from)
    back = recovered_at(run, fast_from)
    # Speed after recovery is judged once it settled (2 s): the first seconds still flush delayed bytes.
    after = run.window(back + 2.0 if back is not None else total, total)
    fast_refusals = [s for s in slow.samples if s.status == 503 and s.latency < 0.1]
    figures = {
        "summary": {
            "delay_s": DELAY,
            "slow_seconds": SLOW_SECONDS,
            "rate_rps": RATE,
            "hop_deadline_s": HOP_DEADLINE,
            "p99_before_ms": before.summary()["ok"]["p99_ms"],
            "p99_while_slow_ms": round(max((s.latency for s in slow.samples), default=0) * 1000, 1),
            "statuses_while_slow": slow.summary()["statuses"],
            "fast_breaker_refusals": len(fast_refusals),
            "seconds_to_recover": round(back - fast_from, 2) if back is not None else None,
            "p99_after_ms": after.summary()["ok"]["p99_ms"],
        },
        "before": before.summary(),
        "while_slow": slow.summary(),
        "after": after.summary(),
    }
    record("slow_downstream", figures)

    assert len(before.of("ok")) == len(before.samples) > 0, before.summary()
    # Bounded: nothing waits much beyond the hop's deadline, and nothing but deadline / breaker / limit answers.
    assert all(s.latency <= HOP_DEADLINE + 0.5 for s in slow.samples), figures["summary"]
    # 429: the gateway's own admission limit, reached because slow calls pile up; a bounded, fast answer too.
    assert set(slow.summary()["statuses"]) <= {"200", "429", "503", "504"}, slow.summary()["statuses"]
    assert fast_refusals, "the circuit never opened: every request waited for the deadline"
    # Recovers by itself: a run of successes to the end, soon after the delay is gone, at the old speed.
    assert back is not None and back - fast_from <= RECOVER_WITHIN, figures["summary"]
    assert after.summary()["ok"]["p99_ms"] <= 2 * before.summary()["ok"]["p99_ms"], figures["summary"]
