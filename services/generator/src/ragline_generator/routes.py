"""HTTP routes: OpenAI-style /v1/chat/completions, /v1/completions (JSON or SSE) and /v1/models."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ragline_common.errors import Cancelled, InvalidInput, RaglineError
from ragline_common.http import error_body, get_core
from ragline_common.openai import ModelCard, ModelList
from ragline_generator.core import Final, GenerateInput, Generation, Generator, Result
from ragline_generator.engines.base import Message
from ragline_generator.prompt import Chunk


class ChatMessageIn(BaseModel):
    role: str
    content: str


class ContextChunkIn(BaseModel):
    doc_id: str = ""
    text: str


class SamplingIn(BaseModel):
    model: str | None = Field(None, description="Ignored unless set: must name the served model.")
    max_tokens: int | None = Field(None, description="Completion tokens at most (capped by GENERATOR_MAX_TOKENS_CAP).")
    max_completion_tokens: int | None = Field(None, description="Newer OpenAI name for max_tokens.")
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, description="Only 1 is supported.")
    stream: bool = False
    user: str | None = None


class ChatCompletionRequest(SamplingIn):
    messages: list[ChatMessageIn] = Field(min_length=1)
    context: list[ContextChunkIn] = Field(
        default_factory=list, description="ragline extension: retrieved chunks for the versioned RAG template."
    )


class CompletionRequest(SamplingIn):
    prompt: str = Field(min_length=1)


class GeneratorModelCard(ModelCard):
    engine: str
    revision: str
    context_window: int
    max_tokens_cap: int
    prompt_version: str


Core = Annotated[Generator, Depends(get_core)]

router = APIRouter()


def _input(body: SamplingIn, **kwargs: Any) -> GenerateInput:
    if body.n != 1:
        raise InvalidInput(f"n must be 1, got {body.n}")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    return GenerateInput(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop, seed=body.seed, **kwargs
    )


def _check_model(core: Generator, name: str | None) -> None:
    served = core.info.model
    if name and name not in (served, served.rsplit("/", 1)[-1]):
        raise InvalidInput(f"model {name!r} is not served here; this generator serves {served!r}")


def _usage(final: Final) -> dict[str, int]:
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
    }


def _finish(final: Final) -> str:
    # OpenAI knows stop and length; an aborted generation never reaches a client that is still there.
    return "length" if final.finish_reason == "length" else "stop"


def _server_timing(final: Final) -> str:
    return (
        f"queue;dur={final.queue_seconds * 1000:.2f}, ttft;dur={final.time_to_first_token_seconds * 1000:.2f}, "
        f"total;dur={final.total_seconds * 1000:.2f}"
    )


class _SSE(StreamingResponse):
    """A stream that always closes its generation, however the response ends (done, disconnect, error)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Any]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


async def _unless_disconnected(request: Request, work: Awaitable[Result]) -> Result:
    """Run a whole (non-streamed) generation, cancelling it if the client hangs up first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # The body is read already: the next ASGI message is the disconnect (or the response finishing).
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if watcher.done() and current is not None and not current.cancelling():
            raise Cancelled("client disconnected") from None
        raise
    finally:
        watcher.cancel()


def _sse(gen: Generation, frame: Callable[[str, Final | None], dict[str, Any]]) -> _SSE:
    async def body() -> AsyncIterator[str]:
        try:
            async for delta in gen.events():
                yield f"data: {json.dumps(frame(delta.text, delta.final), separators=(',', ':'))}\n\n"
        except RaglineError as exc:
            # Headers are gone already: the error travels as a last event in the OpenAI envelope.
            yield f"data: {json.dumps(error_body(exc.message, exc.kind, exc.http_status))}\n\n"
        yield "data: [DONE]\n\n"

    return _SSE(body(), gen.aclose)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, core: Core, request: Request) -> Any:
    _check_model(core, body.model)
    req = _input(
        body,
        messages=[Message(m.role, m.content) for m in body.messages],
        context=[Chunk(c.doc_id, c.text) for c in body.context],
    )
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    model = core.info.model
    if body.stream:
        gen = await core.start(req)
        first = True

        def frame(text: str, final: Final | None) -> dict[str, Any]:
            nonlocal first
            delta: dict[str, Any] = {"content": text} if text or final is None else {}
            if first:
                delta["role"], first = "assistant", False
            out: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": _finish(final) if final else None}],
            }
            if final is not None:
                out.update(usage=_usage(final), prompt_version=gen.prompt_version, context_used=gen.context_used)
            return out

        return _sse(gen, frame)
    r = await _unless_disconnected(request, core.generate(req))
    return _json(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": r.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": _finish(r.final)}
            ],
            "usage": _usage(r.final),
            "prompt_version": r.prompt_version,
            "context_used": r.context_used,
        },
        r.final,
    )


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, core: Core, request: Request) -> Any:
    _check_model(core, body.model)
    req = _input(body, prompt=body.prompt)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    model = core.info.model
    if body.stream:
        gen = await core.start(req)

        def frame(text: str, final: Final | None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": _finish(final) if final else None}],
            }
            if final is not None:
                out.update(usage=_usage(final), prompt_version=gen.prompt_version)
            return out

        return _sse(gen, frame)
    r = await _unless_disconnected(request, core.generate(req))
    return _json(
        {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": r.model,
            "choices": [{"index": 0, "text": r.text, "finish_reason": _finish(r.final)}],
            "usage": _usage(r.final),
            "prompt_version": r.prompt_version,
        },
        r.final,
    )


def _json(content: dict[str, Any], final: Final) -> JSONResponse:
    return JSONResponse(content, headers={"Server-Timing": _server_timing(final)})


@router.get("/v1/models", response_model=ModelList[GeneratorModelCard])
async def models(core: Core) -> ModelList[GeneratorModelCard]:
    i = core.info
    return ModelList[GeneratorModelCard](
        data=[
            GeneratorModelCard(
                id=i.model,
                engine=i.engine,
                revision=i.revision,
                context_window=i.context_window,
                max_tokens_cap=i.max_tokens_cap,
                prompt_version=i.prompt_version,
            )
        ]
    )
