"""The models the api serves: `ragline` (RAG), the generator's own model (plain LLM) and the embedder's model."""

from __future__ import annotations

from typing import Literal

from ragline_api.core import QueryPipeline
from ragline_common.errors import NotFound, RaglineError
from ragline_common.http import FieldError
from ragline_common.openai import ModelCard

RAG_MODEL = "ragline"
Kind = Literal["rag", "llm", "embedding"]
DESCRIPTIONS: dict[Kind, str] = {
    "rag": "Retrieval-augmented answers: retrieves passages for the last user message and cites them (default).",
    "llm": "The generator's model alone: no retrieval, the messages or prompt exactly as given.",
    "embedding": "The embedder's model, for /v1/embeddings.",
}


class ModelNotFound(NotFound):
    """OpenAI's answer to an unknown model: 404 with type invalid_request_error and code model_not_found."""

    kind = "invalid_request_error"
    code = "model_not_found"
    param = "model"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model {model!r} does not exist; GET /v1/models lists the models ragline serves")


async def known_models(core: QueryPipeline) -> dict[str, Kind]:
    """Model id -> kind; a downstream that cannot be reached leaves its model out."""
    models: dict[str, Kind] = {RAG_MODEL: "rag"}
    try:
        info = await core.info()
    except RaglineError:
        return models
    if info.get("generator_model"):
        models.setdefault(info["generator_model"], "llm")
    if info.get("embedder_model"):
        models.setdefault(info["embedder_model"], "embedding")
    return models


def lookup(models: dict[str, Kind], model: str) -> tuple[str, Kind] | None:
    """(id, kind) of `model`: its exact id, or the last part of a namespaced id ("all-MiniLM-L6-v2" for
    "sentence-transformers/all-MiniLM-L6-v2") when exactly one model has it."""
    if model in models:
        return model, models[model]
    found = [(m, k) for m, k in models.items() if "/" in m and m.rsplit("/", 1)[1] == model]
    return found[0] if len(found) == 1 else None


class ApiModelCard(ModelCard):
    created: int
    ragline_kind: Kind
    description: str


def card(core: QueryPipeline, model: str, kind: Kind) -> ApiModelCard:
    return ApiModelCard(id=model, created=core.started, ragline_kind=kind, description=DESCRIPTIONS[kind])


async def resolve(core: QueryPipeline, model: str | None, wanted: tuple[Kind, ...]) -> Kind:
    """The kind of `model` for a route that serves `wanted` kinds: 404 model_not_found when unknown, 400 when
    it is a model of another kind (an embedding model asked to chat)."""
    if model is None and "embedding" in wanted:
        return "embedding"
    if model == RAG_MODEL and "rag" in wanted:
        return "rag"
    if model is None:
        raise FieldError("model is required", "model")
    found = lookup(await known_models(core), model)
    if found is None:
        if "llm" in wanted:
            await core.generator_info()  # a generator that cannot be asked is a 503, not "no such model"
        raise ModelNotFound(model)
    kind = found[1]
    if kind not in wanted:
        raise FieldError(f"model {model!r} is a {kind} model; this route serves {' or '.join(wanted)} models", "model")
    return kind
