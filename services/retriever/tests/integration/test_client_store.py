"""The qdrant-client path (the one a Qdrant server uses) through the service, on qdrant-client's local mode."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_common.serve import Service
from ragline_common.testing import running
from ragline_retriever.__main__ import build

from .conftest import retriever_settings
from .test_retriever import DOCS, LONG, doc, ingest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="session"),
    # Local mode warns that payload indexes do nothing there; the server path creates them for real.
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]


async def test_same_behaviour_through_qdrant_client(embedder: Service, tmp_path: Path) -> None:
    settings = retriever_settings(embedder.grpc_port, tmp_path / "store", embedded_engine="local")
    async with running(build(settings)) as svc, grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        assert (await stub.Info(pb.InfoRequest())).engine == "qdrant-client-local"
        await ingest(stub)
        for mode in (pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_HYBRID):
            hits = (await stub.Search(pb.SearchRequest(query="why does the sea rise and fall?", k=3, mode=mode))).hits
            assert hits[0].doc_id == "tides"
        when = pb.FieldCondition(key="published", date_range=pb.DateRange(gte="2021-01-01T00:00:00Z"))
        year = pb.FieldCondition(key="year", equals=struct_pb2.Value(number_value=2023))
        reply = await stub.Search(pb.SearchRequest(query="x", k=10, filter=pb.Filter(must=[when, year])))
        assert {h.doc_id for h in reply.hits} == {"tides"}

        first = (await stub.Upsert(pb.UpsertRequest(documents=[doc("log", LONG)]))).results[0]
        shorter = LONG[:200]
        second = (await stub.Upsert(pb.UpsertRequest(documents=[doc("log", shorter)]))).results[0]
        assert second.status == pb.UPSERT_STATUS_UPDATED and second.chunks < first.chunks
        assert (await stub.Info(pb.InfoRequest())).points == len(DOCS) + second.chunks
        assert (await stub.Delete(pb.DeleteRequest(id="log"))).deleted_chunks == second.chunks
