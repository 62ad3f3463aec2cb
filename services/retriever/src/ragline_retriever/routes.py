"""HTTP routes for debugging with curl: search, documents, info."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline_common.errors import InvalidInput
from ragline_common.http import get_core
from ragline_retriever.core import Retriever
from ragline_retriever.filters import parse_json
from ragline_retriever.servicer import MODE_ENUM, docs_from_pb, search_args


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bounds(_Strict):
    gt: float | str | None = None
    gte: float | str | None = None
    lt: float | str | None = None
    lte: float | str | None = None


class FieldCondition(_Strict):
    key: str
    equals: str | int | float | bool | None = None
    any_of: list[str | int | float | bool] | None = None
    range: Bounds | None = None
    date_range: Bounds | None = None


class Filter(_Strict):
    must: list[FieldCondition] = Field(default_factory=list, description="All conditions must hold.")


class SearchBody(_Strict):
    query: str
    k: int = Field(10, strict=True, description="Number of chunks to return (a JSON integer).")
    filter: Filter | None = None
    mode: Literal["dense", "hybrid"] | None = Field(None, description="Unset = the service's default.")


class HitOut(BaseModel):
    doc_id: str
    chunk_id: str
    text: str
    score: float
    start: int
    end: int
    metadata: dict[str, Any]


class SearchOut(BaseModel):
    hits: list[HitOut]
    timings: dict[str, float]


class DocumentBody(_Strict):
    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertBody(_Strict):
    documents: list[DocumentBody]


class UpsertResultOut(BaseModel):
    id: str
    status: str
    chunks: int
    content_hash: str
    error: str = ""


class UpsertOut(BaseModel):
    results: list[UpsertResultOut]


class ChunkOut(BaseModel):
    chunk_id: str
    text: str
    start: int
    end: int


class StoredDocumentOut(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    chunks: list[ChunkOut]


Core = Annotated[Retriever, Depends(get_core)]

router = APIRouter()


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """The body's schema for OpenAPI only: the body itself is parsed by json_format into the proto request."""
    schema = model.model_json_schema()
    body = _inline(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise InvalidInput(f"request body is not JSON: {exc}") from None


@router.post("/v1/search", response_model=SearchOut, openapi_extra=documented(SearchBody))
async def search(request: Request, core: Core) -> SearchOut:
    data = await _json(request)
    if isinstance(data, dict) and isinstance(data.get("mode"), str) and data["mode"] in MODE_ENUM:
        data = {**data, "mode": pb.SearchMode.Name(MODE_ENUM[data["mode"]])}
    result = await core.search(*search_args(parse_json(data, pb.SearchRequest(), "search")))
    return SearchOut(
        hits=[HitOut(**h.__dict__) for h in result.hits],
        timings={
            "embed_seconds": result.embed_seconds,
            "search_seconds": result.search_seconds,
            "total_seconds": result.total_seconds,
        },
    )


@router.post("/v1/documents", response_model=UpsertOut, openapi_extra=documented(UpsertBody))
async def upsert(request: Request, core: Core) -> UpsertOut:
    body = parse_json(await _json(request), pb.UpsertRequest(), "documents")
    outcomes = await core.upsert(docs_from_pb(body))
    return UpsertOut(results=[UpsertResultOut(**o.__dict__) for o in outcomes])


@router.get("/v1/documents/{doc_id:path}", response_model=StoredDocumentOut)
async def get_document(doc_id: str, core: Core) -> StoredDocumentOut:
    doc = await core.get(doc_id)
    return StoredDocumentOut(
        id=doc.id,
        text=doc.text,
        metadata=doc.metadata,
        content_hash=doc.content_hash,
        chunks=[
            ChunkOut(chunk_id=c.id, text=c.payload.get("text", ""), start=c.payload["start"], end=c.payload["end"])
            for c in doc.chunks
        ],
    )


@router.delete("/v1/documents/{doc_id:path}")
async def delete_document(doc_id: str, core: Core) -> dict[str, int]:
    return {"deleted_chunks": await core.delete(doc_id)}


@router.get("/v1/info")
async def info(core: Core) -> dict[str, Any]:
    return await core.info()
