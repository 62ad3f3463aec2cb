"""One real embedder (real model, real gRPC and HTTP servers on free ports) shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest_asyncio

from ragline.embedder.v1 import embedder_pb2_grpc as pb_grpc
from ragline_common.serve import Service
from ragline_common.testing import running
from ragline_embedder.__main__ import build
from ragline_embedder.settings import EmbedderSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Small enough that the "too many texts" case is cheap to send.
MAX_TEXTS = 16


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service() -> AsyncIterator[Service]:
    settings = EmbedderSettings(http_port=0, grpc_port=0, max_texts_per_request=MAX_TEXTS, threads=1, max_wait_ms=2)
    async with running(build(settings)) as svc:
        yield svc


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def channel(service: Service) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as ch:
        yield ch


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stub(channel: grpc.aio.Channel) -> pb_grpc.EmbedderServiceStub:
    return pb_grpc.EmbedderServiceStub(channel)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def http(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}", timeout=30) as client:
        yield client
