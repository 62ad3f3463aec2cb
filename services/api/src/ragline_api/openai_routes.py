"""OpenAI-compatible routes: /v1/chat/completions (RAG, with a `citations` extra field), /v1/embeddings, /v1/models."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ragline_api import schemas as s
from ragline_api.core import Prepared, QueryPipeline
from ragline_api.routes import (
    SSE_HEADERS,
    Core,
    bearer,
    checked_k,
    checked_text,
    filters_dict,
    sse_response_doc,
    stream_error,
)
from ragline_common.errors import InvalidInput, RaglineError

router = APIRouter(prefix="/v1", responses=s.ERRORS, dependencies=[Depends(bearer)])

DEFAULT_MODEL = "ragline"
MAX_EMBED_CHARS = 65536


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id… are accepted and ignored
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            if any(p.type != "text" for p in self.content):
                raise InvalidInput("only text content parts are supported")
            return "".join(p.text or "" for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    # Unknown OpenAI fields (logprobs, tools…) are accepted and ignored, as many OpenAI-compatible servers do.
    model_config = ConfigDict(extra="allow")
    model: str = Field(DEFAULT_MODEL, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    # ragline extensions (send with the SDK's extra_body)
    k: int | None = Field(None, ge=1, le=1000, description="ragline: passages to retrieve.")
    filters: s.Filters | None = Field(None, description="ragline: metadata filter for retrieval.")
    retrieval: bool = Field(True, description="ragline: false = plain chat, no retrieval.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not x or len(x) > 64 for x in stops)):
            raise ValueError("stop takes up to 4 sequences of 1 to 64 characters")
        return stops


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not supported).")
    model: str | None = Field(None, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 256:
            raise ValueError(f"input takes 1 to 256 texts, got {len(value)}")
        return value


def _params(body: ChatRequest) -> dict[str, Any]:
    return {
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stop,
        "seed": body.seed,
    }


@router.post(
    "/chat/completions",
    summary="OpenAI-compatible chat completion with retrieval; extra top-level field `citations`",
    responses=sse_response_doc(None, "A chat.completion, or with stream=true chat.completion.chunk events"),
)
async def chat_completions(body: ChatRequest, core: Core, response: Response) -> Any:
    core.begin(stream=body.stream)
    messages: list[tuple[str, str]] = [
        (m.role if m.role != "developer" else "system", m.text()) for m in body.messages if m.role != "tool"
    ]
    if not any(role == "user" for role, _ in messages):
        raise InvalidInput("messages must contain at least one user message")
    for _, text in messages:
        checked_text(core, text, "a message")
    prepared = await core.prepare(
        messages, checked_k(core, body.k), filters_dict(body.filters), _params(body), retrieve=body.retrieval
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _chunks(core, prepared, completion_id, body.model, include_usage),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "Server-Timing": prepared.times.header()},
        )
    out = await core.generate(prepared)
    response.headers["Server-Timing"] = prepared.times.header()
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": out["prompt_version"] or None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": out["answer"]},
                "finish_reason": out["finish_reason"] if out["finish_reason"] != "abort" else "stop",
                "logprobs": None,
            }
        ],
        "usage": out["usage"],
        "citations": prepared.citations,
    }


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _chunks(
    core: QueryPipeline, prepared: Prepared, cid: str, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        return _data({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""}, citations=prepared.citations)
    try:
        async for kind, data in core.generate_stream(prepared):
            if kind == "token":
                yield chunk({"content": data["delta"]})
            else:
                finish = data["finish_reason"] if data["finish_reason"] != "abort" else "stop"
                yield chunk({}, finish)
                if include_usage:
                    yield _data(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": data["usage"],
                        }
                    )
    except Exception as exc:  # after the 200: an in-band error object, as OpenAI streams do
        yield _data(stream_error(exc))
    yield b"data: [DONE]\n\n"


@router.post("/embeddings", summary="OpenAI-compatible embeddings (passed to the embedder)")
async def embeddings(body: EmbeddingsRequest, core: Core) -> dict[str, Any]:
    core.begin()
    texts = [body.input] if isinstance(body.input, str) else body.input
    for i, t in enumerate(texts):
        if len(t) > MAX_EMBED_CHARS:
            raise InvalidInput(f"input[{i}] has {len(t)} characters; at most {MAX_EMBED_CHARS} are allowed")
    reply = await core.embed(texts)
    data = []
    for i, e in enumerate(reply.embeddings):
        vec: list[float] | str = list(e.values)
        if body.encoding_format == "base64":
            vec = base64.b64encode(struct.pack(f"<{len(e.values)}f", *e.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return {"object": "list", "data": data, "model": reply.model, "usage": usage}


@router.get("/models", summary="OpenAI-compatible model list")
async def models(core: Core) -> dict[str, Any]:
    core.begin()
    try:
        info = await core.info()
    except RaglineError:
        info = {}
    created = int(time.time())
    data = [{"id": DEFAULT_MODEL, "object": "model", "created": created, "owned_by": "ragline"}]
    for key in ("generator_model", "embedder_model"):
        if info.get(key):
            data.append({"id": info[key], "object": "model", "created": created, "owned_by": "ragline"})
    return {"object": "list", "data": data}
