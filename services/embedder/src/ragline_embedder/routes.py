"""HTTP routes: OpenAI-style /v1/embeddings and /v1/models."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ragline_common.errors import InvalidInput, Unavailable
from ragline_common.http import get_core
from ragline_common.openai import ModelCard, ModelList
from ragline_embedder.core import Embedder, EmbedResult, ModelInfo


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="A text or a list of texts (token arrays are not supported).")
    model: str | None = Field(None, description="Ignored unless set: must name the loaded model.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes, base64-encoded."
    )
    dimensions: int | None = Field(None, description="Must equal the model's dimension when set.")
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
            if bad is None:
                return value
            if all(isinstance(v, int) or (isinstance(v, list) and all(isinstance(t, int) for t in v)) for v in value):
                raise PydanticCustomError(
                    "token_arrays",
                    "token arrays (lists of integers) are not supported; send text as a string or a list of strings",
                )
            raise PydanticCustomError(
                "texts",
                "input must be a string or a list of strings; input[{index}] is {kind}",
                {"index": bad, "kind": type(value[bad]).__name__},
            )
        raise PydanticCustomError(
            "texts", "input must be a string or a list of strings, got {kind}", {"kind": type(value).__name__}
        )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    truncated: bool = Field(False, description="The text exceeded the model's max sequence length and was cut.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class EmbeddingModelCard(ModelCard):
    revision: str
    dimension: int
    max_seq_length: int


Core = Annotated[Embedder, Depends(get_core)]

router = APIRouter()

# The body is parsed by hand (bad UTF-8 and bad JSON get their own message); OpenAPI still shows its schema.
_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EmbeddingsRequest.model_json_schema()}},
    }
}


def parse_request(raw: bytes) -> EmbeddingsRequest:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); send UTF-8 JSON"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise InvalidInput(f"request body is not valid JSON: {exc.msg} ({where})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return EmbeddingsRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def check_model(body: EmbeddingsRequest, info: ModelInfo) -> None:
    if body.model and body.model not in (info.model, info.model.rsplit("/", 1)[-1]):
        raise InvalidInput(f"model {body.model!r} is not served here; this embedder serves {info.model!r}")
    if body.dimensions is not None and body.dimensions != info.dimension:
        raise InvalidInput(f"dimensions={body.dimensions} is not supported; {info.model} has {info.dimension}")


def render(result: EmbedResult, model: str, encoding_format: str) -> bytes:
    """The OpenAI response as JSON bytes, built directly: re-validating it through pydantic costs more than the
    model's share of a one-text request."""
    data = []
    for i, v in enumerate(result.vectors):
        if encoding_format == "base64":
            vec: np.ndarray | str = base64.b64encode(v.vector.astype("<f4", copy=False).tobytes()).decode()
        else:
            # orjson writes a float32 array's shortest repr (exact as float32) from C: 44 us a vector against 1.3 ms for
            # json.dumps of tolist(), which on a GPU node is the event loop's largest share of a request.
            vec = np.ascontiguousarray(v.vector, dtype=np.float32)
        data.append({"object": "embedding", "index": i, "embedding": vec, "truncated": v.truncated})
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, openapi_extra=_BODY_SCHEMA)
async def embeddings(request: Request, core: Core) -> Response:
    body = parse_request(await request.body())
    info = core.info
    if info is None:
        raise Unavailable("the embedding model is still loading")
    check_model(body, info)
    texts = [body.input] if isinstance(body.input, str) else body.input
    result = await core.embed(texts)
    stats = result.stats
    headers = {
        "Server-Timing": (
            f"queue;dur={stats.queue_seconds * 1000:.2f}, inference;dur={stats.inference_seconds * 1000:.2f}, "
            f"total;dur={result.total_seconds * 1000:.2f}"
        ),
        "X-Ragline-Batch-Size": str(stats.batch_size),
    }
    if result.truncated:
        headers["X-Ragline-Truncated"] = str(result.truncated)
    return Response(render(result, info.model, body.encoding_format), media_type="application/json", headers=headers)


@router.get("/v1/models", response_model=ModelList[EmbeddingModelCard])
async def models(core: Core) -> ModelList[EmbeddingModelCard]:
    info = core.info
    if info is None:
        raise Unavailable("the embedding model is still loading")
    return ModelList[EmbeddingModelCard](
        data=[
            EmbeddingModelCard(
                id=info.model, revision=info.revision, dimension=info.dimension, max_seq_length=info.max_seq_length
            )
        ]
    )
