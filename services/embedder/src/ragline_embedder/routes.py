"""HTTP routes: OpenAI-style /v1/embeddings and /v1/models."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from ragline_common.errors import InvalidInput, Unavailable
from ragline_embedder.core import Embedder


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str | None = Field(None, description="Ignored unless set: must name the loaded model.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Must equal the model's dimension when set.")
    user: str | None = None


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "ragline"
    revision: str
    dimension: int
    max_seq_length: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def get_core(request: Request) -> Embedder:
    return request.app.state.core  # type: ignore[no-any-return]


Core = Annotated[Embedder, Depends(get_core)]

router = APIRouter()


@router.post("/v1/embeddings", response_model=EmbeddingsResponse)
async def embeddings(body: EmbeddingsRequest, core: Core, response: Response) -> EmbeddingsResponse:
    info = core.info
    if info is None:
        raise Unavailable("the embedding model is still loading")
    if body.model and body.model not in (info.model, info.model.rsplit("/", 1)[-1]):
        raise InvalidInput(f"model {body.model!r} is not served here; this embedder serves {info.model!r}")
    if body.dimensions is not None and body.dimensions != info.dimension:
        raise InvalidInput(f"dimensions={body.dimensions} is not supported; {info.model} has {info.dimension}")
    texts = [body.input] if isinstance(body.input, str) else body.input
    result = await core.embed(texts)
    data = []
    for i, v in enumerate(result.vectors):
        vec: list[float] | str
        if body.encoding_format == "base64":
            vec = base64.b64encode(np.asarray(v.vector, dtype="<f4").tobytes()).decode()
        else:
            vec = v.vector.tolist()
        data.append(EmbeddingItem(index=i, embedding=vec, truncated=v.truncated))
    response.headers["Server-Timing"] = (
        f"queue;dur={result.queue_seconds * 1000:.2f}, "
        f"inference;dur={(result.total_seconds - result.queue_seconds) * 1000:.2f}"
    )
    truncated = sum(1 for v in result.vectors if v.truncated)
    if truncated:
        response.headers["X-Ragline-Truncated"] = str(truncated)
    return EmbeddingsResponse(
        data=data, model=info.model, usage=Usage(prompt_tokens=result.tokens, total_tokens=result.tokens)
    )


@router.get("/v1/models", response_model=ModelList)
async def models(core: Core) -> ModelList:
    info = core.info
    if info is None:
        raise Unavailable("the embedding model is still loading")
    return ModelList(
        data=[
            ModelCard(
                id=info.model, revision=info.revision, dimension=info.dimension, max_seq_length=info.max_seq_length
            )
        ]
    )
