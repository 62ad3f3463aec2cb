"""A real embedder with a tiny queue: overload is refused at once with 429 / RESOURCE_EXHAUSTED and a retry hint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio

from ragline.embedder.v1 import embedder_pb2 as pb
from ragline.embedder.v1 import embedder_pb2_grpc as pb_grpc
from ragline_common.serve import Service
from ragline_common.testing import running
from ragline_embedder.__main__ import build
from ragline_embedder.settings import EmbedderSettings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

TEXTS = ["a sentence long enough to take the model a moment " * 8, "and a second one"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tiny() -> AsyncIterator[Service]:
    # Room for one waiting request of two texts, one text per model call: a burst must overflow.
    settings = EmbedderSettings(
        http_port=0, grpc_port=0, threads=1, max_queue=2, max_texts_per_request=2, max_batch_size=1, max_wait_ms=0
    )
    async with running(build(settings)) as svc:
        yield svc


async def test_http_burst_gets_429_with_retry_after(tiny: Service) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tiny.http_port}", timeout=30) as http:
        responses = await asyncio.gather(*(http.post("/v1/embeddings", json={"input": TEXTS}) for _ in range(12)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert 200 in codes and 429 in codes, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "queue is full" in refused.json()["error"]["message"]


async def test_grpc_burst_gets_resource_exhausted(tiny: Service) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tiny.grpc_port}") as channel:
        stub = pb_grpc.EmbedderServiceStub(channel)
        results = await asyncio.gather(
            *(stub.Embed(pb.EmbedRequest(texts=TEXTS), timeout=30) for _ in range(12)), return_exceptions=True
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors and len(errors) < len(results)
    for err in errors:
        assert isinstance(err, grpc.aio.AioRpcError)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after", "1") in tuple(err.trailing_metadata() or ())
