"""The real embedder over real gRPC: Embed, Info, golden vectors, truncation, refusals, thread settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from ragline.embedder.v1 import embedder_pb2 as pb
from ragline.embedder.v1 import embedder_pb2_grpc as pb_grpc
from ragline_common.serve import Service

from .conftest import MAX_TEXTS

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

GOLDEN = json.loads((Path(__file__).parent / "golden_vectors.json").read_text())
LONG_TEXT = "retrieval augmented generation " * 200  # ~600 tokens, over the model's 256


async def embed(stub: pb_grpc.EmbedderServiceStub, texts: list[str]) -> pb.EmbedResponse:
    return await stub.Embed(pb.EmbedRequest(texts=texts), timeout=30)  # type: ignore[no-any-return]


async def test_info_reports_the_model(stub: pb_grpc.EmbedderServiceStub) -> None:
    info = await stub.Info(pb.InfoRequest(), timeout=10)
    assert info.model == GOLDEN["model"]
    assert info.dimension == 384
    assert info.max_seq_length == 256
    assert info.revision.startswith("sha256:") and len(info.revision) == len("sha256:") + 16
    assert info.normalized
    assert info.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info.max_texts_per_request == MAX_TEXTS


async def test_golden_vectors(stub: pb_grpc.EmbedderServiceStub) -> None:
    items = GOLDEN["items"]
    resp = await embed(stub, [item["text"] for item in items])
    assert resp.model == GOLDEN["model"]
    assert len(resp.embeddings) == len(items)
    for item, emb in zip(items, resp.embeddings, strict=True):
        got = np.array(emb.values, dtype=np.float32)
        want = np.array(item["vector"], dtype=np.float32)
        assert got.shape == (384,)
        assert np.max(np.abs(got - want)) < GOLDEN["tolerance"], item["text"]
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-4
        assert emb.tokens == item["tokens"]
        assert not emb.truncated
    assert resp.prompt_tokens == sum(item["tokens"] for item in items)
    assert resp.timings.batch_size >= len(items)
    assert resp.timings.total_seconds >= resp.timings.queue_seconds


async def test_order_is_kept_within_a_request(stub: pb_grpc.EmbedderServiceStub) -> None:
    a, b = GOLDEN["items"][0]["text"], GOLDEN["items"][1]["text"]
    forward = await embed(stub, [a, b])
    backward = await embed(stub, [b, a])
    assert np.allclose(forward.embeddings[0].values, backward.embeddings[1].values, atol=1e-5)
    assert not np.allclose(forward.embeddings[0].values, forward.embeddings[1].values, atol=1e-2)


async def test_long_text_is_truncated_and_flagged(stub: pb_grpc.EmbedderServiceStub) -> None:
    resp = await embed(stub, [LONG_TEXT, "short text"])
    long, short = resp.embeddings
    assert long.truncated and long.tokens == 256
    assert not short.truncated and short.tokens < 256
    assert abs(float(np.linalg.norm(long.values)) - 1.0) < 1e-4


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "at least one text"),
        (["fine", ""], r"input\[1\] is empty"),
        (["   "], r"input\[0\] is empty"),
        (["t"] * (MAX_TEXTS + 1), f"at most {MAX_TEXTS}"),
    ],
    ids=["empty-list", "empty-string", "blank-string", "too-many"],
)
async def test_bad_input_is_invalid_argument(stub: pb_grpc.EmbedderServiceStub, texts: list[str], message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await embed(stub, texts)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() is not None
    assert re.search(message, info.value.details())


async def test_non_utf8_bytes_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    # EmbedRequest with field 1 (texts) holding two bytes that are not UTF-8, sent as raw bytes.
    raw_embed = channel.unary_unary("/ragline.embedder.v1.EmbedderService/Embed")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw_embed(b"\x0a\x02\xff\xfe", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "EmbedRequest" in (info.value.details() or "")


async def test_service_still_serves_after_bad_input(stub: pb_grpc.EmbedderServiceStub) -> None:
    resp = await embed(stub, ["still alive"])
    assert len(resp.embeddings[0].values) == 384


async def test_model_runs_with_the_configured_threads(service: Service) -> None:
    core = service.app.state.core
    assert core.batcher is not None
    # The model runs on the batcher's worker thread: that is where torch's pool size must hold.
    assert await core.batcher.run_sync(torch.get_num_threads) == core.threads == 1
