"""gRPC servicer for ragline.generator.v1: protobuf ↔ core types only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ragline.generator.v1 import generator_pb2 as pb
from ragline_generator.core import Final, GenerateInput, Generator
from ragline_generator.engines.base import Message
from ragline_generator.prompt import Chunk

FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "aborted": pb.FINISH_REASON_ABORTED,
}


def to_input(request: pb.GenerateRequest) -> GenerateInput:
    p = request.params
    return GenerateInput(
        messages=[Message(m.role, m.content) for m in request.messages],
        prompt=request.prompt,
        context=[Chunk(c.doc_id, c.text) for c in request.context],
        max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
        temperature=p.temperature if p.HasField("temperature") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        stop=list(p.stop),
        seed=p.seed if p.HasField("seed") else None,
    )


def _usage(final: Final) -> pb.Usage:
    return pb.Usage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)


def _timings(final: Final) -> pb.Timings:
    return pb.Timings(
        queue_seconds=final.queue_seconds,
        time_to_first_token_seconds=final.time_to_first_token_seconds,
        total_seconds=final.total_seconds,
    )


class GeneratorServicer:
    def __init__(self, core: Generator) -> None:
        self.core = core

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        r = await self.core.generate(to_input(request))
        return pb.GenerateResponse(
            text=r.text,
            finish_reason=FINISH[r.final.finish_reason],
            usage=_usage(r.final),
            model=r.model,
            prompt_version=r.prompt_version,
            context_used=r.context_used,
            timings=_timings(r.final),
        )

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        gen = await self.core.start(to_input(request))
        try:
            async for delta in gen.events():
                if delta.final is None:
                    yield pb.GenerateChunk(delta=delta.text)
                    continue
                f = delta.final
                yield pb.GenerateChunk(
                    delta=delta.text,
                    finish_reason=FINISH[f.finish_reason],
                    usage=_usage(f),
                    model=gen.model,
                    prompt_version=gen.prompt_version,
                    context_used=gen.context_used,
                    timings=_timings(f),
                )
        finally:
            await gen.aclose()

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        i = self.core.info
        return pb.InfoResponse(
            engine=i.engine,
            model=i.model,
            revision=i.revision,
            context_window=i.context_window,
            max_tokens_cap=i.max_tokens_cap,
            prompt_version=i.prompt_version,
        )
