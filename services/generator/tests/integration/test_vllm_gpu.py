"""vLLM for real on a CUDA GPU: the same service contract, streaming and abort (skipped without GPU + extra)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio

from ragline.generator.v1 import generator_pb2 as pb
from ragline.generator.v1 import generator_pb2_grpc
from ragline_common.serve import Service
from ragline_common.testing import running
from ragline_generator.__main__ import build
from ragline_generator.settings import GeneratorSettings


def _why_not() -> str | None:
    if importlib.util.find_spec("vllm") is None or shutil.which("nvidia-smi") is None:
        return "needs a CUDA GPU and the vllm extra"
    return None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(_why_not() is not None, reason="needs a CUDA GPU and the vllm extra"),
    pytest.mark.asyncio(loop_scope="module"),
]

# A small chat model the GPU node can load (local folder or a hub id where the hub is reachable).
MODEL = os.environ.get("GENERATOR_TEST_VLLM_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
CHAT = [pb.ChatMessage(role="user", content="Name three colours.")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def svc() -> AsyncIterator[Service]:
    settings = GeneratorSettings(
        http_port=0, grpc_port=0, engine="vllm", model=MODEL, context_window=2048,
        vllm_gpu_memory_utilization=0.5, max_concurrent_requests=8, max_waiting=8,
    )  # fmt: skip
    async with running(build(settings), ready_timeout=600) as service:
        yield service


async def test_generate_stream_and_abort_on_vllm(svc: Service) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}")
    stub = generator_pb2_grpc.GeneratorServiceStub(channel)
    info = await stub.Info(pb.InfoRequest(), timeout=10)
    assert info.engine == "vllm" and info.context_window == 2048
    req = pb.GenerateRequest(messages=CHAT, params=pb.SamplingParams(max_tokens=16, temperature=0.0))
    whole = await stub.Generate(req, timeout=60)
    assert whole.text and 0 < whole.usage.completion_tokens <= 16
    chunks = [c async for c in stub.GenerateStream(req, timeout=60)]
    assert "".join(c.delta for c in chunks) == whole.text
    assert chunks[-1].usage == whole.usage

    long = pb.GenerateRequest(messages=CHAT, params=pb.SamplingParams(max_tokens=1000, temperature=0.8))
    call = stub.GenerateStream(long, timeout=60)
    await call.read()
    call.cancel()
    await asyncio.sleep(0.2)
    metrics = svc.app.state.core.metrics
    assert metrics.engine_aborts._value.get() == 1, "a cancelled stream must be aborted in the vLLM engine"
    assert metrics.running._value.get() == 0
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{svc.http_port}/metrics")).text
    for name in ("ragline_generator_requests_waiting", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f"\n{name}" in text, f"{name} missing from /metrics"
    await channel.close()
