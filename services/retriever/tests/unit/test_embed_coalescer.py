"""The retriever's Embed coalescer against a fake stub: batching, order, errors, deadlines and departures."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline_common import context
from ragline_common.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable
from ragline_retriever.clients import EmbedCoalescer

pytestmark = pytest.mark.unit


@dataclass
class Call:
    texts: list[str]
    priority: int
    timeout: float | None
    metadata: Any
    release: asyncio.Event = field(default_factory=asyncio.Event)
    error: grpc.StatusCode | None = None
    cancelled: bool = False


class FakeStub:
    """Embed answers text "n" with the vector [n, -n] once the test releases the call (or at once, if `auto`)."""

    def __init__(self, *, auto: bool = False, refuse: str | None = None) -> None:
        self.calls: list[Call] = []
        self.auto = auto
        self.refuse = refuse  # a text the "embedder" refuses with INVALID_ARGUMENT, failing its whole request

    async def Embed(  # noqa: N802 - the RPC's name
        self, request: epb.EmbedRequest, *, timeout: float | None = None, metadata: Any = None
    ) -> epb.EmbedResponse:
        call = Call(list(request.texts), request.priority, timeout, metadata)
        self.calls.append(call)
        if self.refuse is not None and self.refuse in call.texts:
            raise _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, f"text {self.refuse!r} refused")
        if not self.auto:
            try:
                await call.release.wait()
            except asyncio.CancelledError:
                call.cancelled = True
                raise
        if call.error is not None:
            raise _rpc_error(call.error, "refused by the test")
        return epb.EmbedResponse(embeddings=[epb.Embedding(values=[float(t), -float(t)]) for t in call.texts])


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def settle() -> None:
    """Let every ready task and callback run."""
    for _ in range(10):
        await asyncio.sleep(0)


def rows(texts: list[str]) -> list[list[float]]:
    return [[float(t), -float(t)] for t in texts]


async def test_an_idle_call_goes_at_once_and_alone() -> None:
    stub = FakeStub(auto=True)
    coalescer = EmbedCoalescer(stub, timeout=5.0)
    vectors = await coalescer.embed(["3"])
    assert vectors.dtype == np.float32 and vectors.tolist() == rows(["3"])
    assert [c.texts for c in stub.calls] == [["3"]]
    assert stub.calls[0].priority == epb.PRIORITY_INTERACTIVE
    assert stub.calls[0].timeout == pytest.approx(5.0)


async def test_calls_arriving_during_a_call_share_the_next_rpc_in_order() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()
    waiting = [asyncio.create_task(coalescer.embed(texts)) for texts in (["2"], ["3", "4"], ["5"])]
    await settle()
    assert len(stub.calls) == 1  # the others wait for the call in flight
    stub.calls[0].release.set()
    assert (await first).tolist() == rows(["1"])
    await settle()
    assert [c.texts for c in stub.calls] == [["1"], ["2", "3", "4", "5"]]
    stub.calls[1].release.set()
    assert [(await t).tolist() for t in waiting] == [rows(["2"]), rows(["3", "4"]), rows(["5"])]
    assert coalescer.rpcs == 2


async def test_an_rpc_carries_at_most_max_texts_and_a_full_batch_goes_beside_the_call_in_flight() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_texts=3, max_in_flight=2, max_wait=10.0)
    tasks = [asyncio.create_task(coalescer.embed([str(i)])) for i in range(7)]
    await settle()
    # "0" went at once; "1".."3" filled a batch, which went beside it; "4".."6" wait (two RPCs in flight).
    assert [c.texts for c in stub.calls] == [["0"], ["1", "2", "3"]]
    stub.calls[0].release.set()
    await settle()
    assert [c.texts for c in stub.calls][2:] == [["4", "5", "6"]]
    for call in stub.calls:
        call.release.set()
    assert [(await t).tolist() for t in tasks] == [rows([str(i)]) for i in range(7)]


async def test_a_waiting_call_goes_out_beside_a_slow_one_after_max_wait() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=0.05)
    slow = asyncio.create_task(coalescer.embed(["1"]))
    await settle()
    started = time.monotonic()
    waiting = asyncio.create_task(coalescer.embed(["2"]))
    while len(stub.calls) < 2:
        await asyncio.sleep(0.005)
    assert 0.04 <= time.monotonic() - started < 2.0
    stub.calls[1].release.set()
    assert (await waiting).tolist() == rows(["2"])
    assert not slow.done()  # still in flight: the second RPC did not wait for it
    stub.calls[0].release.set()
    assert (await slow).tolist() == rows(["1"])


async def test_a_failed_rpc_fails_exactly_its_callers() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()
    batch = [asyncio.create_task(coalescer.embed([t])) for t in ("2", "3")]
    await settle()
    stub.calls[0].release.set()
    await first
    await settle()
    later = asyncio.create_task(coalescer.embed(["4"]))  # arrives while the batch of "2" and "3" is in flight
    await settle()
    stub.calls[1].error = grpc.StatusCode.RESOURCE_EXHAUSTED
    stub.calls[1].release.set()
    for task in batch:
        with pytest.raises(Overloaded):
            await task
    await settle()
    assert [c.texts for c in stub.calls] == [["1"], ["2", "3"], ["4"]]
    stub.calls[2].release.set()
    assert (await later).tolist() == rows(["4"])
    errors = [t.exception() for t in batch]
    assert errors[0] is not errors[1]  # each caller raises its own copy


async def test_a_refused_text_fails_only_the_caller_that_brought_it() -> None:
    stub = FakeStub(refuse="9")
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await asyncio.sleep(0)
    good, bad = asyncio.create_task(coalescer.embed(["2"])), asyncio.create_task(coalescer.embed(["9"]))
    await settle()
    stub.calls[0].release.set()
    await first
    for _ in range(50):
        await settle()
        for call in stub.calls[2:]:
            call.release.set()
        if good.done() and bad.done():
            break
    assert good.result().tolist() == rows(["2"])
    with pytest.raises(InvalidInput, match="'9' refused"):
        bad.result()
    assert [c.texts for c in stub.calls] == [["1"], ["2", "9"], ["2"], ["9"]]


async def test_each_caller_keeps_its_deadline_and_the_rpc_gets_the_latest() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=30.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()

    async def with_deadline(text: str, seconds: float) -> np.ndarray:
        context.set_deadline_in(seconds)  # a task's own copy of the context
        return await coalescer.embed([text])

    short = asyncio.create_task(with_deadline("2", 0.05))
    long = asyncio.create_task(with_deadline("3", 8.0))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await short  # the call in flight never answers in time
    assert time.monotonic() - started < 2.0
    assert not long.done()
    stub.calls[0].release.set()
    await first
    await settle()
    assert [c.texts for c in stub.calls] == [["1"], ["3"]]  # the caller that left is not sent
    assert 5.0 < stub.calls[1].timeout <= 8.0
    stub.calls[1].release.set()
    assert (await long).tolist() == rows(["3"])


async def test_a_rpc_gets_the_latest_deadline_of_its_callers() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=30.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()

    async def with_deadline(text: str, seconds: float) -> np.ndarray:
        context.set_deadline_in(seconds)
        return await coalescer.embed([text])

    tasks = [asyncio.create_task(with_deadline("2", 3.0)), asyncio.create_task(with_deadline("3", 9.0))]
    await settle()
    stub.calls[0].release.set()
    await first
    await settle()
    assert stub.calls[1].texts == ["2", "3"]
    assert 8.0 < stub.calls[1].timeout <= 9.0
    stub.calls[1].release.set()
    assert [(await t).tolist() for t in tasks] == [rows(["2"]), rows(["3"])]


async def test_a_caller_leaving_cancels_nothing_of_the_others_and_the_last_one_cancels_the_rpc() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()
    leaving, staying = asyncio.create_task(coalescer.embed(["2"])), asyncio.create_task(coalescer.embed(["3"]))
    await settle()
    stub.calls[0].release.set()
    await first
    await settle()
    assert stub.calls[1].texts == ["2", "3"]
    leaving.cancel()
    await settle()
    assert not stub.calls[1].cancelled
    stub.calls[1].release.set()
    assert (await staying).tolist() == rows(["3"])
    assert leaving.cancelled()

    # Everyone in a batch gone: its RPC is cancelled too.
    first = asyncio.create_task(coalescer.embed(["4"]))
    await settle()
    gone = [asyncio.create_task(coalescer.embed([t])) for t in ("5", "6")]
    await settle()
    stub.calls[2].release.set()
    await first
    await settle()
    assert stub.calls[3].texts == ["5", "6"]
    for task in gone:
        task.cancel()
    await settle()
    assert stub.calls[3].cancelled
    stub.auto = True
    assert (await coalescer.embed(["7"])).tolist() == rows(["7"])  # and the client still serves


async def test_bulk_calls_are_never_coalesced_nor_held_back() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0)
    query = asyncio.create_task(coalescer.embed(["1"]))
    await settle()
    bulk = asyncio.create_task(coalescer.embed(["2", "3"], bulk=True))
    await settle()
    assert [(c.texts, c.priority) for c in stub.calls] == [
        (["1"], epb.PRIORITY_INTERACTIVE),
        (["2", "3"], epb.PRIORITY_BULK),
    ]
    for call in stub.calls:
        call.release.set()
    assert (await bulk).tolist() == rows(["2", "3"])
    await query


async def test_the_waiting_room_is_bounded() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0, max_pending=2)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()
    waiting = [asyncio.create_task(coalescer.embed([t])) for t in ("2", "3")]
    await settle()
    with pytest.raises(Overloaded, match="at most 2"):
        await coalescer.embed(["4"])
    stub.calls[0].release.set()
    await first
    await settle()
    stub.calls[1].release.set()
    assert [(await t).tolist() for t in waiting] == [rows(["2"]), rows(["3"])]


async def test_the_batch_carries_its_first_callers_request_id() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()

    async def as_request(rid: str, text: str) -> np.ndarray:
        context.request_id_var.set(rid)
        return await coalescer.embed([text])

    tasks = [asyncio.create_task(as_request(rid, t)) for rid, t in (("req-a", "2"), ("req-b", "3"))]
    await settle()
    stub.calls[0].release.set()
    await first
    await settle()
    assert dict(stub.calls[1].metadata)[context.REQUEST_ID_HEADER] == "req-a"
    stub.calls[1].release.set()
    await asyncio.gather(*tasks)


async def test_close_answers_every_waiting_caller() -> None:
    stub = FakeStub()
    coalescer = EmbedCoalescer(stub, timeout=5.0, max_wait=10.0)
    first = asyncio.create_task(coalescer.embed(["1"]))
    await settle()
    waiting = asyncio.create_task(coalescer.embed(["2"]))
    await settle()
    await coalescer.close()
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable):
        await coalescer.embed(["3"])
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
