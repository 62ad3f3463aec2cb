"""Dynamic micro-batching: merge concurrent requests into model-sized batches on one worker thread."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ragline_common import context
from ragline_common.errors import DeadlineExceeded, Overloaded

R = TypeVar("R")


@dataclass
class _Pending(Generic[R]):
    texts: list[str]
    future: asyncio.Future[list[R]]
    deadline: float | None
    enqueued: float
    taken: int = 0  # texts already handed to a batch
    results: list[R | None] = field(default_factory=list)
    done_count: int = 0
    queue_seconds: float = 0.0


class Batcher(Generic[R]):
    """Bounded queue of texts → batches of at most `max_batch` → `run_batch` on a single worker thread.

    A full queue refuses at once (Overloaded); a request whose deadline passed or that was cancelled
    never reaches the model. While one batch runs, the next one fills, so under load batches are full.
    """

    def __init__(
        self,
        run_batch: Callable[[list[str]], list[R]],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._queue: collections.deque[_Pending[R]] = collections.deque()
        self._queued_texts = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._task: asyncio.Task[None] | None = None
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._on_depth = on_depth or (lambda depth: None)

    @property
    def depth(self) -> int:
        return self._queued_texts

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Overloaded("the embedder is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, texts: list[str]) -> tuple[list[R], float]:
        """Embed `texts`; returns the results in order and the seconds they waited in the queue."""
        if self._queued_texts + len(texts) > self.max_queue:
            raise Overloaded(
                f"embedder queue is full ({self._queued_texts} of {self.max_queue} texts waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        left = context.remaining()
        item: _Pending[R] = _Pending(
            texts=texts,
            future=loop.create_future(),
            deadline=None if left is None else time.monotonic() + left,
            enqueued=time.monotonic(),
            results=[None] * len(texts),
        )
        self._queue.append(item)
        self._set_depth(self._queued_texts + len(texts))
        self._wakeup.set()
        try:
            results = await item.future
        except asyncio.CancelledError:
            # The caller is gone: give back the places its unstarted texts held.
            self._release(item)
            raise
        return results, item.queue_seconds

    def _set_depth(self, depth: int) -> None:
        self._queued_texts = depth
        self._on_depth(depth)

    def _release(self, item: _Pending[R]) -> None:
        if item in self._queue:
            self._queue.remove(item)
            self._set_depth(self._queued_texts - (len(item.texts) - item.taken))

    def _take_batch(self) -> list[tuple[_Pending[R], int, int]]:
        batch: list[tuple[_Pending[R], int, int]] = []
        room = self.max_batch
        now = time.monotonic()
        while self._queue and room > 0:
            item = self._queue[0]
            if item.future.done() or (item.deadline is not None and item.deadline <= now):
                self._queue.popleft()
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
                self._queue.popleft()
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # A partial batch waits briefly for company; a full one goes at once.
            waited_until = time.monotonic() + self.max_wait
            while self._queued_texts < self.max_batch and time.monotonic() < waited_until:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), waited_until - time.monotonic())
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            texts = [t for item, a, b in batch for t in item.texts[a:b]]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, texts)
            except Exception as exc:  # a model failure fails this batch's requests, not the loop
                for item, _, _ in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self._on_batch(len(texts), time.perf_counter() - started)
            pos = 0
            for item, a, b in batch:
                item.results[a:b] = results[pos : pos + (b - a)]
                pos += b - a
                item.done_count += b - a
                if item.done_count == len(item.texts) and not item.future.done():
                    item.future.set_result(item.results)  # type: ignore[arg-type]
