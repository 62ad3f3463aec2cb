"""Startup without the embedder, refusal of a collection made by another model, readiness reasons."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_common.serve import Service, run
from ragline_common.testing import running
from ragline_embedder.__main__ import build as build_embedder
from ragline_embedder.settings import EmbedderSettings
from ragline_retriever.__main__ import build

from .conftest import retriever_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def started(service: Service) -> AsyncIterator[Service]:
    """Run a service without waiting for readiness (it is expected not to be ready)."""
    task = asyncio.create_task(run(service, handle_signals=False))
    try:
        await asyncio.wait_for(service.bound.wait(), 30)
        yield service
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 20)


async def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_starts_not_ready_without_embedder_then_becomes_ready(tmp_path: Path) -> None:
    port = free_port()
    svc = build(retriever_settings(port, tmp_path / "store"))
    async with started(svc):
        await asyncio.sleep(1.0)
        assert not svc.readiness.ready
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.http_port}") as http:
            r = await http.get("/readyz")
            assert r.status_code == 503 and "embedder" in str(r.json()["reasons"])
            r = await http.post("/v1/search", json={"query": "hello", "k": 1})
            assert r.status_code == 503
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await retriever_pb2_grpc.RetrieverServiceStub(channel).Search(pb.SearchRequest(query="hi", k=1))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # The embedder appears on the address the retriever was told about.
        emb = build_embedder(EmbedderSettings(http_port=0, grpc_port=port, threads=1, shutdown_grace_seconds=2))
        async with running(emb):
            await wait_for(lambda: svc.readiness.ready)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
                stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
                await stub.Upsert(pb.UpsertRequest(documents=[pb.Document(id="a", text="hello world")]))
                assert (await stub.Search(pb.SearchRequest(query="hello", k=1))).hits[0].doc_id == "a"


async def test_refuses_collection_made_by_another_model(embedder: Service, tmp_path: Path) -> None:
    settings = retriever_settings(embedder.grpc_port, tmp_path / "store")
    async with running(build(settings)):
        pass
    sidecar = tmp_path / "store" / "ragline.edge.meta.json"
    meta = json.loads(sidecar.read_text())
    meta["model"] = "some/other-model"
    sidecar.write_text(json.dumps(meta))
    svc = build(settings)
    async with started(svc):
        await wait_for(
            lambda: "collection" in svc.readiness.reasons() and "other-model" in svc.readiness.reasons()["collection"]
        )
        reason = svc.readiness.reasons()["collection"]
        assert "refusing to mix models" in reason
        await asyncio.sleep(0.5)
        assert not svc.readiness.ready


async def test_optimize_on_start_reopens_existing_data(embedder: Service, tmp_path: Path) -> None:
    settings = retriever_settings(embedder.grpc_port, tmp_path / "store")
    async with running(build(settings)) as svc, grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        await stub.Upsert(pb.UpsertRequest(documents=[pb.Document(id="a", text="lighthouse keepers log the tides")]))
    again = retriever_settings(embedder.grpc_port, tmp_path / "store", optimize_on_start=True)
    async with running(build(again)) as svc, grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        assert (await stub.Info(pb.InfoRequest())).points == 1
        assert (await stub.Search(pb.SearchRequest(query="tides", k=1))).hits[0].doc_id == "a"
