"""vllm.v1.engine.async_llm.AsyncLLM of the stand-in: 0.11.0's method names and shapes, a fixed reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from vllm import AsyncEngineArgs, SamplingParams

REPLY = ("Paris ", "is ", "the ", "capital ", "of ", "France.")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]
    finished: bool = False


@dataclass
class ModelConfig:
    max_model_len: int


class Tokenizer:
    """A byte-level tokenizer with a ChatML template: enough for render_chat, count_tokens and encode."""

    all_special_tokens = ["<|im_start|>", "<|im_end|>"]
    added_tokens_decoder: dict[int, Any] = {}

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = True, **kwargs: Any) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if kwargs.get("add_generation_prompt") else "")

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        return list(text.encode())


@dataclass
class AsyncLLM:
    args: AsyncEngineArgs
    aborted: list[str] = field(default_factory=list)
    errored: bool = False

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, **kwargs: Any) -> AsyncLLM:
        return cls(engine_args)

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    async def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    async def get_model_config(self) -> ModelConfig:
        return ModelConfig(self.args.max_model_len or 2048)

    async def check_health(self) -> None:
        return None

    async def generate(
        self, prompt: dict[str, Any], sampling_params: SamplingParams, request_id: str, **kwargs: Any
    ) -> AsyncIterator[RequestOutput]:
        if not prompt.get("prompt_token_ids"):
            raise ValueError("prompt_token_ids must not be empty")
        words = REPLY[: sampling_params.max_tokens or len(REPLY)]
        text = ""
        for i, word in enumerate(words):
            await asyncio.sleep(0)
            text += word
            last = i == len(words) - 1
            reason = ("stop" if len(words) == len(REPLY) else "length") if last else None
            yield RequestOutput(request_id, [CompletionOutput(0, text, list(range(i + 1)), reason)], last)

    async def abort(self, request_id: str | Iterable[str]) -> None:
        self.aborted.extend([request_id] if isinstance(request_id, str) else request_id)

    def shutdown(self) -> None:
        return None
