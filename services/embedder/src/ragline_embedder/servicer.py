"""gRPC servicer for ragline.embedder.v1: protobuf ↔ core types only."""

from __future__ import annotations

import grpc

from ragline.embedder.v1 import embedder_pb2 as pb
from ragline_common.errors import Unavailable
from ragline_embedder.core import Embedder


class EmbedderServicer:
    def __init__(self, core: Embedder) -> None:
        self.core = core

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        result = await self.core.embed(list(request.texts), bulk=request.priority == pb.PRIORITY_BULK)
        info = self.core.info
        assert info is not None  # embed() refuses before load
        stats = result.stats
        return pb.EmbedResponse(
            # tolist() then the repeated field: ~10 µs a vector; extend() from numpy iterates and is 4x slower.
            embeddings=[
                pb.Embedding(values=v.vector.tolist(), truncated=v.truncated, tokens=v.tokens) for v in result.vectors
            ],
            model=info.model,
            prompt_tokens=result.tokens,
            timings=pb.Timings(
                queue_seconds=stats.queue_seconds,
                inference_seconds=stats.inference_seconds,
                total_seconds=result.total_seconds,
                batch_size=stats.batch_size,
            ),
        )

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        return info_message(self.core)


def info_message(core: Embedder) -> pb.InfoResponse:
    """The Info reply for a loaded core (also used by callers that hold the core in-process)."""
    info = core.info
    if info is None:
        raise Unavailable("the embedding model is still loading")
    s = core.settings
    return pb.InfoResponse(
        model=info.model,
        revision=info.revision,
        dimension=info.dimension,
        max_seq_length=info.max_seq_length,
        normalized=info.normalized,
        device=info.device,
        max_batch_size=s.max_batch_size,
        max_texts_per_request=s.max_texts_per_request,
    )
