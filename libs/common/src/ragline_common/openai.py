"""OpenAI's model-list schema (GET /v1/models), one definition for every service that lists models."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel


class ModelCard(BaseModel):
    """One OpenAI model object; each service subclasses it with the fields that describe its own model."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str = "ragline"


CardT = TypeVar("CardT", bound=ModelCard)


class ModelList(BaseModel, Generic[CardT]):
    object: Literal["list"] = "list"
    data: list[CardT]
