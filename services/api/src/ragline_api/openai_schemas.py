"""OpenAI-compatible request models, and the refusal of every OpenAI parameter ragline cannot honour."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragline_api import schemas as s
from ragline_common.http import FieldError
from ragline_common.limits import MAX_EMBED_INPUTS

DEFAULT_MODEL = "ragline"
MAX_EMBED_CHARS = 65536

# OpenAI parameters that are accepted because ragline honours them as OpenAI defines them, or because they only
# label the request (user, metadata). Every other field is refused by name: a client must never believe a
# parameter took effect when it did not.
_ACCEPTED = {"user", "metadata", "service_tier", "safety_identifier", "prompt_cache_key"}
# Parameters refused unless they hold the value that means "off" (what some clients send by default).
_OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, False, True),  # meaningless without tools, which are refused
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "store": (None, False),
    "modalities": (None, ["text"]),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "stream_options": (None,),  # handled by the routes that stream
    # On messages replayed from an earlier OpenAI answer (message.model_dump()):
    "tool_calls": (None, []),
    "refusal": (None,),
    "audio": (None,),
    "annotations": (None, []),
}


def refuse_unsupported(extra: dict[str, Any] | None, prefix: str = "") -> None:
    """400 invalid_request_error naming the first parameter that ragline would otherwise silently ignore."""
    for name, value in (extra or {}).items():
        if name in _ACCEPTED:
            continue
        off = _OFF_VALUES.get(name)
        if off is None:
            raise FieldError(f"{prefix}{name} is not a parameter ragline supports", f"{prefix}{name}")
        if not any(value == o and type(value) is type(o) or (value is None and o is None) for o in off):
            raise FieldError(f"{prefix}{name}={value!r} is not supported by ragline", f"{prefix}{name}")


class OpenAIRequest(BaseModel):
    """Unknown fields are kept (extra="allow") only to be refused by name after validation."""

    model_config = ConfigDict(extra="allow")

    def check_supported(self) -> None:
        refuse_unsupported(self.model_extra)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer"] = Field(
        description="Tool messages are refused: ragline does not call tools."
    )
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256, description="A participant's name (not used by the model).")

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class GenerationFields(OpenAIRequest):
    """Sampling fields shared by chat and text completions."""

    model: str = Field(
        DEFAULT_MODEL,
        max_length=256,
        description="`ragline` = retrieval-augmented answers (default); the generator's own model id "
        "(see GET /v1/models) = the plain LLM, no retrieval.",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None  # type: ignore[assignment]
    max_tokens: int | None = Field(None, ge=1, le=s.MAX_TOKENS_CEILING, strict=True, description=s.MAX_TOKENS_DOC)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = Field(None, description="Up to 4 stop sequences of 1 to 64 characters.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, strict=True)
    n: int | None = Field(None, ge=1, le=1, strict=True, description="Only 1 is supported.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not x or len(x) > 64 for x in stops)):
            raise ValueError("stop takes up to 4 sequences of 1 to 64 characters")
        return stops

    def sampling(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
        }


class ChatRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(
        None, ge=1, le=s.MAX_TOKENS_CEILING, strict=True, description="Same as max_tokens (OpenAI's newer name)."
    )
    response_format: dict[str, Any] | None = Field(None, description='Only {"type": "text"} is supported.')
    # ragline extensions (send with the SDK's extra_body)
    k: s.KField = Field(None, description="ragline: passages to retrieve.")
    filters: s.Filters | None = Field(None, description="ragline: metadata filter for retrieval.")
    retrieval: bool = Field(True, description="ragline: false = plain chat, no retrieval (as the generator's model).")

    @model_validator(mode="after")
    def _content(self) -> ChatRequest:
        users = [i for i, m in enumerate(self.messages) if m.role == "user"]
        if not users:
            raise ValueError("messages must contain at least one user message")
        for i in users:
            if not self.messages[i].text().strip():
                raise FieldError(f"messages.{i}.content must not be blank", f"messages.{i}.content")
        return self

    def check_supported(self) -> None:
        super().check_supported()
        for i, m in enumerate(self.messages):
            refuse_unsupported(m.model_extra, f"messages.{i}.")
        if self.response_format is not None and self.response_format != {"type": "text"}:
            raise FieldError(
                f"response_format {self.response_format.get('type')!r} is not supported; only 'text' is",
                "response_format",
            )
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise FieldError("give max_tokens or max_completion_tokens, not both", "max_completion_tokens")

    def sampling(self) -> dict[str, Any]:
        return {**super().sampling(), "max_tokens": self.max_completion_tokens or self.max_tokens}


class CompletionRequest(GenerationFields):
    prompt: str | list[str] = Field(description="One prompt (a list of exactly one string is accepted).")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"prompt takes one text (n=1), got {len(value)}")
            value = value[0]
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value


class EmbeddingsRequest(OpenAIRequest):
    input: str | list[str] = Field(
        description=f"A text or a list of 1 to {MAX_EMBED_INPUTS} texts (token arrays are not supported)."
    )
    model: str | None = Field(None, max_length=256, description="The embedder's model id (GET /v1/models).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, strict=True, description="Must equal the model's dimension.")

    @field_validator("input", mode="before")
    @classmethod
    def _token_arrays(cls, value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
            raise ValueError("token arrays are not supported; send a string or a list of strings")
        return value

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not 1 <= len(texts) <= MAX_EMBED_INPUTS:
            raise ValueError(f"input takes 1 to {MAX_EMBED_INPUTS} texts, got {len(texts)}")
        for i, t in enumerate(texts):
            if len(t) > MAX_EMBED_CHARS:
                raise ValueError(f"input[{i}] has {len(t)} characters; at most {MAX_EMBED_CHARS} are allowed")
        return value
