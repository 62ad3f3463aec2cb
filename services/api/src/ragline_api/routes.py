"""REST routes: parse, call the QueryPipeline, shape the response — no logic."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPBearer

from ragline_api import schemas as s
from ragline_api.core import Prepared, QueryPipeline
from ragline_common.errors import RaglineError
from ragline_common.http import FieldError, get_core
from ragline_common.limits import MAX_K, doc_id_problem, k_problem

log = logging.getLogger(__name__)

# Documents the Bearer scheme in OpenAPI; the edge middleware does the checking before routing.
bearer = HTTPBearer(auto_error=False, description="An API key from API_KEYS / API_KEYS_FILE.")


Core = Annotated[QueryPipeline, Depends(get_core)]
DocId = Annotated[str, Path(min_length=1, max_length=256, pattern=s.DOC_ID_PATTERN)]

router = APIRouter(prefix="/v1", responses=s.ERRORS, dependencies=[Depends(bearer)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response_doc(events: list[str] | None, what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a text/event-stream answer: each event is {event, data} with `data` a JSON document."""
    event: dict[str, Any] = {"type": "string"}
    if events:
        event["enum"] = events
    item = {
        "type": "object",
        "properties": {"event": event, "data": {"type": "string", "description": "a JSON document"}},
        "required": ["data"],
    }
    return {200: {"description": what, "content": {"text/event-stream": {"schema": item}}}}


def checked_k(core: QueryPipeline, k: int | None) -> int:
    if k is None:
        return core.settings.default_k
    problem = k_problem(k, min(core.settings.max_k, MAX_K))
    if problem:
        raise FieldError(problem, "k")
    return k


def checked_id(doc_id: str) -> str:
    problem = doc_id_problem(doc_id)
    if problem:
        raise FieldError(problem, "doc_id")
    return doc_id


Frames = AsyncIterator[tuple[str, dict[str, Any]]]


async def started_stream(core: QueryPipeline, prepared: Prepared) -> Frames:
    """The generator's stream with its first frame already received: the generator has checked the request
    and admitted it, so any refusal is still an HTTP status, never a 200 followed by an error event."""
    frames = core.generate_stream(prepared)
    first = await anext(frames)

    async def replay() -> Frames:
        yield first
        async for frame in frames:
            yield frame

    return replay()


def checked_text(core: QueryPipeline, text: str, name: str) -> str:
    """`name` is the field as the error's `param` names it (dots, as in validation errors)."""
    limit = core.settings.max_question_chars
    if len(text) > limit:
        raise FieldError(f"{name} has {len(text)} characters; at most {limit} are allowed", name)
    return text


def filters_dict(filters: s.Filters | None) -> dict[str, Any] | None:
    return filters.model_dump(exclude_none=True) if filters else None


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def stream_error(exc: BaseException) -> dict[str, Any]:
    """After the 200 is sent an error can only travel as an event; it never carries a stack trace."""
    if isinstance(exc, RaglineError):
        return {"error": {"message": exc.message, "type": exc.kind, "code": exc.http_status}}
    log.error("stream failed", exc_info=exc)
    return {"error": {"message": "internal error while streaming", "type": "internal_error", "code": 500}}


@router.post("/search", response_model=s.SearchResponse, summary="Retrieve passages (no generation)")
async def search(body: s.SearchRequest, core: Core, response: Response) -> s.SearchResponse:
    core.begin()
    result = await core.search(
        checked_text(core, body.query, "query"), checked_k(core, body.k), filters_dict(body.filters), body.mode
    )
    response.headers["Server-Timing"] = result.times.header()
    return s.SearchResponse.model_validate({"hits": result.hits})


async def _release(core: QueryPipeline, done: dict[str, Any]) -> dict[str, Any]:
    cached = core.cached_info() or {}
    return {
        "release": core.release.release,
        "generator_model": done.get("model", ""),
        "prompt_version": done.get("prompt_version", ""),
        "embedder_model": cached.get("embedder_model"),
    }


@router.post(
    "/query",
    response_model=s.QueryResponse,
    summary="Answer a question from the documents (JSON, or SSE with stream=true)",
    responses=sse_response_doc(
        ["citations", "token", "done", "error"], "JSON, or with stream=true events: citations, token…, done (or error)"
    ),
)
async def query(body: s.QueryRequest, core: Core, response: Response) -> Any:
    core.begin(stream=body.stream)
    params = body.model_dump(include={"max_tokens", "temperature", "top_p", "stop", "seed"})
    question = checked_text(core, body.question, "question")
    await core.check_max_tokens(body.max_tokens)
    prepared = await core.prepare([("user", question)], checked_k(core, body.k), filters_dict(body.filters), params)
    if body.stream:
        return StreamingResponse(
            _query_events(core, prepared, await started_stream(core, prepared)),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "Server-Timing": prepared.times.header()},
        )
    out = await core.generate(prepared)
    response.headers["Server-Timing"] = prepared.times.header()
    return s.QueryResponse(
        answer=out["answer"],
        citations=[s.Citation.model_validate(c) for c in prepared.citations],
        context_used=out["context_used"],
        finish_reason=out["finish_reason"],
        usage=s.Usage.model_validate(out["usage"]),
        release=s.ReleaseRef.model_validate(await _release(core, out)),
    )


async def _query_events(core: QueryPipeline, prepared: Prepared, frames: Frames) -> AsyncIterator[bytes]:
    yield sse("citations", {"citations": prepared.citations})
    try:
        async for kind, data in frames:
            if kind == "done":
                data = {**data, "release": await _release(core, data)}
            yield sse(kind, data)
    except Exception as exc:  # the status line is gone; report the failure in-band
        yield sse("error", stream_error(exc))


@router.post("/documents", response_model=s.UpsertResponse, summary="Create or replace documents")
async def upsert(body: s.UpsertRequest, core: Core) -> s.UpsertResponse:
    core.begin()
    results = await core.upsert([d.model_dump() for d in body.documents])
    return s.UpsertResponse.model_validate({"results": results})


@router.get("/documents/{doc_id:path}", response_model=s.DocumentOut, summary="Get a document and its chunks")
async def get_document(doc_id: DocId, core: Core) -> s.DocumentOut:
    core.begin()
    return s.DocumentOut.model_validate(await core.get_document(checked_id(doc_id)))


@router.delete("/documents/{doc_id:path}", response_model=s.DeleteResponse, summary="Delete a document")
async def delete_document(doc_id: DocId, core: Core) -> s.DeleteResponse:
    core.begin()
    return s.DeleteResponse(id=doc_id, deleted_chunks=await core.delete_document(checked_id(doc_id)))


@router.get("/info", summary="The release: versions, models and revisions, prompt template version")
async def info(core: Core) -> dict[str, Any]:
    core.begin()
    return await core.info()
