"""vLLM engine: vLLM 0.11's AsyncLLM in process, for GPU nodes; vllm is imported only when this engine loads."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from ragline_common.errors import InvalidInput, Unavailable
from ragline_generator.engines.base import (
    Engine,
    EngineDead,
    EngineInfo,
    FinishReason,
    Message,
    Prompt,
    Sampling,
    TokenEvent,
)
from ragline_generator.engines.special import SpecialText
from ragline_generator.settings import GeneratorSettings

log = logging.getLogger(__name__)

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "aborted"}
MULTIPROC_METHOD = "VLLM_WORKER_MULTIPROC_METHOD"


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


def sampling_kwargs(sampling: Sampling, settings: GeneratorSettings) -> dict[str, Any]:
    """Our sampling options → keyword arguments of vllm.SamplingParams (one sequence, cumulative outputs).

    top_k, min_p and the repetition penalty come from the same settings the llama.cpp engine uses, so both
    engines sample alike (vLLM's own defaults, top_k 0 and min_p 0, differ from llama.cpp's)."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": settings.top_k,
        "min_p": settings.min_p,
        "repetition_penalty": settings.repeat_penalty,
    }
    if sampling.stop:
        kwargs["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        kwargs["seed"] = sampling.seed
    return kwargs


def use_spawn() -> None:
    """vLLM starts its engine core in a child process after our gRPC server runs; gRPC Python does not survive a
    fork, so the child must be spawned. vllm.envs reads the variable when the process starts, after this."""
    method = os.environ.setdefault(MULTIPROC_METHOD, "spawn")
    if method != "spawn":
        raise RuntimeError(
            f"{MULTIPROC_METHOD}={method!r} is not supported: the generator runs a gRPC server, which does not "
            "survive fork; unset it or set it to 'spawn'"
        )


def _build(settings: GeneratorSettings) -> tuple[Any, Callable[..., Any], tuple[type[BaseException], ...]]:
    """Import vllm and start its engine (minutes: weights, CUDA graphs); runs in a worker thread."""
    use_spawn()
    try:
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError as exc:
        raise RuntimeError(
            f"GENERATOR_ENGINE=vllm needs the vllm extra (pip install 'ragline-generator[vllm]') on a CUDA node: {exc}"
        ) from None
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(settings)))
    return engine, SamplingParams, (EngineDeadError,)


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


class VllmEngine(Engine):
    def __init__(
        self,
        settings: GeneratorSettings,
        *,
        aborts: Counter | None = None,
        engine: Any = None,
        sampling_factory: Callable[..., Any] | None = None,
        dead_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        # engine / sampling_factory / dead_errors are injected by unit tests; load() builds the real ones.
        self.settings = settings
        self._aborts = aborts
        self._engine = engine
        self._sampling_factory = sampling_factory
        self._dead_errors = dead_errors
        self._tokenizer: Any = None
        self._special = SpecialText(())
        # Requests streaming now: at most the admission slots, each removed when its stream ends.
        self._active: set[str] = set()
        self.dead_reason: str | None = None

    async def load(self) -> EngineInfo:
        start = time.perf_counter()
        if self._engine is None:
            # Off the event loop: probes (startup, liveness) keep answering while weights load.
            self._engine, self._sampling_factory, self._dead_errors = await asyncio.to_thread(_build, self.settings)
        # A utility call starts the client's output socket reader on this loop (built in a thread, AsyncLLM
        # starts it lazily), so an engine core that dies before the first request is noticed.
        tasks = await self._engine.get_supported_tasks()
        if "generate" not in tasks:
            raise RuntimeError(f"GENERATOR_MODEL {self.settings.model!r} cannot generate text (tasks: {tasks})")
        self._tokenizer = await self._engine.get_tokenizer()
        self._special = SpecialText(_special_strings(self._tokenizer))
        context = int((await self._engine.get_model_config()).max_model_len)
        log.info("vLLM engine ready with %s in %.1fs", self.settings.model, time.perf_counter() - start)
        return EngineInfo(
            "vllm",
            self.settings.served_model_name or self.settings.model,
            self.settings.model_revision or "main",
            context,
            max_parallel=self.settings.vllm_max_num_seqs,
        )

    def render_chat(self, messages: Sequence[Message]) -> Prompt:
        tok = self._tokenizer

        def template(shielded: list[dict[str, str]]) -> str:
            try:
                return str(tok.apply_chat_template(shielded, tokenize=False, add_generation_prompt=True))
            except Exception as exc:  # no template, or a role the template refuses
                raise InvalidInput(f"messages do not fit the model's chat template: {exc}") from None

        # The template writes BOS and the turn markers itself: add_special_tokens=False adds none twice.
        return self._special.render(
            messages,
            template,
            lambda text, _first: list(tok.encode(text, add_special_tokens=False)),
            lambda text: list(tok.encode(text, add_special_tokens=False, split_special_tokens=True)),
        )

    def render_completion(self, prompt: str) -> Prompt:
        # A raw prompt is text: "<|im_end|>" typed by a user stays literal, as on llama.cpp.
        return Prompt(prompt, list(self._tokenizer.encode(prompt, split_special_tokens=True)))

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    async def check_health(self) -> None:
        if self.dead_reason is None:
            try:
                await self._engine.check_health()
            except Exception as exc:  # vLLM raises EngineDeadError once errored; any failure here is fatal
                await self._died(f"{type(exc).__name__}: {exc}")
        if self.dead_reason is not None:
            raise EngineDead(self.dead_reason)

    async def _died(self, reason: str) -> None:
        if self.dead_reason is not None:
            return
        self.dead_reason = reason
        log.error("vLLM engine died: %s", reason)
        if self._active:
            # A killed engine core sends nothing more: end the open streams now. Once dead, AsyncLLM.abort only
            # finishes each request locally with finish_reason "abort", which stream() turns into EngineDead.
            try:
                await self._engine.abort(list(self._active))
            except Exception:
                log.exception("could not end the streams of a dead vLLM engine")

    def _errored(self, exc: BaseException) -> bool:
        return isinstance(exc, self._dead_errors) or bool(getattr(self._engine, "errored", False))

    async def stream(self, prompt: Prompt, sampling: Sampling, request_id: str) -> AsyncIterator[TokenEvent]:
        if self.dead_reason is not None:
            raise EngineDead(self.dead_reason)
        assert self._sampling_factory is not None, "load() first"
        params = self._sampling_factory(**sampling_kwargs(sampling, self.settings))
        outputs = self._engine.generate({"prompt_token_ids": prompt.token_ids}, params, request_id)
        assembler = CumulativeAssembler()
        finished = False
        self._active.add(request_id)
        try:
            async for output in outputs:
                event = assembler.event(output)
                if event.finish_reason == "aborted" and self.dead_reason is not None:
                    raise EngineDead(self.dead_reason)
                finished = event.finish_reason is not None
                yield event
                if finished:
                    return
        except EngineDead:
            raise
        except ValueError as exc:  # AsyncLLM re-raises request validation errors as they are
            raise InvalidInput(f"vLLM refused the request: {exc}") from None
        except Exception as exc:
            if self._errored(exc):
                await self._died(f"{type(exc).__name__}: {exc}")
                raise EngineDead(self.dead_reason or str(exc)) from None
            # EngineGenerateError: this request failed, the engine lives on.
            log.exception("vLLM failed request %s", request_id)
            raise Unavailable(f"vLLM failed this request ({type(exc).__name__}); retry it") from None
        finally:
            self._active.discard(request_id)
            if not finished and self._aborts is not None:
                self._aborts.inc()
            # Reader gone, deadline passed or engine error: closing AsyncLLM.generate() raises GeneratorExit in
            # it, and 0.11 then aborts the request, freeing its KV cache slot in the engine core.
            await outputs.aclose()

    async def close(self) -> None:
        if self._engine is not None:
            # AsyncLLM.shutdown() is synchronous and joins the engine core process: keep it off the loop.
            await asyncio.to_thread(self._engine.shutdown)


def _special_strings(tokenizer: Any) -> list[str]:
    """The texts a Hugging Face tokenizer turns into special tokens (added tokens marked special, BOS/EOS…)."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            strings.add(str(added.content))
    return sorted(strings)
