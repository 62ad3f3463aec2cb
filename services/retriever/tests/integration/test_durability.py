"""Once Upsert has returned, kill -9 of a real retriever process and a restart lose nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_common.serve import Service

from .test_lifecycle import free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def start(embedder_port: int, data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "RETRIEVER_EMBEDDER_ADDR": f"127.0.0.1:{embedder_port}",
        "RETRIEVER_DATA_DIR": str(data_dir),
        "RETRIEVER_HTTP_PORT": str(http_port),
        "RETRIEVER_GRPC_PORT": str(grpc_port),
        "RETRIEVER_THREADS": "1",
        "RETRIEVER_CHUNK_TOKENS": "32",
        "RETRIEVER_CHUNK_OVERLAP_TOKENS": "4",
    }
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "ragline_retriever"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
        for _ in range(600):
            assert proc.poll() is None, f"retriever exited with {proc.returncode}; see {log}"
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return proc, http_port, grpc_port
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError(f"retriever not ready in 60 s; see {log}")


def text(i: int, version: int) -> str:
    return f"Document {i}, version {version}. " + " ".join(f"sentence {j} of document {i}." for j in range(5 + i % 7))


async def test_kill_9_after_upsert_loses_nothing(embedder: Service, tmp_path: Path) -> None:
    data, log = tmp_path / "store", tmp_path / "retriever.log"
    proc, _, grpc_port = await start(embedder.grpc_port, data, log)
    expected: dict[str, tuple[str, int]] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            for batch in range(5):
                docs = [pb.Document(id=f"d{i}", text=text(i, batch)) for i in range(batch * 10, batch * 10 + 40)]
                reply = await stub.Upsert(pb.UpsertRequest(documents=docs), timeout=60)
                for d, r in zip(docs, reply.results, strict=True):
                    assert r.status in (pb.UPSERT_STATUS_CREATED, pb.UPSERT_STATUS_UPDATED)
                    expected[d.id] = (d.text, r.chunks)
            deleted = await stub.Delete(pb.DeleteRequest(id="d0"), timeout=10)
            assert deleted.deleted_chunks == expected.pop("d0")[1]
        # The last call has returned: now the hard way down, no flush, no shutdown hook.
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        proc, _, grpc_port = await start(embedder.grpc_port, data, log)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
            info = await stub.Info(pb.InfoRequest(), timeout=10)
            assert info.points == sum(n for _, n in expected.values())
            for doc_id, (body, chunks) in expected.items():
                got = await stub.Get(pb.GetRequest(id=doc_id), timeout=10)
                assert got.document.text == body and len(got.chunks) == chunks
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Get(pb.GetRequest(id="d0"), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            hits = (await stub.Search(pb.SearchRequest(query="sentence 3 of document 42", k=3), timeout=10)).hits
            assert hits and hits[0].doc_id.startswith("d")
    finally:
        proc.kill()
        proc.wait(10)
