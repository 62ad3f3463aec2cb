"""The embedder as the retriever sees it: one gRPC channel, Info and Embed with deadlines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline.embedder.v1 import embedder_pb2_grpc
from ragline_common.grpc_client import health_probe, make_channel, unary

EMBEDDER_SERVICE = "ragline.embedder.v1.EmbedderService"


class EmbedderClient:
    def __init__(self, addr: str, timeout: float) -> None:
        self.addr = addr
        self.timeout = timeout
        self.channel = make_channel(addr)
        self.stub = embedder_pb2_grpc.EmbedderServiceStub(self.channel)

    def probe(self) -> Callable[[], Awaitable[None]]:
        return health_probe(self.channel, EMBEDDER_SERVICE)

    async def info(self) -> epb.InfoResponse:
        return await unary(self.stub.Info, epb.InfoRequest(), peer="embedder", timeout=min(self.timeout, 5.0))

    async def embed(self, texts: list[str], *, bulk: bool = False) -> np.ndarray:
        """Vectors of `texts` in order, as a float32 matrix; `bulk` (ingest) yields to queries in the embedder."""
        priority = epb.PRIORITY_BULK if bulk else epb.PRIORITY_INTERACTIVE
        request = epb.EmbedRequest(texts=texts, priority=priority)
        reply = await unary(self.stub.Embed, request, peer="embedder", timeout=self.timeout)
        return np.asarray([e.values for e in reply.embeddings], dtype=np.float32)

    async def close(self) -> None:
        await self.channel.close()
