"""Shared fixtures: one real embedder (real model) for the whole session, retrievers on free ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_common.serve import Service
from ragline_common.testing import running
from ragline_embedder.__main__ import build as build_embedder
from ragline_embedder.settings import EmbedderSettings
from ragline_retriever.__main__ import build
from ragline_retriever.settings import RetrieverSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def embedder() -> AsyncIterator[Service]:
    settings = EmbedderSettings(http_port=0, grpc_port=0, threads=1, shutdown_grace_seconds=2)
    async with running(build_embedder(settings)) as svc:
        yield svc


def retriever_settings(embedder_grpc_port: int, data_dir: Path, **overrides: object) -> RetrieverSettings:
    return RetrieverSettings(
        embedder_addr=f"127.0.0.1:{embedder_grpc_port}",
        http_port=0,
        grpc_port=0,
        data_dir=str(data_dir),
        threads=1,
        shutdown_grace_seconds=2,
        chunk_tokens=48,
        chunk_overlap_tokens=8,
        max_document_bytes=20_000,
        max_k=50,
        **overrides,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture(loop_scope="session")
async def retriever(embedder: Service, tmp_path: Path) -> AsyncIterator[Service]:
    async with running(build(retriever_settings(embedder.grpc_port, tmp_path / "store"))) as svc:
        yield svc


@pytest_asyncio.fixture(loop_scope="session")
async def stub(retriever: Service) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{retriever.grpc_port}") as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)
