"""OpenAI-compatible routes: /v1/chat/completions and /v1/completions (RAG or plain LLM, by model),
/v1/embeddings, /v1/models."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import StreamingResponse

from ragline_api import schemas as s
from ragline_api.models import RAG_MODEL, ApiModelCard, ModelNotFound, card, known_models, lookup, resolve
from ragline_api.openai_schemas import ChatRequest, CompletionRequest, EmbeddingsRequest
from ragline_api.routes import (
    SSE_HEADERS,
    Core,
    Frames,
    bearer,
    checked_k,
    checked_text,
    filters_dict,
    sse_response_doc,
    started_stream,
)
from ragline_api.routes import stream_error as error_event
from ragline_common.http import FieldError
from ragline_common.openai import ModelList

router = APIRouter(prefix="/v1", responses=s.ERRORS, dependencies=[Depends(bearer)])


def _finish(reason: str) -> str:
    return reason if reason != "abort" else "stop"


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _sse(
    frames: Frames,
    first: dict[str, Any] | None,
    delta: Callable[[str], dict[str, Any]],
    finish: Callable[[str], dict[str, Any]],
    usage: Callable[[dict[str, Any]], dict[str, Any]] | None,
) -> AsyncIterator[bytes]:
    if first is not None:
        yield _data(first)
    try:
        async for kind, data in frames:
            if kind == "token":
                yield _data(delta(data["delta"]))
            else:
                yield _data(finish(_finish(data["finish_reason"])))
                if usage is not None:
                    yield _data(usage(data["usage"]))
    except Exception as exc:  # after the 200: an in-band error object, as OpenAI streams do
        yield _data(error_event(exc))
    yield b"data: [DONE]\n\n"


async def _checked(core: Core, body: ChatRequest | CompletionRequest) -> bool:
    """Validate what Pydantic cannot before any work: parameters, the model, the generator's max_tokens cap.
    Returns whether to retrieve."""
    body.check_supported()
    kind = await resolve(core, body.model, ("rag", "llm"))
    await core.check_max_tokens(body.sampling()["max_tokens"])
    return kind == "rag"


@router.post(
    "/chat/completions",
    summary="OpenAI-compatible chat completion: model `ragline` answers with retrieval and a top-level "
    "`citations` field; the generator's model id answers without retrieval",
    responses=sse_response_doc(None, "A chat.completion, or with stream=true chat.completion.chunk events"),
)
async def chat_completions(body: ChatRequest, core: Core, response: Response) -> Any:
    core.begin(stream=body.stream)
    retrieve = await _checked(core, body) and body.retrieval
    messages: list[tuple[str, str]] = [(m.role if m.role != "developer" else "system", m.text()) for m in body.messages]
    for i, (_, text) in enumerate(messages):
        checked_text(core, text, f"messages.{i}.content")
    k = checked_k(core, body.k)
    prepared = await core.prepare(messages, k, filters_dict(body.filters), body.sampling(), retrieve=retrieve)
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    if body.stream:
        frames = await started_stream(core, prepared)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {**base, "choices": [choice], **extra}

        first = chunk({"role": "assistant", "content": ""}, citations=prepared.citations)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(
                frames,
                first,
                lambda text: chunk({"content": text}),
                lambda reason: chunk({}, reason),
                (lambda u: {**base, "choices": [], "usage": u}) if include_usage else None,
            ),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "Server-Timing": prepared.times.header()},
        )
    out = await core.generate(prepared)
    response.headers["Server-Timing"] = prepared.times.header()
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": out["prompt_version"] or None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": out["answer"]},
                "finish_reason": _finish(out["finish_reason"]),
                "logprobs": None,
            }
        ],
        "usage": out["usage"],
        "citations": prepared.citations,
    }


@router.post(
    "/completions",
    summary="OpenAI-compatible text completion: the generator's model id completes the prompt as given; "
    "model `ragline` answers the prompt as a question with retrieval (and `citations`)",
    responses=sse_response_doc(None, "A text_completion, or with stream=true text_completion events"),
)
async def completions(body: CompletionRequest, core: Core, response: Response) -> Any:
    core.begin(stream=body.stream)
    retrieve = await _checked(core, body)
    prompt = checked_text(core, body.prompt, "prompt")  # type: ignore[arg-type]  # a str after validation
    if retrieve:
        prepared = await core.prepare([("user", prompt)], checked_k(core, None), None, body.sampling())
    else:
        prepared = core.prepare_prompt(prompt, body.sampling())
    cid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model
    base = {"id": cid, "object": "text_completion", "created": created, "model": model}
    extra = {"citations": prepared.citations} if retrieve else {}
    if body.stream:
        frames = await started_stream(core, prepared)

        def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(
                frames,
                {**chunk(""), **extra} if extra else None,
                chunk,
                lambda reason: chunk("", reason),
                (lambda u: {**base, "choices": [], "usage": u}) if include_usage else None,
            ),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "Server-Timing": prepared.times.header()},
        )
    out = await core.generate(prepared)
    response.headers["Server-Timing"] = prepared.times.header()
    choice = {"text": out["answer"], "index": 0, "logprobs": None, "finish_reason": _finish(out["finish_reason"])}
    return {**base, "choices": [choice], "usage": out["usage"], **extra}


@router.post("/embeddings", summary="OpenAI-compatible embeddings (sent to the embedder in its batch size)")
async def embeddings(body: EmbeddingsRequest, core: Core) -> dict[str, Any]:
    core.begin()
    body.check_supported()
    await resolve(core, body.model, ("embedding",))
    texts = [body.input] if isinstance(body.input, str) else body.input
    if body.dimensions is not None:
        dim = int((await core.info())["services"].get("embedder", {}).get("dimension") or 0)
        if dim and body.dimensions != dim:
            raise FieldError(f"dimensions={body.dimensions} is not supported; the model has {dim}", "dimensions")
    reply = await core.embed(texts)
    data = []
    for i, e in enumerate(reply.embeddings):
        vec: list[float] | str = list(e.values)
        if body.encoding_format == "base64":
            vec = base64.b64encode(struct.pack(f"<{len(e.values)}f", *e.values)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    return {"object": "list", "data": data, "model": reply.model, "usage": usage}


@router.get("/models", summary="OpenAI-compatible model list; `ragline_kind` says rag, llm or embedding")
async def models(core: Core) -> ModelList[ApiModelCard]:
    core.begin()
    return ModelList[ApiModelCard](data=[card(core, m, kind) for m, kind in (await known_models(core)).items()])


@router.get("/models/{model:path}", summary="One model of /v1/models (404 model_not_found when unknown)")
async def model(core: Core, model: str = Path(max_length=256)) -> ApiModelCard:
    core.begin()
    found = lookup(await known_models(core), model) or ((model, "rag") if model == RAG_MODEL else None)
    if found is None:
        raise ModelNotFound(model)
    return card(core, *found)
