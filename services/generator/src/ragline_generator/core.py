"""The generator core: checks, prompt building, admission (running + bounded waiting), timings and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ragline_common import context
from ragline_common.errors import DeadlineExceeded, InvalidInput, Overloaded, Unavailable
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
from ragline_generator.loopguard import LoopGuard
from ragline_generator.metrics import GeneratorMetrics
from ragline_generator.prompt import Chunk, RagTemplate
from ragline_generator.settings import GeneratorSettings

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool"}
MAX_STOPS = 8


@dataclass(frozen=True)
class GenerateInput:
    """A transport-free request: chat messages (optionally with context) or a raw prompt."""

    messages: list[Message] = field(default_factory=list)
    prompt: str = ""
    context: list[Chunk] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(frozen=True)
class Final:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queue_seconds: float
    time_to_first_token_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class Delta:
    text: str
    final: Final | None = None


@dataclass(frozen=True)
class Result:
    text: str
    final: Final
    model: str
    prompt_version: str
    context_used: list[int]


@dataclass(frozen=True)
class Info:
    engine: str
    model: str
    revision: str
    context_window: int
    max_tokens_cap: int
    prompt_version: str


class Admission:
    """A fixed number of generation slots and a bounded wait queue; a full queue refuses at once."""

    def __init__(self, slots: int, max_waiting: int, metrics: GeneratorMetrics) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.metrics = metrics
        self._sem = asyncio.Semaphore(slots)
        self.running = 0
        self.waiting = 0
        self._avg_seconds = 1.0  # moving average of a generation's length, for Retry-After

    async def acquire(self, timeout: float | None) -> float:
        """Take a slot; returns the seconds spent waiting."""
        start = time.perf_counter()
        if self._sem.locked():
            if self.waiting >= self.max_waiting:
                self.metrics.rejected.inc()
                retry = max(1.0, self._avg_seconds * (self.waiting + 1) / self.slots)
                raise Overloaded(
                    f"generator busy: {self.running} generating and {self.waiting} waiting "
                    f"(GENERATOR_MAX_WAITING={self.max_waiting}); retry in {retry:.0f}s",
                    retry_after=retry,
                )
            self.waiting += 1
            self.metrics.waiting.inc()
            try:
                await asyncio.wait_for(self._sem.acquire(), timeout)
            except TimeoutError:
                waited = time.perf_counter() - start
                raise DeadlineExceeded(f"deadline passed after {waited:.2f}s in the queue") from None
            finally:
                self.waiting -= 1
                self.metrics.waiting.dec()
        else:
            await self._sem.acquire()
        self.running += 1
        self.metrics.running.inc()
        waited = time.perf_counter() - start
        self.metrics.queue_seconds.observe(waited)
        return waited

    def release(self, seconds: float) -> None:
        self.running -= 1
        self.metrics.running.dec()
        self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * seconds
        self._sem.release()


class Generation:
    """One admitted request. Iterate `events()`; `aclose()` (idempotent) stops the engine and frees the slot."""

    def __init__(
        self,
        core: Generator,
        stream: AsyncIterator[TokenEvent],
        prompt_tokens: int,
        context_used: list[int],
        arrival: float,
        queue_seconds: float,
        deadline: float | None,
    ) -> None:
        self.core = core
        self.model = core.engine_info.model if core.engine_info else ""
        self.prompt_version = core.template.version
        self.context_used = context_used
        self.prompt_tokens = prompt_tokens
        self._stream = stream
        self._arrival = arrival
        self._queue_seconds = queue_seconds
        self._deadline = deadline
        self._finish: str = "aborted"
        self._completion_tokens = 0
        self._first: float | None = None
        self._last: float | None = None
        self._closed = False
        self._guard = LoopGuard(core.settings.loop_guard_ngram, core.settings.loop_guard_repeats)

    async def events(self) -> AsyncIterator[Delta]:
        m = self.core.metrics
        try:
            async for ev in self._stream:
                now = time.perf_counter()
                self._completion_tokens = ev.completion_tokens
                text, looped = self._guard.feed(ev.text)
                if ev.finish_reason is not None and not looped:
                    text += self._guard.flush()
                if text:
                    if self._first is None:
                        self._first = now
                        m.time_to_first_token.observe(now - self._arrival)
                    elif self._last is not None:
                        m.inter_token.observe(now - self._last)
                    self._last = now
                if looped:  # a repetition loop: end the answer here, as the model would with EOS
                    m.loops_stopped.inc()
                    self._finish = "stop"
                    yield Delta(text, self._final(now))
                    return
                if ev.finish_reason is not None:
                    self._finish = ev.finish_reason
                    yield Delta(text, self._final(now))
                    return
                if self._deadline is not None and time.monotonic() > self._deadline:
                    raise DeadlineExceeded(f"deadline passed after {ev.completion_tokens} generated tokens")
                if text:  # empty while the loop guard holds back an unfinished word
                    yield Delta(text)
        except (asyncio.CancelledError, GeneratorExit, DeadlineExceeded):
            raise  # the reader left or ran out of time: counted as aborted
        except BaseException:
            self._finish = "error"
            raise
        finally:
            await self.aclose()

    def _final(self, now: float) -> Final:
        first = self._first if self._first is not None else now
        return Final(
            finish_reason=self._finish,  # type: ignore[arg-type]
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._completion_tokens,
            queue_seconds=self._queue_seconds,
            time_to_first_token_seconds=first - self._arrival,
            total_seconds=now - self._arrival,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        m = self.core.metrics
        try:
            await self._stream.aclose()  # type: ignore[attr-defined]
        except RuntimeError:
            pass  # still being iterated by a cancelled task: its own finally stops the engine
        finally:
            now = time.perf_counter()
            m.output_tokens.inc(self._completion_tokens)
            m.prompt_tokens.inc(self.prompt_tokens)
            m.finished.labels(self._finish).inc()
            if self._first is not None and self._last is not None and self._completion_tokens > 1:
                decode = self._last - self._first
                if decode > 0:
                    m.tokens_per_second.observe((self._completion_tokens - 1) / decode)
            self.core.admission.release(now - self._arrival)


class Generator:
    """Owns the engine and the admission queue; the gRPC servicer and the HTTP routes both call it."""

    def __init__(
        self, settings: GeneratorSettings, engine: Engine, metrics: GeneratorMetrics, template: RagTemplate
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.template = template
        self.engine_info: EngineInfo | None = None
        self.dead_reason: str | None = None
        self.admission = Admission(settings.max_concurrent_requests, settings.max_waiting, metrics)

    async def load(self) -> None:
        self.engine_info = await self.engine.load()
        # llama.cpp has one context: more slots than the engine runs at once would only queue inside it.
        slots = min(self.settings.max_concurrent_requests, self.engine_info.max_parallel)
        self.admission = Admission(slots, self.settings.max_waiting, self.metrics)

    @property
    def info(self) -> Info:
        e = self._ready()
        cap = self.settings.max_tokens_cap
        return Info(e.engine, e.model, e.revision, e.context_window, cap, self.template.version)

    async def supervise(self, interval: float = 1.0) -> str:
        """Return, with the reason, once the engine is dead. Checking is cheap (vLLM: a flag its monitor thread
        sets when the engine core process exits), so a second's delay is all it costs."""
        while True:
            try:
                await self.engine.check_health()
            except EngineDead as exc:
                self.dead_reason = exc.reason
                return exc.reason
            await asyncio.sleep(interval)

    def _ready(self) -> EngineInfo:
        if self.dead_reason is not None:
            raise EngineDead(self.dead_reason)
        if self.engine_info is None:
            raise Unavailable("the model is still loading")
        return self.engine_info

    def _sampling(self, req: GenerateInput, prompt_tokens: int, window: int) -> Sampling:
        s = self.settings
        room = window - prompt_tokens
        if room <= 0:
            raise InvalidInput(f"prompt is {prompt_tokens} tokens, over the context window of {window} tokens")
        if req.max_tokens is None:
            max_tokens = min(s.default_max_tokens, room)
        else:
            max_tokens = req.max_tokens
            if max_tokens < 1:
                raise InvalidInput(f"max_tokens must be at least 1, got {max_tokens}")
            if max_tokens > s.max_tokens_cap:
                raise InvalidInput(f"max_tokens {max_tokens} exceeds the limit of {s.max_tokens_cap} (max_tokens_cap)")
            if max_tokens > room:
                raise InvalidInput(
                    f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the context window "
                    f"of {window} tokens"
                )
        temperature = s.default_temperature if req.temperature is None else req.temperature
        if not 0 <= temperature <= 2:
            raise InvalidInput(f"temperature must be between 0 and 2, got {temperature}")
        top_p = 1.0 if req.top_p is None else req.top_p
        if not 0 < top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {top_p}")
        if len(req.stop) > MAX_STOPS or any(not s for s in req.stop):
            raise InvalidInput(f"stop takes up to {MAX_STOPS} non-empty strings, got {req.stop!r}")
        return Sampling(max_tokens, temperature, top_p, tuple(req.stop), req.seed)

    def _prompt(self, req: GenerateInput, window: int) -> tuple[Prompt, list[int]]:
        for m in req.messages:
            if m.role not in ROLES:
                raise InvalidInput(f"message role must be one of {sorted(ROLES)}, got {m.role!r}")
        if not req.messages:
            if req.context:
                raise InvalidInput("context needs chat messages (a user question), not a raw prompt")
            if not req.prompt:
                raise InvalidInput("give messages or a prompt")
            return self.engine.render_completion(req.prompt), []
        if not req.context:
            return self.engine.render_chat(req.messages), []
        # Room for chunks: the window minus the prompt without them and the completion's reservation.
        bare, _ = self.template.apply(req.messages, [], self.engine.count_tokens, 0)
        reserve = req.max_tokens if req.max_tokens is not None else self.settings.default_max_tokens
        room = window - len(self.engine.render_chat(bare).token_ids) - min(reserve, self.settings.max_tokens_cap)
        messages, used = self.template.apply(req.messages, req.context, self.engine.count_tokens, max(0, room))
        return self.engine.render_chat(messages), used

    async def start(self, req: GenerateInput) -> Generation:
        """Check, build the prompt, wait for a slot; raises InvalidInput / Overloaded / DeadlineExceeded."""
        arrival = time.perf_counter()
        info = self._ready()
        prompt, used = self._prompt(req, info.context_window)
        sampling = self._sampling(req, len(prompt.token_ids), info.context_window)
        remaining = context.remaining(self.settings.request_timeout_seconds)
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline passed before generation started")
        deadline = None if remaining is None else time.monotonic() + remaining
        queue_seconds = await self.admission.acquire(remaining)
        request_id = context.request_id_var.get() or uuid.uuid4().hex
        try:
            stream = self.engine.stream(prompt, sampling, f"{request_id}-{uuid.uuid4().hex[:8]}")
        except BaseException:
            self.admission.release(time.perf_counter() - arrival)
            raise
        return Generation(self, stream, len(prompt.token_ids), used, arrival, queue_seconds, deadline)

    async def generate(self, req: GenerateInput) -> Result:
        gen = await self.start(req)
        parts: list[str] = []
        final: Final | None = None
        try:
            async for delta in gen.events():
                parts.append(delta.text)
                final = delta.final or final
        finally:
            await gen.aclose()
        assert final is not None  # events() ends with a final frame or raises
        return Result("".join(parts), final, gen.model, gen.prompt_version, gen.context_used)

    async def close(self) -> None:
        await self.engine.close()
