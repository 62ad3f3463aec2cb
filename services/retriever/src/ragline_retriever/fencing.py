"""Delete wins over ingest: per-id tickets that a DELETE fences, and one ingest of an id at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass


@dataclass(eq=False)
class Ticket:
    """One ingest of one id in flight; a DELETE of that id fences it so that it never writes."""

    fenced: bool = False


class _Slot:
    """Per id: the lock that runs its ingests one at a time, and the tickets of those in flight."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.tickets: set[Ticket] = set()


class IngestFences:
    """In-process state only: an ingest lives and dies with the process that runs it, so a restart leaves no
    ingest to fence (and the store never holds a document whose chunk 0, written last, is missing)."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    @contextlib.contextmanager
    def registered(self, ids: list[str]) -> Iterator[dict[str, Ticket]]:
        """A ticket per id, registered at once: a DELETE of one of the ids from now on fences this ingest."""
        tickets = {i: Ticket() for i in ids}
        for i in ids:
            self._slots.setdefault(i, _Slot()).tickets.add(tickets[i])
        try:
            yield tickets
        finally:
            for i in ids:
                slot = self._slots.get(i)
                if slot is None:
                    continue
                slot.tickets.discard(tickets[i])
                # Every holder of or waiter on the lock holds a ticket: no tickets means nobody needs the slot.
                if not slot.tickets:
                    del self._slots[i]

    @contextlib.asynccontextmanager
    async def serialized(self, ids: list[str]) -> AsyncIterator[None]:
        """Hold each id's lock, taken in sorted order (two multi-document upserts cannot deadlock), so that
        ingests of one id run one at a time and concurrent identical ingests give one `created`, then
        `unchanged`. Only inside `registered(ids)`, which keeps the slots alive."""
        async with contextlib.AsyncExitStack() as stack:
            for i in sorted(ids):
                await stack.enter_async_context(self._slots[i].lock)
            yield

    @contextlib.asynccontextmanager
    async def ingesting(self, ids: list[str]) -> AsyncIterator[dict[str, Ticket]]:
        """`registered` and `serialized` at once."""
        with self.registered(ids) as tickets:
            async with self.serialized(ids):
                yield tickets

    def fence(self, doc_id: str) -> int:
        """Fence every ingest of `doc_id` in flight; how many there were. Call it under the store's write lock,
        which an ingest also holds while it checks its ticket and writes."""
        slot = self._slots.get(doc_id)
        fresh = [t for t in slot.tickets if not t.fenced] if slot else []
        for ticket in fresh:
            ticket.fenced = True
        return len(fresh)
