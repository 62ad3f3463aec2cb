"""The core with a fake engine: limits, admission (overload at once), slot release on cancel, timings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from prometheus_client import CollectorRegistry

from ragline_common.errors import InvalidInput, Overloaded
from ragline_generator.core import GenerateInput, Generator
from ragline_generator.engines.base import Engine, EngineInfo, Message, Prompt, Sampling, TokenEvent
from ragline_generator.metrics import GeneratorMetrics
from ragline_generator.prompt import Chunk, RagTemplate
from ragline_generator.settings import GeneratorSettings

pytestmark = pytest.mark.unit


class FakeEngine(Engine):
    """One token per word of a fixed answer, `delay` seconds apart; tokens = characters of the prompt."""

    def __init__(self, answer: str = "one two three", delay: float = 0.0, window: int = 256) -> None:
        self.answer = answer.split()
        self.delay = delay
        self.window = window
        self.closed: list[str] = []
        self.sampling: Sampling | None = None

    async def load(self) -> EngineInfo:
        return EngineInfo("fake", "fake-model", "r1", self.window, max_parallel=1)

    def render_chat(self, messages: Sequence[Message]) -> Prompt:
        text = "".join(f"{m.role}:{m.content}\n" for m in messages)
        return Prompt(text, list(range(len(text))))

    def render_completion(self, prompt: str) -> Prompt:
        return Prompt(prompt, list(range(len(prompt))))

    def count_tokens(self, text: str) -> int:
        return len(text)

    async def stream(self, prompt: Prompt, sampling: Sampling, request_id: str) -> AsyncIterator[TokenEvent]:
        self.sampling = sampling
        try:
            for i, w in enumerate(self.answer[: sampling.max_tokens]):
                await asyncio.sleep(self.delay)
                last = i == min(len(self.answer), sampling.max_tokens) - 1
                yield TokenEvent(w + " ", i + 1, ("stop" if i == len(self.answer) - 1 else "length") if last else None)
        finally:
            self.closed.append(request_id)


async def make(engine: FakeEngine, **kw: object) -> Generator:
    s = GeneratorSettings(max_tokens_cap=64, default_max_tokens=16, **kw)  # type: ignore[arg-type]
    core = Generator(s, engine, GeneratorMetrics(CollectorRegistry()), RagTemplate.load())
    await core.load()
    return core


def chat(text: str = "hi", **kw: object) -> GenerateInput:
    return GenerateInput(messages=[Message("user", text)], **kw)  # type: ignore[arg-type]


async def test_generate_collects_text_usage_and_timings() -> None:
    core = await make(FakeEngine())
    r = await core.generate(chat(temperature=0.0))
    assert r.text == "one two three "
    assert r.final.finish_reason == "stop"
    assert (r.final.prompt_tokens, r.final.completion_tokens) == (len("user:hi\n"), 3)
    assert 0 <= r.final.queue_seconds <= r.final.time_to_first_token_seconds <= r.final.total_seconds
    assert r.prompt_version == "rag.v2" and r.model == "fake-model"
    assert core.metrics.running._value.get() == 0


async def test_defaults_fill_sampling() -> None:
    engine = FakeEngine()
    core = await make(engine, default_temperature=0.3)
    await core.generate(chat())
    assert engine.sampling == Sampling(16, 0.3, 1.0, (), None)


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (chat(max_tokens=65), "limit of 64"),
        (chat(max_tokens=0), "at least 1"),
        (chat(temperature=3.0), "temperature"),
        (chat(top_p=0.0), "top_p"),
        (chat(stop=[""]), "stop"),
        (chat("x" * 300), "context window of 256"),
        (chat("x" * 230, max_tokens=40), "exceeds the context window of 256"),
        (GenerateInput(), "messages or a prompt"),
        (GenerateInput(prompt="p", context=[Chunk("a", "b")]), "context needs chat messages"),
        (GenerateInput(messages=[Message("robot", "x")]), "role"),
    ],
)
async def test_bad_requests_are_invalid_input_naming_the_limit(req: GenerateInput, match: str) -> None:
    core = await make(FakeEngine())
    with pytest.raises(InvalidInput, match=match):
        await core.generate(req)


async def test_default_max_tokens_shrinks_to_fit_the_window() -> None:
    engine = FakeEngine()
    core = await make(engine)
    await core.generate(chat("x" * 240))
    assert engine.sampling is not None and engine.sampling.max_tokens == 256 - len("user:" + "x" * 240 + "\n")


async def test_full_queue_is_refused_at_once_and_slots_free_on_cancel() -> None:
    engine = FakeEngine(" ".join(f"w{i}" for i in range(50)), delay=0.02)  # distinct words: no loop to stop
    core = await make(engine, max_concurrent_requests=4, max_waiting=1)  # llama-like engine: 1 slot anyway
    first = await core.start(chat())
    it = first.events()
    await anext(it)
    waiter = asyncio.create_task(core.generate(chat()))
    await asyncio.sleep(0.01)
    assert core.metrics.waiting._value.get() == 1
    with pytest.raises(Overloaded) as err:
        await core.start(chat())
    assert err.value.retry_after is not None and err.value.retry_after >= 1
    await it.aclose()  # type: ignore[attr-defined]
    await first.aclose()
    assert len(engine.closed) == 1
    r = await asyncio.wait_for(waiter, 5)
    assert r.final.completion_tokens == 16
    assert core.metrics.running._value.get() == 0 and core.metrics.waiting._value.get() == 0


async def test_rag_context_reports_used_chunks() -> None:
    core = await make(FakeEngine(window=4096))
    chunks = [Chunk("a", "alpha"), Chunk("b", "beta")]
    r = await core.generate(chat("q", context=chunks, max_tokens=8))
    assert r.context_used == [0, 1]


class BrokenEngine(FakeEngine):
    async def stream(self, prompt: Prompt, sampling: Sampling, request_id: str) -> AsyncIterator[TokenEvent]:
        yield TokenEvent("a ", 1)
        raise RuntimeError("decode failed")


async def test_engine_failure_is_counted_as_error_and_frees_the_slot() -> None:
    core = await make(BrokenEngine())
    with pytest.raises(RuntimeError, match="decode failed"):
        await core.generate(chat())
    assert core.metrics.finished.labels("error")._value.get() == 1
    assert core.metrics.running._value.get() == 0
    r = await make(FakeEngine())
    assert (await r.generate(chat())).text


async def test_reader_leaving_is_counted_as_aborted() -> None:
    core = await make(FakeEngine("w " * 50, delay=0.01))
    gen = await core.start(chat())
    it = gen.events()
    await anext(it)
    await it.aclose()  # type: ignore[attr-defined]
    assert core.metrics.finished.labels("aborted")._value.get() == 1
    assert core.metrics.running._value.get() == 0
