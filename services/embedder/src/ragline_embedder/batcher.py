"""Dynamic micro-batching: merge concurrent requests into model-sized batches on one worker thread."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ragline_common import context
from ragline_common.errors import DeadlineExceeded, Overloaded, RaglineError, Unavailable

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")


class BatchFailed(RaglineError):
    """The model raised on a batch: an internal error (500 / INTERNAL), logged once by the batcher."""


@dataclass(frozen=True)
class Stats:
    """Where one request's time went: waiting for a batch, and inside the model."""

    queue_seconds: float
    inference_seconds: float
    batch_size: int  # texts in the (largest) model call this request ran in


# eq=False: identity comparison, so deque.remove() finds this very request, in O(1) per element.
@dataclass(eq=False)
class _Pending(Generic[R]):
    texts: Sequence[str]
    future: asyncio.Future[list[R]]
    deadline: float | None
    enqueued: float
    bulk: bool = False
    taken: int = 0  # texts already handed to a batch
    results: list[R | None] = field(default_factory=list)
    done_count: int = 0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    batch_size: int = 0


# Under contention, one bulk batch after this many interactive ones.
BULK_TURN = 4


def lower_thread_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness (Linux: nice is per thread, and threads it starts inherit it)."""
    if not nice or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # a sandbox may refuse it; the lanes still never share a batch
        log.warning("could not lower the bulk worker's CPU priority: %s", exc)


class Batcher(Generic[R]):
    """Bounded queue of texts → batches of at most `max_batch` → `run_batch` on a single worker thread.

    A full queue refuses at once (Overloaded); a request whose deadline passed or that was cancelled
    never reaches the model. While one batch runs the next one fills, so under load batches are full.
    A partial batch waits at most `max_wait` seconds, counted from when its oldest request arrived, and only
    while the previous batch suggests that more texts are on their way.

    Two lanes share the queue bound: interactive requests (a query to search with) and bulk requests
    (documents being ingested), which never share a batch, so a short query is never padded to a long
    document. With `run_bulk_batch` (a second copy of the model) bulk work has its own worker thread, at a
    CPU priority lowered by `bulk_nice`, and never holds up a query. Without it the lanes take turns on one
    worker: interactive first, bulk while no interactive request waits and as every `BULK_TURN`-th batch
    otherwise (so ingest still moves under full search load), at most `max_bulk_batch` texts at a time, so a
    query waits for one small bulk batch at most.
    """

    def __init__(
        self,
        run_batch: Callable[[list[str]], Sequence[R]],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        max_bulk_batch: int | None = None,
        run_bulk_batch: Callable[[list[str]], Sequence[R]] | None = None,
        bulk_nice: int = 0,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.max_bulk_batch = max(1, min(max_batch, max_bulk_batch or max_batch))
        self._queue: collections.deque[_Pending[R]] = collections.deque()  # interactive lane
        self._bulk: collections.deque[_Pending[R]] = collections.deque()
        self._interactive_streak = 0  # interactive batches run in a row while bulk work waited
        self._queued_texts = 0
        self._running: dict[str, list[_Pending[R]]] = {}  # per worker loop: the requests in its current batch
        self._expected = max_batch  # texts worth waiting for; until a batch has run, assume a full one
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._run_bulk_batch = run_bulk_batch
        self._bulk_wakeup = asyncio.Event()
        self._bulk_executor = (
            ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="embed-bulk",
                initializer=lower_thread_priority,
                initargs=(bulk_nice,),
            )
            if run_bulk_batch
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._on_depth = on_depth or (lambda depth: None)

    @property
    def depth(self) -> int:
        """Texts waiting for the model (not counting the batch that runs now)."""
        return self._queued_texts

    def start(self) -> None:
        if self._bulk_executor is None:
            self._tasks = [asyncio.create_task(self._loop("shared"), name="batcher")]
        else:
            self._tasks = [
                asyncio.create_task(self._loop("interactive"), name="batcher"),
                asyncio.create_task(self._loop("bulk"), name="batcher-bulk"),
            ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        running = [item for items in self._running.values() for item in items]
        for item in [*self._queue, *self._bulk, *running]:
            if not item.future.done():
                item.future.set_exception(Unavailable("the embedder is shutting down"))
        self._queue.clear()
        self._bulk.clear()
        self._set_depth(0)
        # Waits for a running batch off the event loop, which keeps serving the drain meanwhile.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self._bulk_executor is not None:
            await asyncio.to_thread(self._bulk_executor.shutdown, wait=True, cancel_futures=True)

    def run_sync(self, fn: Callable[[], T], *, bulk: bool = False) -> asyncio.Future[T]:
        """Run `fn` on a model worker thread (the bulk one with `bulk`), serialised with its batches."""
        executor = self._bulk_executor if bulk and self._bulk_executor else self._executor
        return asyncio.get_running_loop().run_in_executor(executor, fn)

    async def submit(self, texts: Sequence[str], *, bulk: bool = False) -> tuple[list[R], Stats]:
        """Embed `texts` (in the bulk lane with `bulk`); returns the results in order and where the time went."""
        if self._queued_texts + len(texts) > self.max_queue:
            raise Overloaded(
                f"embedder queue is full ({self._queued_texts} of {self.max_queue} texts waiting); retry later"
            )
        left = context.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("deadline passed before the request reached the embedder")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        item: _Pending[R] = _Pending(
            texts=texts,
            future=loop.create_future(),
            deadline=None if left is None else now + left,
            enqueued=now,
            bulk=bulk,
            results=[None] * len(texts),
        )
        self._lane(item).append(item)
        self._set_depth(self._queued_texts + len(texts))
        (self._bulk_wakeup if bulk and self._bulk_executor else self._wakeup).set()
        try:
            # wait_for cancels the future on timeout, so a finished batch will not set it.
            results = await asyncio.wait_for(item.future, left)
        except TimeoutError:
            self._release(item)
            raise DeadlineExceeded(f"deadline ({left:.3g}s) passed while waiting for the embedder") from None
        except asyncio.CancelledError:
            # The caller is gone: give back the places its unstarted texts held.
            self._release(item)
            raise
        return results, Stats(item.queue_seconds, item.inference_seconds, item.batch_size)

    def _set_depth(self, depth: int) -> None:
        self._queued_texts = depth
        self._on_depth(depth)

    def _lane(self, item: _Pending[R]) -> collections.deque[_Pending[R]]:
        return self._bulk if item.bulk else self._queue

    def _release(self, item: _Pending[R]) -> None:
        try:
            self._lane(item).remove(item)
        except ValueError:
            return  # already fully handed to a batch
        self._set_depth(self._queued_texts - (len(item.texts) - item.taken))

    def _bulk_turn(self, worker: str) -> bool:
        """Whether `worker`'s next batch comes from the bulk lane."""
        if worker != "shared":
            return worker == "bulk"
        # One worker for both: interactive while any waits (bar every BULK_TURN-th batch), else bulk.
        return bool(self._bulk) and (not self._queue or self._interactive_streak >= BULK_TURN)

    def _take_batch(self, bulk: bool) -> list[tuple[_Pending[R], int, int]]:
        batch: list[tuple[_Pending[R], int, int]] = []
        if bulk:
            lane, room = self._bulk, self.max_bulk_batch
            self._interactive_streak = 0
        else:
            lane, room = self._queue, self.max_batch
            self._interactive_streak = self._interactive_streak + 1 if self._bulk else 0
        now = time.monotonic()
        while lane and room > 0:
            item = lane[0]
            if item.future.done() or (item.deadline is not None and item.deadline <= now):
                lane.popleft()
                self._set_depth(self._queued_texts - (len(item.texts) - item.taken))
                if not item.future.done():
                    item.future.set_exception(DeadlineExceeded("deadline passed while waiting for the embedder"))
                continue
            if item.taken == 0:
                item.queue_seconds = now - item.enqueued
            n = min(room, len(item.texts) - item.taken)
            batch.append((item, item.taken, item.taken + n))
            item.taken += n
            room -= n
            self._set_depth(self._queued_texts - n)
            if item.taken == len(item.texts):
                lane.popleft()
        return batch

    async def _wait_for_company(self) -> None:
        """Let a partial batch fill while company is likely, for at most `max_wait` after its oldest request.

        Company is expected from the callers of the last batch, who are about to send their next texts, and
        from those that queued while it ran. A lone sequential caller (a batch of one, nobody queued) never waits.
        """
        if not self._queue:
            return
        expected = self._expected
        until = self._queue[0].enqueued + self.max_wait
        while self._queued_texts < expected:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                return

    def _has_work(self, worker: str) -> bool:
        if worker == "shared":
            return bool(self._queue or self._bulk)
        return bool(self._bulk if worker == "bulk" else self._queue)

    async def _loop(self, worker: str) -> None:
        """One model worker: "shared" serves both lanes; "interactive" and "bulk" serve one each."""
        loop = asyncio.get_running_loop()
        wakeup = self._bulk_wakeup if worker == "bulk" else self._wakeup
        executor = self._bulk_executor if worker == "bulk" else self._executor
        while True:
            while not self._has_work(worker):
                wakeup.clear()
                await wakeup.wait()
            bulk = self._bulk_turn(worker)
            if not bulk:  # bulk work comes in many texts at once and is not in a hurry to be joined
                await self._wait_for_company()
            batch = self._take_batch(bulk)
            if not batch:
                continue
            texts = [t for item, a, b in batch for t in item.texts[a:b]]
            self._running[worker] = [item for item, _, _ in batch]
            run_batch = self._run_bulk_batch if bulk and self._run_bulk_batch else self._run_batch
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(executor, run_batch, texts)
                if len(results) != len(texts):
                    raise RuntimeError(f"model returned {len(results)} results for {len(texts)} texts")
            except Exception:
                self._running[worker] = []
                # A model failure fails this batch's requests, not the loop or the requests queued behind it.
                log.exception("model failed on a batch of %d texts", len(texts))
                for item, _, _ in batch:
                    self._release(item)  # the rest of a split request would be wasted work
                    if not item.future.done():
                        item.future.set_exception(
                            BatchFailed(f"the model failed on a batch of {len(texts)} texts; see the embedder logs")
                        )
                continue
            # Not in a `finally`: when close() cancels this loop mid-batch it still sees who to fail.
            self._running[worker] = []
            seconds = time.perf_counter() - started
            if not bulk:
                self._expected = min(self.max_batch, len(texts) + sum(len(i.texts) - i.taken for i in self._queue))
            self._on_batch(len(texts), seconds)
            pos = 0
            for item, a, b in batch:
                item.results[a:b] = results[pos : pos + (b - a)]
                pos += b - a
                item.done_count += b - a
                item.inference_seconds += seconds
                item.batch_size = max(item.batch_size, len(texts))
                if item.done_count == len(item.texts) and not item.future.done():
                    item.future.set_result(item.results)  # type: ignore[arg-type]
