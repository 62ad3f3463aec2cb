"""The retriever against a real embedder and a real embedded Qdrant on disk, over gRPC and HTTP."""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_common.serve import Service

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LONG = " ".join(
    f"Paragraph {i}: the lighthouse keeper recorded the weather, the passing ships and the tides every evening."
    for i in range(12)
)
DOCS = {
    "bread": "To bake sourdough bread, feed the starter, mix flour and water, let the dough rise overnight and bake.",
    "rust": "Rust's borrow checker enforces that references never outlive the data they point to.",
    "tides": "Ocean tides are caused by the gravitational pull of the moon and the sun on the sea.",
}
META = {
    "bread": {"topic": "food", "year": 2019, "published": "2019-05-01T00:00:00Z"},
    "rust": {"topic": "code", "year": 2021, "published": "2021-03-10T12:00:00Z"},
    "tides": {"topic": "science", "year": 2023, "published": "2023-08-20T08:30:00Z"},
}


def doc(doc_id: str, text: str, metadata: dict[str, object] | None = None) -> pb.Document:
    md = struct_pb2.Struct()
    md.update(metadata or {})
    return pb.Document(id=doc_id, text=text, metadata=md)


async def ingest(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    reply = await stub.Upsert(pb.UpsertRequest(documents=[doc(k, v, META[k]) for k, v in DOCS.items()]))
    assert [r.status for r in reply.results] == [pb.UPSERT_STATUS_CREATED] * 3


async def test_upsert_is_idempotent_and_leaves_no_orphans(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    first = (await stub.Upsert(pb.UpsertRequest(documents=[doc("log", LONG, {"v": 1})]))).results[0]
    assert first.status == pb.UPSERT_STATUS_CREATED and first.chunks > 3 and first.content_hash

    again = (await stub.Upsert(pb.UpsertRequest(documents=[doc("log", LONG, {"v": 1})]))).results[0]
    assert again.status == pb.UPSERT_STATUS_UNCHANGED and again.chunks == first.chunks

    got = await stub.Get(pb.GetRequest(id="log"))
    assert got.document.text == LONG and got.content_hash == first.content_hash
    assert len(got.chunks) == first.chunks
    for c in got.chunks:
        assert LONG[c.start : c.end] == c.text  # offsets are exact citations

    shorter = LONG[: len(LONG) // 3]
    updated = (await stub.Upsert(pb.UpsertRequest(documents=[doc("log", shorter, {"v": 2})]))).results[0]
    assert updated.status == pb.UPSERT_STATUS_UPDATED and updated.chunks < first.chunks
    got = await stub.Get(pb.GetRequest(id="log"))
    assert got.document.text == shorter and len(got.chunks) == updated.chunks  # old tail chunks are gone
    assert dict(got.document.metadata) == {"v": 2}
    info = await stub.Info(pb.InfoRequest())
    assert info.points == updated.chunks

    assert (await stub.Delete(pb.DeleteRequest(id="log"))).deleted_chunks == updated.chunks
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Get(pb.GetRequest(id="log"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Delete(pb.DeleteRequest(id="log"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await stub.Info(pb.InfoRequest())).points == 0


async def test_search_dense_hybrid_and_filters(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    await ingest(stub)
    for mode in (pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_HYBRID):
        reply = await stub.Search(pb.SearchRequest(query="why does the sea rise and fall?", k=3, mode=mode))
        assert reply.hits[0].doc_id == "tides"
        assert reply.hits[0].text == DOCS["tides"][reply.hits[0].start : reply.hits[0].end]
        assert reply.hits[0].metadata["topic"] == "science"
        assert reply.timings.total_seconds > 0

    def search(*conds: pb.FieldCondition) -> pb.SearchRequest:
        return pb.SearchRequest(query="anything at all", k=10, filter=pb.Filter(must=list(conds)))

    async def ids(req: pb.SearchRequest) -> set[str]:
        return {h.doc_id for h in (await stub.Search(req)).hits}

    eq = pb.FieldCondition(key="topic", equals=struct_pb2.Value(string_value="code"))
    assert await ids(search(eq)) == {"rust"}
    year = pb.FieldCondition(key="year", equals=struct_pb2.Value(number_value=2019))
    assert await ids(search(year)) == {"bread"}
    any_of = struct_pb2.ListValue()
    any_of.extend(["food", "science"])
    assert await ids(search(pb.FieldCondition(key="topic", any_of=any_of))) == {"bread", "tides"}
    assert await ids(search(pb.FieldCondition(key="year", range=pb.Range(gte=2020)))) == {"rust", "tides"}
    since = pb.FieldCondition(key="published", date_range=pb.DateRange(lt="2021-03-10T12:00:00Z"))
    assert await ids(search(since)) == {"bread"}
    both = [pb.FieldCondition(key="year", range=pb.Range(gt=2019)), eq]
    assert await ids(search(*both)) == {"rust"}


@pytest.mark.parametrize(
    ("request_", "detail"),
    [
        (pb.SearchRequest(query="x", k=0), "k must be"),
        (pb.SearchRequest(query="x", k=51), "k must be"),
        (pb.SearchRequest(query="   ", k=3), "query is empty"),
        (pb.SearchRequest(query="x", k=3, filter=pb.Filter(must=[pb.FieldCondition(key="topic")])), "shape"),
        (
            pb.SearchRequest(
                query="x", k=3, filter=pb.Filter(must=[pb.FieldCondition(key="d", date_range=pb.DateRange(gt="soon"))])
            ),
            "RFC 3339",
        ),
        (
            pb.SearchRequest(
                query="x", k=3, filter=pb.Filter(must=[pb.FieldCondition(key="a b", range=pb.Range(gt=1))])
            ),
            "key",
        ),
    ],
)
async def test_bad_search_is_invalid_argument(
    stub: retriever_pb2_grpc.RetrieverServiceStub, request_: pb.SearchRequest, detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Search(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (err.value.details() or "")


async def test_bad_upserts(stub: retriever_pb2_grpc.RetrieverServiceStub) -> None:
    cases = [
        ([doc("big", "word " * 5000)], "request_too_large"),
        ([doc("", "text")], "invalid_request_error"),
        ([doc("a", "one"), doc("a", "two")], "invalid_request_error"),
        ([doc("blank", " \n ")], "invalid_request_error"),
        ([doc("zero-width", "\u200b\u200b")], "invalid_request_error"),
        ([doc("fat", "text", {"blob": "x" * 20_000})], "request_too_large"),
        ([], "invalid_request_error"),
    ]
    for docs, kind in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Upsert(pb.UpsertRequest(documents=docs))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(err.value.trailing_metadata() or ())["ragline-error-kind"] == kind


async def test_http_routes(retriever: Service) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{retriever.http_port}", timeout=30) as http:
        body = {"documents": [{"id": k, "text": v, "metadata": META[k]} for k, v in DOCS.items()]}
        r = await http.post("/v1/documents", json=body)
        assert r.status_code == 200 and [x["status"] for x in r.json()["results"]] == ["created"] * 3
        r = await http.post(
            "/v1/search",
            json={
                "query": "compiler memory safety",
                "k": 2,
                "filter": {"must": [{"key": "year", "range": {"gt": 2020}}]},
            },
        )
        assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "rust"
        assert (await http.get("/v1/documents/rust")).json()["text"] == DOCS["rust"]
        assert (await http.get("/v1/info")).json()["points"] == 3
        assert (await http.delete("/v1/documents/rust")).json() == {"deleted_chunks": 1}
        assert (await http.get("/v1/documents/rust")).status_code == 404
        assert (await http.delete("/v1/documents/rust")).status_code == 404
        r = await http.post("/v1/documents", json={"documents": [{"id": "big", "text": "w " * 20_000}]})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
        assert (await http.post("/v1/search", json={"query": "x", "k": 0})).status_code == 400
        assert (
            await http.post("/v1/search", json={"query": "x", "filter": {"must": [{"key": "a"}]}})
        ).status_code == 400
        bad_shape = {"query": "x", "filter": {"must": [{"key": "a", "near": [1, 2]}]}}
        assert (await http.post("/v1/search", json=bad_shape)).status_code == 400
        metrics = (await http.get("/metrics")).text
        assert 'ragline_retriever_ingest_documents_total{status="created"} 3.0' in metrics
        assert "ragline_retriever_collection_points 2.0" in metrics
        assert "ragline_retriever_search_seconds_count" in metrics
