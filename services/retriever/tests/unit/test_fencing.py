"""Ingest fences: a DELETE fences the ingests of its id in flight, and ingests of one id run one at a time."""

from __future__ import annotations

import asyncio

import pytest

from ragline_common.errors import InvalidInput
from ragline_retriever.fencing import IngestFences
from ragline_retriever.filters import parse_conditions

pytestmark = pytest.mark.unit


async def test_delete_fences_running_and_waiting_ingests_only() -> None:
    fences = IngestFences()
    async with fences.ingesting(["a", "b"]) as first:
        waiting = asyncio.create_task(_hold(fences, "a"))
        await asyncio.sleep(0.01)  # the second ingest of "a" registered and waits for the lock
        assert fences.fence("a") == 2
        assert first["a"].fenced and not first["b"].fenced
    second = await waiting
    assert second.fenced
    assert fences.fence("a") == 0  # nothing left in flight
    async with fences.ingesting(["a"]) as later:
        assert not later["a"].fenced  # an ingest received after the DELETE is not fenced by it


async def _hold(fences: IngestFences, doc_id: str):  # type: ignore[no-untyped-def]
    async with fences.ingesting([doc_id]) as tickets:
        return tickets[doc_id]


async def test_same_id_ingests_run_one_at_a_time_and_opposite_orders_do_not_deadlock() -> None:
    fences = IngestFences()
    active: set[str] = set()
    overlaps: list[str] = []

    async def ingest(ids: list[str]) -> None:
        async with fences.ingesting(ids):
            for i in ids:
                if i in active:
                    overlaps.append(i)
                active.add(i)
            await asyncio.sleep(0.01)
            active.difference_update(ids)

    await asyncio.wait_for(asyncio.gather(*(ingest(o) for o in (["x", "y"], ["y", "x"], ["x"], ["y"]))), 5)
    assert overlaps == []
    assert fences.fence("x") == 0 and fences.fence("y") == 0


@pytest.mark.parametrize("value", [2**53 + 1, float(2**60), -(2**60)])
def test_filter_integers_beyond_2_53_are_named_as_such(value: float) -> None:
    with pytest.raises(InvalidInput, match=r"outside ±2\^53"):
        parse_conditions([{"key": "n", "equals": value}])


def test_fractional_equality_still_refused_as_fractional() -> None:
    with pytest.raises(InvalidInput, match="fractional"):
        parse_conditions([{"key": "n", "equals": 1.5}])


async def test_a_ticket_is_fenced_before_its_ingest_takes_the_lock() -> None:
    """Registration comes first (before chunking a large text), so a DELETE then already fences the ingest."""
    fences = IngestFences()
    with fences.registered(["big"]) as tickets:
        assert fences.fence("big") == 1
        async with fences.serialized(["big"]):
            assert tickets["big"].fenced
    assert fences.fence("big") == 0
