"""What a Qdrant server's refusals become in ClientStore: gRPC codes and REST statuses, injected and real."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from qdrant_client import AsyncQdrantClient

from ragline_common.errors import InvalidInput, NotFound, Overloaded, RaglineError, TooLarge, Unavailable
from ragline_retriever.store import CollectionMeta, SearchQuery
from ragline_retriever.store_client import ClientStore, store_error

from .qdrant_server import QdrantStandIn

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

META = CollectionMeta(4, "test-model", "rev-1")
Code = grpc.StatusCode


@pytest_asyncio.fixture(loop_scope="session")
async def qdrant() -> AsyncIterator[QdrantStandIn]:
    server = QdrantStandIn(version="1.20.0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def store(qdrant: QdrantStandIn) -> AsyncIterator[ClientStore]:
    s = ClientStore("ragline", url=qdrant.url, timeout=1)
    await s.create(META)
    try:
        yield s
    finally:
        await s.close()


def nowhere() -> str:
    """A loopback address nothing listens on (the stand-ins pick random 127/8 addresses, never 127.0.0.1)."""
    return f"http://127.0.0.{random.randint(2, 254)}:6333"  # noqa: S311


async def raised(coro: object) -> RaglineError:
    with pytest.raises(RaglineError) as err:
        await coro  # type: ignore[misc]
    return err.value


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (Code.INVALID_ARGUMENT, InvalidInput),
        (Code.FAILED_PRECONDITION, InvalidInput),
        (Code.NOT_FOUND, NotFound),
        (Code.RESOURCE_EXHAUSTED, Overloaded),
        (Code.UNAVAILABLE, Unavailable),
        (Code.DEADLINE_EXCEEDED, Unavailable),
        (Code.INTERNAL, Unavailable),
        (Code.UNAUTHENTICATED, Unavailable),  # our API key is wrong: the operator's fix, not the caller's
    ],
)
async def test_grpc_status_maps_to_its_kind(
    qdrant: QdrantStandIn, store: ClientStore, code: grpc.StatusCode, kind: type[RaglineError]
) -> None:
    qdrant.fail("Count", code, f"injected {code.name}")
    err = await raised(store.count())
    assert type(err) is kind
    assert code.name in err.message and f"injected {code.name}" in err.message
    assert await store.count() == 0  # the fault was one call; the next one reaches the engine


async def test_resource_exhausted_carries_the_servers_retry_after(qdrant: QdrantStandIn, store: ClientStore) -> None:
    qdrant.fail("Upsert", Code.RESOURCE_EXHAUSTED, "rate limit", retry_after=7)
    err = await raised(store.upsert([]))
    assert type(err) is Overloaded and err.retry_after == 7.0 and "rate limit" in err.message


async def test_real_refusals_from_the_engine(qdrant: QdrantStandIn, store: ClientStore) -> None:
    wrong_dim = SearchQuery([1.0, 0.0, 0.0], None, 3, [], candidates=10, rrf_k=60)
    err = await raised(store.search(wrong_dim))
    assert type(err) is InvalidInput and "INVALID_ARGUMENT" in err.message

    other = ClientStore("missing", url=qdrant.url, timeout=1)
    try:
        err = await raised(other.count())
        assert type(err) is NotFound and "missing" in err.message
        await other.create(META)
        assert await other.open() == META
        err = await raised(other.create(META))  # a second create of the same name is a refusal, not an outage
        assert type(err) is InvalidInput and "already exists" in err.message
    finally:
        await other.close()


async def test_a_slow_server_is_unavailable_within_the_timeout(qdrant: QdrantStandIn, store: ClientStore) -> None:
    qdrant.fail("Count", None, delay=2.0)  # past ClientStore's timeout of 1 s
    err = await raised(store.count())
    assert type(err) is Unavailable and "DEADLINE_EXCEEDED" in err.message


async def test_no_server_is_unavailable() -> None:
    store = ClientStore("ragline", url=nowhere(), timeout=1)
    try:
        err = await raised(store.open())
        assert type(err) is Unavailable and "UNAVAILABLE" in err.message
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidInput),
        (404, NotFound),
        (409, InvalidInput),
        (413, TooLarge),
        (422, InvalidInput),
        (429, Overloaded),
        (401, Unavailable),
        (500, Unavailable),
        (503, Unavailable),
    ],
)
async def test_rest_status_maps_to_its_kind(qdrant: QdrantStandIn, status: int, kind: type[RaglineError]) -> None:
    qdrant.set_rest_status(status)
    client = AsyncQdrantClient(url=qdrant.url, prefer_grpc=False, check_compatibility=False, timeout=1)
    try:
        with pytest.raises(Exception) as exc:
            await client.count("ragline")
    finally:
        await client.close()
    err = store_error(exc.value)
    assert type(err) is kind, exc.value
    assert qdrant.state.rest_paths == ["POST /collections/ragline/points/count"]
    if status == 429:  # the stand-in sends Retry-After: 3, as a rate-limited server does
        assert err.retry_after == 3.0
    else:
        assert f"HTTP {status}" in err.message and "injected status" in err.message


async def test_rest_connection_refused_is_unavailable() -> None:
    client = AsyncQdrantClient(url=nowhere(), prefer_grpc=False, check_compatibility=False, timeout=1)
    try:
        with pytest.raises(Exception) as exc:
            await client.count("ragline")
    finally:
        await client.close()
    err = store_error(exc.value)
    assert type(err) is Unavailable and "Connect" in err.message


async def test_other_exceptions_are_not_store_failures() -> None:
    assert store_error(KeyError("payload")) is None
    assert store_error(AssertionError("bug")) is None
    assert store_error(ValueError("a bug of ours, not the store's")) is None
