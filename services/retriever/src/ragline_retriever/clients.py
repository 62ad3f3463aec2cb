"""The embedder as the retriever sees it: one gRPC channel, Info and Embed with deadlines, query calls coalesced."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline.embedder.v1 import embedder_pb2_grpc
from ragline_common import context
from ragline_common.errors import DeadlineExceeded, InvalidInput, Overloaded, RaglineError, TooLarge, Unavailable
from ragline_common.grpc_client import health_probe, make_channel, unary

EMBEDDER_SERVICE = "ragline.embedder.v1.EmbedderService"

# Texts per coalesced RPC until the embedder's Info gives its own batch size: one model batch, no more.
MAX_TEXTS = 32
# RPCs of coalesced queries at once. One carries everything that waits: measured on 2 cores at 32 clients, 13
# queries an RPC and 1.15x the one process's CPU per search, against 9 and 1.24x when a second one went out after
# 10 ms. The second is for a full batch, or one that has waited MAX_WAIT behind a stalled call.
MAX_IN_FLIGHT = 2
# How long a query waits for the RPC in flight before its batch goes out beside it (seconds): longer than an
# Embed RPC takes under load here (70-90 ms at 32 clients), short against a deadline.
MAX_WAIT = 0.100
# Texts allowed to wait for an RPC; beyond it a query is refused at once, as the embedder's own queue does.
MAX_PENDING = 1024


class EmbedStub(Protocol):
    """The one method of the generated EmbedderServiceStub the coalescer calls."""

    def Embed(  # noqa: N802 - the RPC's name
        self, request: epb.EmbedRequest, *, timeout: float | None = ..., metadata: Any = ...
    ) -> Awaitable[epb.EmbedResponse]: ...


@dataclass(eq=False)
class _Waiter:
    """One caller's texts, waiting for (or riding in) a coalesced RPC."""

    texts: list[str]
    future: asyncio.Future[np.ndarray]
    deadline: float  # absolute, time.monotonic()
    ctx: contextvars.Context  # the caller's request id and trace, for an RPC it is the first of
    arrived: float  # loop time
    batch: list[_Waiter] = field(default_factory=list)  # set when sent: everyone in the same RPC
    task: asyncio.Task[None] | None = None


class EmbedCoalescer:
    """Embed calls for queries share RPCs: a call made while none is in flight goes out at once, in its caller's
    own task, with nothing added; the calls that arrive while one is in flight go together in the next RPC, at
    most `max_texts` texts each, and each caller gets its own rows back.

    A waiting call goes out beside the one in flight once it has waited `max_wait` or its batch is full (at most
    `max_in_flight` RPCs). Each caller keeps its own deadline (the RPC gets the latest of its callers'); a caller
    that leaves cancels nothing of the others, and the RPC itself once nobody is left to answer. A failed RPC
    fails exactly its callers; a refusal of its content (400/413) is retried caller by caller, so that one bad
    text fails only the call that brought it. Bulk calls (ingest) are never coalesced.
    """

    def __init__(
        self,
        stub: EmbedStub,
        timeout: float,
        *,
        max_texts: int = MAX_TEXTS,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_wait: float = MAX_WAIT,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if max_texts < 1 or max_in_flight < 1 or max_wait < 0 or max_pending < 1:
            raise ValueError(
                "max_texts, max_in_flight and max_pending must be at least 1 and max_wait at least 0, got "
                f"{max_texts}, {max_in_flight}, {max_pending} and {max_wait}"
            )
        self.stub = stub
        self.timeout = timeout
        self.max_texts = max_texts
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.rpcs = 0  # Embed RPCs sent for queries (not bulk), for tests and logs
        self._pending: collections.deque[_Waiter] = collections.deque()
        self._pending_texts = 0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def embed(self, texts: list[str], *, bulk: bool = False) -> np.ndarray:
        """Vectors of `texts` in order, as a float32 matrix; `bulk` (ingest) yields to queries in the embedder."""
        if bulk:
            return await self._call(texts, epb.PRIORITY_BULK)
        if self._closed:
            raise Unavailable("the embedder client is closed")
        if (self._in_flight == 0 and not self._pending) or len(texts) >= self.max_texts:
            # Nothing to wait for (or a batch of its own): the caller's own RPC, exactly as without coalescing.
            self._in_flight += 1
            self.rpcs += 1
            try:
                return await self._call(texts, epb.PRIORITY_INTERACTIVE)
            finally:
                self._in_flight -= 1
                self._kick()
        return await self._wait(texts)

    async def _wait(self, texts: list[str]) -> np.ndarray:
        # Capped like a call of its own: the caller's remaining time, at most the client's timeout.
        remaining = context.remaining()
        left = self.timeout if remaining is None else min(remaining, self.timeout)
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed before the call was made")
        if self._pending_texts + len(texts) > self.max_pending:
            raise Overloaded(
                f"{self._pending_texts} query texts already wait for the embedder (at most {self.max_pending}); "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            texts=texts,
            future=loop.create_future(),
            deadline=time.monotonic() + left,
            ctx=contextvars.copy_context(),
            arrived=loop.time(),
        )
        self._pending.append(waiter)
        self._pending_texts += len(texts)
        self._kick()
        try:
            # wait_for cancels the future when the deadline passes or the caller is cancelled: its RPC skips it.
            return await asyncio.wait_for(waiter.future, left)
        except TimeoutError:
            raise DeadlineExceeded("embedder did not answer within the deadline") from None
        finally:
            self._leave(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        """The caller is done (answered, failed, timed out or gone): drop what only it still needed."""
        if not waiter.batch:
            if waiter in self._pending:  # never sent
                self._pending.remove(waiter)
                self._pending_texts -= len(waiter.texts)
            return
        task = waiter.task
        if task is not None and not task.done() and all(w.future.done() for w in waiter.batch):
            task.cancel()  # nobody is left to read the answer: free the embedder's work too

    def _kick(self) -> None:
        """Send what waits, as far as the bounds allow; arm a timer for the oldest waiter's `max_wait`."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._pending and self._in_flight < self.max_in_flight and not self._closed:
            if self._in_flight and self._pending_texts < self.max_texts:
                due = self._pending[0].arrived + self.max_wait
                if loop.time() < due:
                    self._timer = loop.call_at(due, self._kick)
                    return
            batch = self._take()
            if batch:
                self._launch(batch)

    def _take(self) -> list[_Waiter]:
        batch: list[_Waiter] = []
        count = 0
        while self._pending:
            waiter = self._pending[0]
            if waiter.future.done():  # left before being sent
                self._pending.popleft()
                self._pending_texts -= len(waiter.texts)
                continue
            if batch and count + len(waiter.texts) > self.max_texts:
                break
            self._pending.popleft()
            self._pending_texts -= len(waiter.texts)
            batch.append(waiter)
            count += len(waiter.texts)
        return batch

    def _launch(self, batch: list[_Waiter]) -> None:
        # The RPC runs in its own task, in a copy of its first caller's context (request id, trace), with the
        # latest of its callers' deadlines, so that no caller's deadline or departure cuts the others' call.
        ctx = batch[0].ctx.copy()
        ctx.run(context.deadline_var.set, max(w.deadline for w in batch))
        self._in_flight += 1
        self.rpcs += 1
        task = asyncio.get_running_loop().create_task(self._run(batch), context=ctx)
        self._tasks.add(task)
        for waiter in batch:
            waiter.batch = batch
            waiter.task = task

    async def _run(self, batch: list[_Waiter]) -> None:
        try:
            live = [w for w in batch if not w.future.done()]
            if not live:
                return
            try:
                vectors = await self._call([t for w in live for t in w.texts], epb.PRIORITY_INTERACTIVE)
            except asyncio.CancelledError:
                for waiter in live:  # closing (when every caller has left, their futures are done already)
                    if not waiter.future.done():
                        waiter.future.set_exception(Unavailable("the embedder client is closing"))
                raise
            except Exception as exc:
                self._fail(live, exc)
                return
            offset = 0
            for waiter in live:
                n = len(waiter.texts)
                if not waiter.future.done():
                    waiter.future.set_result(vectors[offset : offset + n])
                offset += n
        finally:
            self._in_flight -= 1
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._kick()

    def _fail(self, live: list[_Waiter], exc: Exception) -> None:
        refused = isinstance(exc, InvalidInput | TooLarge | UnicodeError)
        if refused and len(live) > 1:
            # The embedder refused the batch's content: one caller's text, probably. Each goes again alone.
            for waiter in live:
                if not waiter.future.done():
                    self._launch([waiter])
            return
        for waiter in live:
            if not waiter.future.done():
                # A copy each: one exception object raised in several tasks would share (and grow) a traceback.
                waiter.future.set_exception(copy.copy(exc))

    async def _call(self, texts: list[str], priority: epb.Priority.ValueType) -> np.ndarray:
        request = epb.EmbedRequest(texts=texts, priority=priority)
        reply = await unary(self.stub.Embed, request, peer="embedder", timeout=self.timeout)
        if len(reply.embeddings) != len(texts):
            raise RaglineError(f"the embedder answered {len(reply.embeddings)} vectors for {len(texts)} texts")
        # One conversion: the repeated floats straight into one matrix (rows are views, handed out as they are).
        return np.asarray([e.values for e in reply.embeddings], dtype=np.float32)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self._pending:
            if not waiter.future.done():
                waiter.future.set_exception(Unavailable("the embedder client is closing"))
        self._pending.clear()
        self._pending_texts = 0
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class EmbedderClient:
    def __init__(self, addr: str, timeout: float) -> None:
        self.addr = addr
        self.timeout = timeout
        self.channel = make_channel(addr)
        self.stub = embedder_pb2_grpc.EmbedderServiceStub(self.channel)
        self.coalescer = EmbedCoalescer(self.stub, timeout)

    def probe(self) -> Callable[[], Awaitable[None]]:
        return health_probe(self.channel, EMBEDDER_SERVICE)

    async def info(self) -> epb.InfoResponse:
        info = await unary(self.stub.Info, epb.InfoRequest(), peer="embedder", timeout=min(self.timeout, 5.0))
        # A coalesced RPC carries one model batch at most, and never more than one request may.
        limits = [n for n in (info.max_batch_size, info.max_texts_per_request) if n > 0]
        if limits:
            self.coalescer.max_texts = min(limits)
        return info

    async def embed(self, texts: list[str], *, bulk: bool = False) -> np.ndarray:
        """Vectors of `texts` in order, as a float32 matrix; `bulk` (ingest) yields to queries in the embedder."""
        return await self.coalescer.embed(texts, bulk=bulk)

    async def close(self) -> None:
        await self.coalescer.close()
        await self.channel.close()
