"""ClientStore's server branch over real gRPC, against qdrant-client's own servicers in front of a real engine."""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from qdrant_client import grpc as qg
from qdrant_client import models
from qdrant_client.async_qdrant_remote import AsyncQdrantRemote

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_common.serve import Service
from ragline_common.testing import running
from ragline_retriever.__main__ import build
from ragline_retriever.store import (
    CHUNK_INDEX,
    DOC_ID,
    METADATA,
    CollectionMeta,
    FieldMatch,
    PointIn,
    SearchQuery,
    Sparse,
)
from ragline_retriever.store_client import ClientStore

from .conftest import retriever_settings
from .qdrant_server import QdrantStandIn
from .test_retriever import DOCS, ingest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

META = CollectionMeta(4, "test-model", "rev-1")
BIG = 300  # chunks of one document: more than one scroll page (256)
# Three small documents, each with its own direction in the dense space and its own sparse terms.
SMALL = {
    "sea": ([1.0, 0.0, 0.0, 0.0], [10, 11], {"topic": "science", "year": 2023, "published": "2023-08-20T08:30:00Z"}),
    "bread": ([0.0, 1.0, 0.0, 0.0], [20, 21], {"topic": "food", "year": 2019, "published": "2019-05-01T00:00:00Z"}),
    "rust": ([0.0, 0.0, 1.0, 0.0], [30, 31], {"topic": "code", "year": 2021, "published": "2021-03-10T12:00:00Z"}),
}


def point_id(doc_id: str, index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}#{index}"))


def points() -> list[PointIn]:
    out = [
        PointIn(
            point_id(doc_id, 0),
            dense,
            Sparse(terms, [1.0, 1.0]),
            {DOC_ID: doc_id, CHUNK_INDEX: 0, METADATA: meta, "text": doc_id},
        )
        for doc_id, (dense, terms, meta) in SMALL.items()
    ]
    out += [
        PointIn(point_id("log", i), [0.0, 0.0, 0.0, 1.0], Sparse([40 + i % 5], [1.0]), {DOC_ID: "log", CHUNK_INDEX: i})
        for i in range(BIG)
    ]
    return out


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
    s = ClientStore("ragline", url=qdrant.url, timeout=5)
    try:
        yield s
    finally:
        await s.close()


def query(
    dense: list[float], sparse: Sparse | None, k: int = 3, conditions: list[FieldMatch] | None = None
) -> SearchQuery:
    return SearchQuery(dense, sparse, k, conditions or [], candidates=50, rrf_k=60)


async def test_collection_indexes_and_metadata_round_trip(qdrant: QdrantStandIn, store: ClientStore) -> None:
    assert await store.open() is None
    await store.create(META)
    assert await store.open() == META  # read back from the server's collection metadata, not a sidecar

    (create,) = qdrant.requests("Create")
    assert create.vectors_config.params_map.map["dense"].size == 4
    assert create.vectors_config.params_map.map["dense"].distance == qg.Distance.Cosine
    assert create.sparse_vectors_config.map["bm25"].modifier == qg.Modifier.Idf
    assert qdrant.field_indexes["ragline"] == {
        DOC_ID: models.PayloadSchemaType.KEYWORD,
        CHUNK_INDEX: models.PayloadSchemaType.INTEGER,
    }
    assert all(r.wait for r in qdrant.requests("CreateFieldIndex"))
    assert store.server_version == "1.20.0"


async def test_upsert_count_retrieve_scroll_delete(qdrant: QdrantStandIn, store: ClientStore) -> None:
    await store.create(META)
    await store.upsert(points())
    assert all(r.wait for r in qdrant.requests("Upsert"))
    assert await store.count() == len(SMALL) + BIG
    assert await store.count("log") == BIG
    assert all(r.exact for r in qdrant.requests("Count"))

    got = await store.retrieve([point_id("sea", 0), point_id("rust", 0)])
    assert {p.payload[DOC_ID]: p.payload[METADATA]["year"] for p in got} == {"sea": 2023, "rust": 2021}

    chunks = await store.scroll_doc("log")
    assert sorted(p.payload[CHUNK_INDEX] for p in chunks) == list(range(BIG))
    assert len(qdrant.requests("Scroll")) == 2  # 256 + 44: the offset of the second page came back over gRPC

    await store.delete_doc("log", from_index=100)
    assert await store.count("log") == 100
    assert max(p.payload[CHUNK_INDEX] for p in await store.scroll_doc("log")) == 99
    await store.delete_doc("log")
    assert await store.count("log") == 0
    assert await store.count() == len(SMALL)


async def test_dense_hybrid_and_filters(qdrant: QdrantStandIn, store: ClientStore) -> None:
    await store.create(META)
    await store.upsert(points())

    dense_hits = await store.search(query([0.1, 0.9, 0.0, 0.0], None))
    assert dense_hits[0].payload[DOC_ID] == "bread" and dense_hits[0].score == pytest.approx(0.9938, abs=1e-3)
    assert "doc_text" not in dense_hits[0].payload

    # Dense points to "sea", the sparse terms to "rust": RRF ranks both arms' winners above the rest.
    hybrid = await store.search(query([1.0, 0.0, 0.0, 0.0], Sparse([30, 31], [1.0, 1.0]), k=2))
    assert {h.payload[DOC_ID] for h in hybrid} == {"sea", "rust"}
    # Each is first (position 0) in one arm only; Qdrant's RRF scores position p with 1 / (k + p), and the
    # default k is 2: 1/60 shows our k travelled through gRPC to the engine.
    assert [h.score for h in hybrid] == pytest.approx([1 / 60, 1 / 60], rel=1e-4)
    request = qdrant.requests("Query")[-1]
    assert [p.using for p in request.prefetch] == ["dense", "bm25"]
    assert request.query.rrf.k == 60 and request.limit == 2
    assert [p.limit for p in request.prefetch] == [50, 50]

    async def docs(*conditions: FieldMatch) -> set[str]:
        hits = await store.search(query([0.5, 0.5, 0.5, 0.0], Sparse([10, 20, 30], [1.0, 1.0, 1.0]), 10, [*conditions]))
        return {h.payload[DOC_ID] for h in hits}

    assert await docs(FieldMatch(f"{METADATA}.topic", "equals", "food")) == {"bread"}
    assert await docs(FieldMatch(f"{METADATA}.topic", "any_of", ["food", "code"])) == {"bread", "rust"}
    assert await docs(FieldMatch(f"{METADATA}.year", "range", {"gte": 2020, "lt": 2023})) == {"rust"}
    after = FieldMatch(f"{METADATA}.published", "date_range", {"gte": "2021-01-01T00:00:00Z"})
    assert await docs(after) == {"rust", "sea"}
    assert await docs(after, FieldMatch(f"{METADATA}.year", "equals", 2023)) == {"sea"}
    # The filter travels in both prefetches, where Qdrant applies it before fusion.
    assert all(p.HasField("filter") for p in qdrant.requests("Query")[-1].prefetch)


@pytest.mark.parametrize(("server", "compatible"), [("1.20.0", True), ("1.21.3", True), ("1.17.0", False)])
async def test_version_check_over_grpc(
    qdrant: QdrantStandIn, store: ClientStore, caplog: pytest.LogCaptureFixture, server: str, compatible: bool
) -> None:
    qdrant.set_version(server)
    with caplog.at_level(logging.WARNING, logger="ragline_retriever.store_client"):
        assert await store.check_version() is compatible
    assert store.server_version == server
    assert len(qdrant.requests("HealthCheck")) == 1
    warned = [r.getMessage() for r in caplog.records if "incompatible" in r.getMessage()]
    assert warned == ([] if compatible else [warned[0]])
    if not compatible:
        assert "1.17.0" in warned[0] and "1.20.0" in warned[0]


@pytest.mark.parametrize(("server", "compatible"), [("1.20.0", True), ("1.17.0", False)])
async def test_qdrant_clients_own_check_reads_the_rest_root(
    qdrant: QdrantStandIn, server: str, compatible: bool
) -> None:
    """What qdrant-client does when check_compatibility is left on (a GET of the REST root, then a warning)."""
    qdrant.set_version(server)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        AsyncQdrantRemote._check_compatibility(qdrant.url, {}, None, 5)
    messages = [str(w.message) for w in seen]
    assert qdrant.state.rest_paths == ["GET /"]
    if compatible:
        assert messages == []
    else:
        assert len(messages) == 1 and "incompatible with server version 1.17.0" in messages[0]


async def test_retriever_service_on_the_server_branch(embedder: Service, qdrant: QdrantStandIn, tmp_path: Path) -> None:
    """The service built as in production with RETRIEVER_QDRANT_URL, the real embedder, over its own gRPC API."""
    settings = retriever_settings(embedder.grpc_port, tmp_path / "unused", qdrant_url=qdrant.url)
    async with running(build(settings)) as svc, grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        info = await stub.Info(pb.InfoRequest())
        assert info.engine == "qdrant-server"
        await ingest(stub)
        assert (await stub.Info(pb.InfoRequest())).points == len(DOCS)
        for mode in (pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_HYBRID):
            reply = await stub.Search(pb.SearchRequest(query="why does the sea rise and fall?", k=3, mode=mode))
            assert reply.hits[0].doc_id == "tides"
        year = pb.FieldCondition(key="year", range=pb.Range(gte=2020))
        reply = await stub.Search(pb.SearchRequest(query="x", k=10, filter=pb.Filter(must=[year])))
        assert {h.doc_id for h in reply.hits} == {"rust", "tides"}

        # The server's refusals reach the retriever's caller with their meaning, not as "unavailable".
        for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            qdrant.fail("Query", code, "injected by the test")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Search(pb.SearchRequest(query="tides", k=3))
            assert err.value.code() == code and "injected by the test" in (err.value.details() or "")

        got = await stub.Get(pb.GetRequest(id="bread"))
        assert got.document.text == DOCS["bread"] and dict(got.document.metadata)["topic"] == "food"
        assert (await stub.Delete(pb.DeleteRequest(id="bread"))).deleted_chunks == len(got.chunks)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Get(pb.GetRequest(id="bread"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await stub.Info(pb.InfoRequest())).points == len(DOCS) - 1

    # Everything went through the stand-in: the collection, its indexes and the version check.
    (create,) = qdrant.requests("Create")
    assert dict(create.metadata)["embedder_model"].string_value
    assert set(qdrant.field_indexes["ragline"]) == {DOC_ID, CHUNK_INDEX}
    assert len(qdrant.requests("HealthCheck")) == 1 and qdrant.requests("Query")
    assert not (tmp_path / "unused").exists()
