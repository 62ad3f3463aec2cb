"""gRPC servicer for ragline.retriever.v1: protobuf ↔ core types only."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline_common.errors import InvalidInput
from ragline_retriever.core import DocIn, Retriever
from ragline_retriever.filters import conditions_from_pb, normalize_number
from ragline_retriever.store import FieldMatch

MODES = {pb.SEARCH_MODE_UNSPECIFIED: None, pb.SEARCH_MODE_DENSE: "dense", pb.SEARCH_MODE_HYBRID: "hybrid"}
MODE_ENUM = {"dense": pb.SEARCH_MODE_DENSE, "hybrid": pb.SEARCH_MODE_HYBRID}
STATUS = {
    "created": pb.UPSERT_STATUS_CREATED,
    "updated": pb.UPSERT_STATUS_UPDATED,
    "unchanged": pb.UPSERT_STATUS_UNCHANGED,
    "failed": pb.UPSERT_STATUS_FAILED,
}


def struct_dict(value: Any, where: str) -> dict[str, Any]:
    """A Struct (or Value, ListValue) as plain JSON; NaN and infinities, which JSON has no way to write, are a
    caller's error (INVALID_ARGUMENT), not an internal one."""
    try:
        return json_format.MessageToDict(value)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def search_args(request: pb.SearchRequest) -> tuple[str, int, list[FieldMatch], str | None]:
    """The core's search arguments from the proto request: gRPC and the debug routes both come through here."""
    if request.mode not in MODES:
        raise InvalidInput(f"mode {request.mode} is not a SearchMode")
    return request.query, request.k, conditions_from_pb(request.filter), MODES[request.mode]


def docs_from_pb(request: pb.UpsertRequest) -> list[DocIn]:
    return [
        DocIn(d.id, d.text, normalize_number(struct_dict(d.metadata, f"documents[{i}].metadata")))
        for i, d in enumerate(request.documents)
    ]


class RetrieverServicer:
    def __init__(self, core: Retriever) -> None:
        self.core = core

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        result = await self.core.search(*search_args(request))
        return pb.SearchResponse(
            hits=[
                pb.Hit(
                    doc_id=h.doc_id,
                    chunk_id=h.chunk_id,
                    text=h.text,
                    score=h.score,
                    metadata=to_struct(h.metadata),
                    start=h.start,
                    end=h.end,
                )
                for h in result.hits
            ],
            timings=pb.Timings(
                embed_seconds=result.embed_seconds,
                search_seconds=result.search_seconds,
                total_seconds=result.total_seconds,
            ),
        )

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        outcomes = await self.core.upsert(docs_from_pb(request))
        return pb.UpsertResponse(
            results=[
                pb.UpsertResult(
                    id=o.id, status=STATUS[o.status], chunks=o.chunks, error=o.error, content_hash=o.content_hash
                )
                for o in outcomes
            ]
        )

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        return pb.DeleteResponse(deleted_chunks=await self.core.delete(request.id))

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        doc = await self.core.get(request.id)
        return pb.GetResponse(
            document=pb.Document(id=doc.id, text=doc.text, metadata=to_struct(doc.metadata)),
            content_hash=doc.content_hash,
            chunks=[
                pb.Chunk(
                    chunk_id=c.id,
                    text=c.payload.get("text", ""),
                    start=int(c.payload.get("start", 0)),
                    end=int(c.payload.get("end", 0)),
                )
                for c in doc.chunks
            ],
        )

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        info = await self.core.info()
        return pb.InfoResponse(
            collection=info["collection"],
            engine=info["engine"],
            points=info["points"],
            embedder_model=info["embedder_model"],
            embedder_revision=info["embedder_revision"],
            dimension=info["dimension"],
            default_mode=MODE_ENUM[info["default_mode"]],
        )
