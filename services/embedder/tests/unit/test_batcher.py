"""Batcher unit tests with a fake model: merging, splitting, waiting, refusing, dropping, failing."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from ragline_common import context
from ragline_common.errors import DeadlineExceeded, Overloaded, Unavailable
from ragline_embedder.batcher import BULK_TURN, Batcher, BatchFailed

pytestmark = pytest.mark.unit


class FakeModel:
    """Upper-cases texts; records every batch; can be held (gate) or made to fail on a marker text."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, texts: list[str]) -> Sequence[str]:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return [t.upper() for t in texts]

    def seen(self) -> list[str]:
        return [t for call in self.calls for t in call]


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def make(model: FakeModel, *, max_batch: int = 8, max_wait: float = 0.05, max_queue: int = 64) -> Batcher[str]:
    return Batcher(model, max_batch=max_batch, max_wait=max_wait, max_queue=max_queue)


@pytest.fixture
async def started() -> AsyncIterator[list[Batcher[str]]]:
    """Batchers a test starts; closed at the end so no worker thread outlives the test."""
    batchers: list[Batcher[str]] = []
    yield batchers
    for b in batchers:
        await b.close()


def start(started: list[Batcher[str]], batcher: Batcher[str]) -> Batcher[str]:
    batcher.start()
    started.append(batcher)
    return batcher


async def held(model: FakeModel, batcher: Batcher[str], text: str = "first") -> asyncio.Task[object]:
    """Occupy the worker: one request whose batch is inside the model until the gate opens."""
    model.gate.clear()
    model.entered.clear()
    task = asyncio.create_task(batcher.submit([text]))
    assert await asyncio.to_thread(model.entered.wait, 5)
    return task  # type: ignore[return-value]


async def test_concurrent_requests_merge_into_one_batch(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=8, max_wait=0.2))
    results = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(5)))
    assert model.calls == [[f"t{i}" for i in range(5)]]
    assert [r for r, _ in results] == [[f"T{i}"] for i in range(5)]
    assert all(stats.batch_size == 5 for _, stats in results)


async def test_large_request_is_split_at_max_batch_and_kept_in_order(
    model: FakeModel, started: list[Batcher[str]]
) -> None:
    batcher = start(started, make(model, max_batch=4, max_wait=0))
    texts = [f"t{i}" for i in range(10)]
    results, stats = await batcher.submit(texts)
    assert [len(c) for c in model.calls] == [4, 4, 2]
    assert results == [t.upper() for t in texts]
    assert stats.batch_size == 4


async def test_partial_batch_waits_at_most_max_wait(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=8, max_wait=0.3))
    t = time.perf_counter()
    await batcher.submit(["alone"])  # nothing has run yet: the batcher waits for company, but only max_wait
    elapsed = time.perf_counter() - t
    assert 0.28 <= elapsed < 3
    assert model.calls == [["alone"]]


async def test_lone_sequential_caller_does_not_wait(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=8, max_wait=1.0))
    await batcher.submit(["first"])  # pays max_wait once: nothing is known yet
    t = time.perf_counter()
    for i in range(3):
        await batcher.submit([f"next{i}"])
    # Three requests after a batch of one with nobody queued: none waits the 1 s max_wait.
    assert time.perf_counter() - t < 1.0
    assert model.calls[1:] == [["next0"], ["next1"], ["next2"]]


async def test_full_queue_refuses_at_once(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=2, max_wait=0, max_queue=4))
    first = await held(model, batcher)
    waiting = [asyncio.create_task(batcher.submit(["a", "b"])), asyncio.create_task(batcher.submit(["c", "d"]))]
    await asyncio.sleep(0.01)
    assert batcher.depth == 4
    t = time.perf_counter()
    with pytest.raises(Overloaded, match="queue is full") as info:
        await batcher.submit(["e"])
    assert time.perf_counter() - t < 0.1
    assert info.value.retry_after is not None
    model.gate.set()
    await first
    assert [r for r, _ in await asyncio.gather(*waiting)] == [["A", "B"], ["C", "D"]]
    assert "e" not in model.seen()


async def test_expired_deadline_is_dropped_before_the_model(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=1, max_wait=0))
    first = await held(model, batcher)

    async def with_deadline(text: str, seconds: float) -> object:
        context.set_deadline_in(seconds)
        return await batcher.submit([text])

    late = asyncio.create_task(with_deadline("late", 0.05))
    with pytest.raises(DeadlineExceeded):
        await asyncio.create_task(with_deadline("already-late", -1))  # refused without queueing
    await asyncio.sleep(0.1)  # "late"'s deadline passes while the worker is busy
    model.gate.set()
    await first
    with pytest.raises(DeadlineExceeded):
        await late
    assert batcher.depth == 0
    assert model.seen() == ["first"]
    assert (await batcher.submit(["after"]))[0] == ["AFTER"]


async def test_cancelled_request_frees_its_place(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=1, max_wait=0, max_queue=3))
    first = await held(model, batcher)
    gone = asyncio.create_task(batcher.submit(["x", "y", "z"]))
    await asyncio.sleep(0.01)
    assert batcher.depth == 3
    with pytest.raises(Overloaded):
        await batcher.submit(["w"])
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.depth == 0
    accepted = asyncio.create_task(batcher.submit(["w"]))
    await asyncio.sleep(0.01)
    model.gate.set()
    await first
    assert (await accepted)[0] == ["W"]
    assert model.seen() == ["first", "w"]  # the cancelled texts never reached the model


async def test_model_exception_fails_only_its_batch(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=1, max_wait=0))
    first = await held(model, batcher)
    bad = asyncio.create_task(batcher.submit(["boom"]))
    good = asyncio.create_task(batcher.submit(["fine"]))
    await asyncio.sleep(0.01)
    model.gate.set()
    await first
    with pytest.raises(BatchFailed, match="model failed"):
        await bad
    assert (await good)[0] == ["FINE"]
    assert (await batcher.submit(["later"]))[0] == ["LATER"]  # the loop survived


async def test_close_fails_running_and_queued_requests(model: FakeModel) -> None:
    batcher = make(model, max_batch=1, max_wait=0)
    batcher.start()
    first = await held(model, batcher)
    queued = asyncio.create_task(batcher.submit(["queued"]))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    model.gate.set()  # let the worker thread finish so the executor can shut down
    await closing
    for task in (first, queued):
        with pytest.raises(Unavailable, match="shutting down"):
            await task


async def test_failed_part_of_a_split_request_drops_the_rest(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=2, max_wait=0))
    with pytest.raises(BatchFailed):
        await batcher.submit(["boom", "x", "y", "z"])
    assert model.calls == [["boom", "x"]]  # y and z never ran: their request had already failed
    assert batcher.depth == 0


async def test_interactive_work_goes_before_queued_bulk_work(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = Batcher(model, max_batch=8, max_wait=0, max_queue=64, max_bulk_batch=2)
    start(started, batcher)
    first = await held(model, batcher)
    document = asyncio.create_task(batcher.submit([f"chunk{i}" for i in range(6)], bulk=True))
    await asyncio.sleep(0.01)
    query = asyncio.create_task(batcher.submit(["query"]))
    await asyncio.sleep(0.01)
    model.gate.set()
    await first
    (vectors, _), (chunks, stats) = await asyncio.gather(query, document)
    assert vectors == ["QUERY"]
    assert chunks == [f"CHUNK{i}" for i in range(6)]
    # The query queued after the document ran first, alone; the document ran in bulk batches of 2.
    assert model.calls[1:] == [["query"], ["chunk0", "chunk1"], ["chunk2", "chunk3"], ["chunk4", "chunk5"]]
    assert stats.batch_size == 2


async def test_bulk_work_still_moves_under_constant_interactive_load(
    model: FakeModel, started: list[Batcher[str]]
) -> None:
    """Every BULK_TURN-th batch goes to bulk work while interactive work keeps arriving: ingest never starves."""
    batcher = Batcher(model, max_batch=1, max_wait=0, max_queue=256, max_bulk_batch=1)
    start(started, batcher)
    first = await held(model, batcher)
    document = asyncio.create_task(batcher.submit(["chunk0", "chunk1"], bulk=True))
    queries = [asyncio.create_task(batcher.submit([f"q{i}"])) for i in range(3 * BULK_TURN)]
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(first, document, *queries)
    order = [call[0] for call in model.calls[1:]]
    assert order.index("chunk0") == BULK_TURN  # after BULK_TURN query batches, not after all of them
    assert order.index("chunk1") == 2 * BULK_TURN + 1


async def test_bulk_and_interactive_texts_never_share_a_batch(model: FakeModel, started: list[Batcher[str]]) -> None:
    batcher = start(started, make(model, max_batch=8, max_wait=0.05))
    first = await held(model, batcher)
    waiting = [
        asyncio.create_task(batcher.submit(["doc"], bulk=True)),
        asyncio.create_task(batcher.submit(["q1"])),
        asyncio.create_task(batcher.submit(["q2"])),
    ]
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert model.calls[1:] == [["q1", "q2"], ["doc"]]


async def test_with_a_bulk_worker_a_query_never_waits_for_an_ingest(
    model: FakeModel, started: list[Batcher[str]]
) -> None:
    bulk_model = FakeModel()
    batcher = Batcher(model, max_batch=8, max_wait=0, max_queue=64, max_bulk_batch=2, run_bulk_batch=bulk_model)
    start(started, batcher)
    bulk_model.gate.clear()
    document = asyncio.create_task(batcher.submit([f"chunk{i}" for i in range(4)], bulk=True))
    assert await asyncio.to_thread(bulk_model.entered.wait, 5)  # the bulk worker is busy inside its model
    t = time.perf_counter()
    vectors, _ = await asyncio.wait_for(batcher.submit(["query"]), 5)
    assert vectors == ["QUERY"] and time.perf_counter() - t < 1.0
    assert not document.done()
    bulk_model.gate.set()
    chunks, _ = await document
    assert chunks == [f"CHUNK{i}" for i in range(4)]
    assert model.calls == [["query"]]  # interactive model: only the query
    assert bulk_model.calls == [["chunk0", "chunk1"], ["chunk2", "chunk3"]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
async def test_the_bulk_worker_runs_at_a_lower_cpu_priority_than_the_interactive_one(
    started: list[Batcher[str]],
) -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: dict[str, int] = {}

    def run(lane: str) -> Callable[[list[str]], Sequence[str]]:
        def batch(texts: list[str]) -> Sequence[str]:
            seen[lane] = niceness()
            return texts

        return batch

    base = niceness()
    batcher = Batcher(
        run("interactive"), max_batch=8, max_wait=0, max_queue=64, run_bulk_batch=run("bulk"), bulk_nice=5
    )
    start(started, batcher)
    await batcher.submit(["query"])
    await batcher.submit(["chunk"], bulk=True)
    assert seen == {"interactive": base, "bulk": min(19, base + 5)}
    assert niceness() == base  # the event loop's thread is untouched


async def test_close_fails_requests_waiting_in_either_lane(model: FakeModel, started: list[Batcher[str]]) -> None:
    bulk_model = FakeModel()
    batcher = Batcher(model, max_batch=8, max_wait=0, max_queue=64, run_bulk_batch=bulk_model)
    batcher.start()
    bulk_model.gate.clear()
    running = asyncio.create_task(batcher.submit(["a"], bulk=True))
    assert await asyncio.to_thread(bulk_model.entered.wait, 5)
    waiting = asyncio.create_task(batcher.submit(["b"], bulk=True))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)
    bulk_model.gate.set()
    await closing
    for task in (running, waiting):
        with pytest.raises(Unavailable):
            await task
