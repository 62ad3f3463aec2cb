"""Client goes away: a streamed /v1/query is dropped mid-answer; the generator stops generating within 100 ms."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ragline_cli.localstack import Stack
from tests.reliability.report import record

pytestmark = pytest.mark.reliability

STOP_WITHIN = 0.100
RUNNING = "ragline_generator_requests_running"
TOKENS = "ragline_generator_output_tokens_total"
MAX_TOKENS = 512


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Unlabelled samples of the two metrics this test reads (labels summed)."""
    out = {RUNNING: 0.0, TOKENS: 0.0}
    for line in (await client.get(url + "/metrics")).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


async def test_dropped_stream_stops_generation_within_100ms(stack: Stack) -> None:
    gen_url = stack.procs["generator"].url
    body = {
        "question": "Write a long, detailed, step by step explanation of dpkg triggers, with many examples.",
        "k": 1,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "seed": 1,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=5.0) as metrics:
        idle = await scrape(metrics, gen_url)
        assert idle[RUNNING] == 0, "the generator is busy before the test starts"
        tokens_seen = 0
        async with httpx.AsyncClient(timeout=60.0) as client:
            async with client.stream("POST", stack.api_url + "/v1/query", json=body) as reply:
                assert reply.status_code == 200
                async for line in reply.aiter_lines():
                    assert line != "event: done", "the answer ended before the client left: nothing to measure"
                    if line == "event: token":
                        tokens_seen += 1
                        if tokens_seen == 2:
                            during = await scrape(metrics, gen_url)
                        if tokens_seen == 4:
                            break
            # Leaving the block closes the connection mid-stream: the client is gone.
        gone_at = time.perf_counter()
        # (scrape sent, answer read, values): a value held at some instant between the two times.
        samples: list[tuple[float, float, dict[str, float]]] = []
        while time.perf_counter() - gone_at < 1.5:
            sent = time.perf_counter() - gone_at
            values = await scrape(metrics, gen_url)
            samples.append((sent, time.perf_counter() - gone_at, values))
            if sent > 0.3:
                await asyncio.sleep(0.02)
    first_zero = next((i for i, (_, _, m) in enumerate(samples) if m[RUNNING] == 0), None)
    # Upper bound: the first scrape that saw 0 had been answered by then. Lower: the scrape before it was sent.
    stopped = samples[first_zero][1] if first_zero is not None else None
    stopped_after = samples[first_zero - 1][0] if first_zero else 0.0
    settled = samples[-1][2][TOKENS]
    changed = [i for i, (_, _, m) in enumerate(samples) if m[TOKENS] == settled]
    settled_by = samples[changed[0]][1] if changed else None
    tokens_after_stop = {m[TOKENS] for _, _, m in samples[first_zero:]} if first_zero is not None else set()
    figures = {
        "summary": {
            "tokens_read_by_client": tokens_seen,
            "running_while_streaming": during[RUNNING],
            "ms_until_running_0_at_most": round(stopped * 1000, 1) if stopped is not None else None,
            "ms_until_running_0_at_least": round(stopped_after * 1000, 1),
            "ms_until_token_counter_final_at_most": round(settled_by * 1000, 1) if settled_by is not None else None,
            "tokens_generated_in_total": settled - idle[TOKENS],
            "max_tokens_asked": MAX_TOKENS,
        },
        "scrapes": len(samples),
        "scrape_ms_p50": round(sorted(e - s for s, e, _ in samples)[len(samples) // 2] * 1000, 1),
    }
    record("client_goes_away", figures)

    assert during[RUNNING] >= 1, "the generator was not generating while the client read tokens"
    assert stopped is not None and stopped <= STOP_WITHIN, figures["summary"]
    assert len(tokens_after_stop) <= 1, "tokens were counted after the running gauge went to 0"
    assert settled_by is not None and settled_by <= STOP_WITHIN, figures["summary"]
    assert settled - idle[TOKENS] < MAX_TOKENS, "the whole answer was generated for a client that left"
