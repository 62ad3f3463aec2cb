"""Public request and response models (the OpenAPI document is generated from these)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ragline_common.limits import (
    DEFAULT_MAX_TOKENS_CAP,
    DOC_ID_RULE,
    FILTER_KEY_PATTERN,
    MAX_ANY_OF,
    MAX_DOC_ID_CHARS,
    MAX_FILTER_CONDITIONS,
    MAX_K,
    MAX_METADATA_KEYS,
    doc_id_problem,
    k_problem,
)

Scalar = str | int | float | bool

# No control characters (ids end up in logs and URLs); the segment rules are checked by doc_id_problem.
DOC_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
# JSON numbers travel as doubles (protobuf Struct): integers beyond this would be stored rounded.
EXACT_INT = 2**53
# The generator owns the real cap (its Info's max_tokens_cap, checked before any answer starts); this ceiling
# only keeps the value inside the proto's uint32.
MAX_TOKENS_CEILING = 1_048_576
MAX_TOKENS_DOC = (
    f"Most tokens to generate: 1 to the generator's max_tokens_cap ({DEFAULT_MAX_TOKENS_CAP} unless "
    "GENERATOR_MAX_TOKENS_CAP sets another; GET /v1/info shows it)."
)


def check_k(value: Any) -> Any:
    """One rule and one message for k everywhere: a JSON integer (not "5", not true) from 1 to MAX_K."""
    if value is None:
        return None
    problem = k_problem(value, MAX_K)
    if problem:
        raise PydanticCustomError("k_range", problem)
    return value


def check_doc_id(value: str) -> str:
    problem = doc_id_problem(value)
    if problem:
        raise PydanticCustomError("doc_id", problem)
    return value


KField = Annotated[Annotated[int, Field(ge=1, le=MAX_K)] | None, BeforeValidator(check_k)]
DocIdField = Annotated[str, AfterValidator(check_doc_id)]


def _exact_json(value: Any, where: str) -> None:
    """Refuse numbers the store would keep as something else: non-finite, or integers beyond ±2^53."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and abs(value) > EXACT_INT:
        raise PydanticCustomError(
            "exact_int", "{where}: integer {value} is outside ±2^53, the range stored exactly",
            {"where": where, "value": value},
        )  # fmt: skip
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite", "{where}: {value} is not a finite number", {"where": where, "value": value})
    if isinstance(value, dict):
        for k, v in value.items():
            _exact_json(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _exact_json(v, f"{where}.{i}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NumRange(Strict):
    gt: float | None = Field(None, allow_inf_nan=False)
    gte: float | None = Field(None, allow_inf_nan=False)
    lt: float | None = Field(None, allow_inf_nan=False)
    lte: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some(self) -> NumRange:
        if all(v is None for v in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        return self


class DateRange(Strict):
    gt: str | None = Field(None, description="RFC 3339 timestamp", max_length=64)
    gte: str | None = Field(None, max_length=64)
    lt: str | None = Field(None, max_length=64)
    lte: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _some(self) -> DateRange:
        from datetime import datetime

        values = [v for v in (self.gt, self.gte, self.lt, self.lte) if v is not None]
        if not values:
            raise ValueError("a date_range needs at least one of gt, gte, lt, lte")
        for v in values:
            try:
                datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"date_range bound {v!r} is not an RFC 3339 timestamp") from None
        return self


class Condition(Strict):
    """One condition on a metadata key: exactly one of equals, any_of, range, date_range."""

    key: str = Field(
        pattern=FILTER_KEY_PATTERN, description="Metadata key: letters, digits, '_' and '-'; dots for nested keys."
    )
    equals: Scalar | None = None
    any_of: list[Scalar] | None = Field(None, min_length=1, max_length=MAX_ANY_OF)
    range: NumRange | None = None
    date_range: DateRange | None = None

    @field_validator("equals", "any_of")
    @classmethod
    def _exact(cls, value: Any) -> Any:
        _exact_json(value, "value")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = [n for n in ("equals", "any_of", "range", "date_range") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"condition on {self.key!r} needs exactly one of equals, any_of, range, date_range; "
                f"got {given or 'none'}"
            )
        return self


class Filters(Strict):
    """All must hold: {"must": [{"key": "lang", "equals": "en"}, {"key": "year", "range": {"gte": 2020}}]}"""

    must: list[Condition] = Field(default_factory=list, max_length=MAX_FILTER_CONDITIONS)


class GenerationParams(Strict):
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING, strict=True, description=MAX_TOKENS_DOC)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[str] | None = Field(None, max_length=4, description="Up to 4 stop sequences.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, strict=True)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not s or len(s) > 64 for s in value):
            raise ValueError("each stop sequence must have 1 to 64 characters")
        return value


def _not_blank(value: str, name: str) -> str:
    if not value.strip():
        raise ValueError(f"{name} must not be blank")
    return value


class SearchRequest(Strict):
    query: str = Field(min_length=1, max_length=4000, description="Text to search for.")
    k: KField = Field(None, description=f"Passages to return (1 to {MAX_K}; default API_DEFAULT_K).")
    filters: Filters | None = None
    mode: Literal["dense", "hybrid"] | None = Field(None, description="Search mode; default: the retriever's.")

    @field_validator("query")
    @classmethod
    def _q(cls, value: str) -> str:
        return _not_blank(value, "query")


class QueryRequest(GenerationParams):
    question: str = Field(min_length=1, max_length=4000, description="The question to answer from the documents.")
    k: KField = Field(None, description=f"Passages to retrieve (1 to {MAX_K}).")
    filters: Filters | None = None
    stream: bool = Field(False, description="Answer as Server-Sent Events: citations, token…, done.")

    @field_validator("question")
    @classmethod
    def _q(cls, value: str) -> str:
        return _not_blank(value, "question")


class Hit(BaseModel):
    doc_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]
    start: int = Field(description="Character offset of the chunk in its document.")
    end: int = Field(description="End offset, exclusive.")


class Citation(Hit):
    index: int = Field(description="The number [n] the prompt template gave this passage.")


class SearchResponse(BaseModel):
    hits: list[Hit]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReleaseRef(BaseModel):
    release: str
    generator_model: str
    prompt_version: str
    embedder_model: str | None = None


class QueryResponse(BaseModel):
    answer: str
    citations: list[Citation]
    context_used: list[int] = Field(description="Citation numbers that fitted the generator's context budget.")
    finish_reason: str
    usage: Usage
    release: ReleaseRef


class DocumentIn(Strict):
    id: DocIdField = Field(
        min_length=1, max_length=MAX_DOC_ID_CHARS, pattern=DOC_ID_PATTERN, description=f"An id: {DOC_ID_RULE}."
    )
    text: str = Field(min_length=1, max_length=1_000_000)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _meta(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata may have at most {MAX_METADATA_KEYS} keys, got {len(value)}")
        _exact_json(value, "metadata")
        return value


class UpsertRequest(Strict):
    documents: list[DocumentIn] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _unique(self) -> UpsertRequest:
        ids = [d.id for d in self.documents]
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must be unique within one request")
        return self


class UpsertResult(BaseModel):
    id: str
    status: Literal["created", "updated", "unchanged", "error"]
    chunks: int
    content_hash: str
    error: str | None = None


class UpsertResponse(BaseModel):
    results: list[UpsertResult]


class Chunk(BaseModel):
    chunk_id: str
    text: str
    start: int
    end: int


class DocumentOut(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    chunks: list[Chunk]


class DeleteResponse(BaseModel):
    id: str
    deleted_chunks: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "Invalid input",
        401: "Missing or invalid API key",
        404: "Not found",
        413: "Request body too large",
        429: "Rate limit or capacity exceeded (Retry-After)",
        503: "A downstream is unavailable or its circuit is open (Retry-After)",
        504: "The request's deadline passed",
    }.items()
}
