"""vLLM engine: the async engine in process, for GPU nodes; vllm is imported only when this engine loads."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ragline_common.errors import InvalidInput
from ragline_generator.engines.base import Engine, EngineInfo, FinishReason, Message, Prompt, Sampling, TokenEvent
from ragline_generator.settings import GeneratorSettings

log = logging.getLogger(__name__)

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "aborted"}


def engine_args(settings: GeneratorSettings) -> dict[str, Any]:
    """GENERATOR_* settings → keyword arguments of vllm.AsyncEngineArgs."""
    max_model_len = settings.vllm_max_model_len or settings.context_window
    args: dict[str, Any] = {
        "model": settings.model,
        "dtype": settings.vllm_dtype,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization,
        "tensor_parallel_size": settings.vllm_tensor_parallel_size,
        "max_num_seqs": settings.vllm_max_num_seqs,
        "enable_prefix_caching": settings.vllm_enable_prefix_caching,
    }
    if settings.model_revision:
        args["revision"] = settings.model_revision
    if max_model_len:
        args["max_model_len"] = max_model_len
    if settings.served_model_name:
        args["served_model_name"] = settings.served_model_name
    return args


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """Our sampling options → keyword arguments of vllm.SamplingParams (one sequence, cumulative outputs)."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.stop:
        kwargs["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed
    return kwargs


@dataclass
class CumulativeAssembler:
    """vLLM reports the whole text so far on every step; callers want what is new."""

    sent: int = 0

    def event(self, output: Any) -> TokenEvent:
        completion = output.outputs[0]
        text = completion.text
        delta, self.sent = text[self.sent :], len(text)
        finish = _FINISH.get(completion.finish_reason or "", "stop") if output.finished else None
        return TokenEvent(delta, len(completion.token_ids), finish)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class VllmEngine(Engine):
    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        engine: Any = None,
        tokenizer: Any = None,
        sampling_factory: Callable[..., Any] | None = None,
    ) -> None:
        # engine / tokenizer / sampling_factory are injected by unit tests; load() builds the real ones.
        self.settings = settings
        self._engine = engine
        self._tokenizer = tokenizer
        self._sampling_factory = sampling_factory
        self.aborted: list[str] = []

    async def load(self) -> EngineInfo:
        start = time.perf_counter()
        if self._engine is None:
            try:
                from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
            except ImportError as exc:
                raise RuntimeError(
                    "GENERATOR_ENGINE=vllm needs the vllm extra (pip install 'ragline-generator[vllm]') "
                    f"on a CUDA node: {exc}"
                ) from None
            self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args(self.settings)))
            self._sampling_factory = SamplingParams
        if self._tokenizer is None:
            self._tokenizer = await _maybe_await(self._engine.get_tokenizer())
        context = self.settings.vllm_max_model_len or self.settings.context_window
        get_config = getattr(self._engine, "get_model_config", None)
        if get_config is not None:
            context = int((await _maybe_await(get_config())).max_model_len)
        log.info("vLLM engine ready with %s in %.1fs", self.settings.model, time.perf_counter() - start)
        return EngineInfo(
            "vllm",
            self.settings.served_model_name or self.settings.model,
            self.settings.model_revision or "main",
            context,
            max_parallel=self.settings.vllm_max_num_seqs,
        )

    def render_chat(self, messages: Sequence[Message]) -> Prompt:
        try:
            text = self._tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # no template, or a role the template refuses
            raise InvalidInput(f"messages do not fit the model's chat template: {exc}") from None
        # The template already wrote BOS and friends; do not add them twice.
        return Prompt(text, list(self._tokenizer.encode(text, add_special_tokens=False)))

    def render_completion(self, prompt: str) -> Prompt:
        return Prompt(prompt, list(self._tokenizer.encode(prompt)))

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def stream(self, prompt: Prompt, sampling: Sampling, request_id: str) -> AsyncIterator[TokenEvent]:
        assert self._sampling_factory is not None, "load() first"
        params = self._sampling_factory(**sampling_kwargs(sampling))
        outputs = self._engine.generate({"prompt_token_ids": prompt.token_ids}, params, request_id)
        assembler = CumulativeAssembler()
        finished = False
        try:
            async for output in outputs:
                event = assembler.event(output)
                finished = event.finish_reason is not None
                yield event
                if finished:
                    return
        finally:
            if not finished:
                # Client gone or deadline passed: free the sequence's KV cache slot in the engine now.
                self.aborted.append(request_id)
                await self._engine.abort(request_id)
            await outputs.aclose()

    async def close(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if shutdown is not None:
            await _maybe_await(shutdown())
