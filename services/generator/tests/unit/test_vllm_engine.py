"""The vLLM adapter against a fake that behaves as vLLM 0.11's AsyncLLM: args, sampling, streams, abort, death."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from ragline_common.errors import InvalidInput, Unavailable
from ragline_common.health import NOT_SERVING
from ragline_generator.__main__ import build, build_engine
from ragline_generator.engines import vllm as vllm_engine
from ragline_generator.engines.base import EngineDead, Message, Prompt, Sampling, TokenEvent
from ragline_generator.engines.llamacpp import LlamaCppEngine
from ragline_generator.engines.vllm import CumulativeAssembler, VllmEngine, engine_args, sampling_kwargs, use_spawn
from ragline_generator.metrics import GeneratorMetrics
from ragline_generator.settings import GeneratorSettings

pytestmark = pytest.mark.unit

# What follows, up to the tests, stands in for vLLM 0.11's AsyncLLM (vllm/v1/engine/async_llm.py). What it keeps of
# 0.11: generate() is an async generator fed by a per-request collector; cancelling or closing it aborts the request
# (its `except (CancelledError, GeneratorExit)`); abort() finishes a live request with a final output whose
# finish_reason is "abort"; a dead engine raises EngineDeadError from generate() and check_health(), and a killed
# engine core sends nothing more to requests in flight; shutdown() is synchronous.


class EngineDeadError(Exception):
    """Same name and message as vllm.v1.engine.exceptions.EngineDeadError."""

    def __init__(self) -> None:
        super().__init__("EngineCore encountered an issue. See stack trace (above) for the root cause.")


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class FakeOutput:
    outputs: list[FakeCompletion]
    finished: bool = False


@dataclass
class FakeModelConfig:
    max_model_len: int = 2048


@dataclass
class _Request:
    queue: asyncio.Queue[FakeOutput | Exception]
    text: str = ""
    tokens: int = 0
    producer: asyncio.Task[None] | None = None


@dataclass
class FakeAsyncLLM:
    words: list[str]
    delay: float = 0.0
    tokenizer: Any = None
    tasks: tuple[str, ...] = ("generate",)
    aborted: list[str] = field(default_factory=list)
    calls: list[tuple[Any, Any, str]] = field(default_factory=list)
    shutdown_calls: int = 0
    engine_dead: bool = False
    _requests: dict[str, _Request] = field(default_factory=dict)

    @property
    def errored(self) -> bool:
        return self.engine_dead

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[FakeOutput]:
        try:
            if self.errored:
                raise EngineDeadError()
            self.calls.append((prompt, sampling_params, request_id))
            req = _Request(asyncio.Queue())
            self._requests[request_id] = req
            req.producer = asyncio.create_task(self._produce(request_id, req))
            finished = False
            while not finished:
                out = await req.queue.get()
                if isinstance(out, Exception):
                    raise out
                finished = out.finished
                yield out
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)
            raise
        except EngineDeadError:
            raise  # 0.11: "Engine is dead. Do not abort since we shut down."

    async def _produce(self, request_id: str, req: _Request) -> None:
        for i, word in enumerate(self.words):
            await asyncio.sleep(self.delay)
            req.text += word
            req.tokens += 1
            last = i == len(self.words) - 1
            completion = FakeCompletion(req.text, list(range(req.tokens)), "length" if last else None)
            req.queue.put_nowait(FakeOutput([completion], last))
        del self._requests[request_id]  # finished: 0.11 forgets the request's state

    async def abort(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            req = self._requests.pop(rid, None)
            if req is None:
                continue
            self.aborted.append(rid)
            if req.producer is not None:
                req.producer.cancel()
            # 0.11's OutputProcessor.abort_requests: a final output, finish_reason "abort", into the request's queue.
            req.queue.put_nowait(FakeOutput([FakeCompletion(req.text, list(range(req.tokens)), "abort")], True))

    def kill(self, *, core_said_so: bool) -> None:
        """The engine core dies. core_said_so: it sent ENGINE_CORE_DEAD, so every request gets EngineDeadError;
        otherwise (killed, OOM) only the monitor thread's flag is set and in-flight requests hear nothing."""
        self.engine_dead = True
        for req in self._requests.values():
            if req.producer is not None:
                req.producer.cancel()
            if core_said_so:
                req.queue.put_nowait(EngineDeadError())

    async def check_health(self) -> None:
        if self.errored:
            raise EngineDeadError()

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return self.tasks

    async def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def get_model_config(self) -> FakeModelConfig:
        return FakeModelConfig()

    def shutdown(self) -> None:
        self.shutdown_calls += 1
        for req in self._requests.values():
            if req.producer is not None:
                req.producer.cancel()


class FakeTokenizer:
    all_special_tokens = ["<s>"]

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        if any(m["role"] == "tool" for m in messages):
            raise ValueError("tool role not supported")
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False) -> list[int]:
        return ([0] if add_special_tokens else []) + [ord(c) for c in text]


def settings(**kw: Any) -> GeneratorSettings:
    return GeneratorSettings(engine="vllm", model="HuggingFaceTB/SmolLM2-135M-Instruct", **kw)


def metrics() -> GeneratorMetrics:
    return GeneratorMetrics(CollectorRegistry())


async def loaded(fake: FakeAsyncLLM, m: GeneratorMetrics | None = None) -> VllmEngine:
    fake.tokenizer = fake.tokenizer or FakeTokenizer()
    engine = VllmEngine(
        settings(),
        aborts=(m or metrics()).engine_aborts,
        engine=fake,
        sampling_factory=dict,
        dead_errors=(EngineDeadError,),
    )
    await engine.load()
    return engine


def test_engine_args_map_every_setting() -> None:
    s = settings(
        model_revision="abc123",
        vllm_dtype="bfloat16",
        vllm_max_model_len=8192,
        vllm_gpu_memory_utilization=0.8,
        vllm_tensor_parallel_size=2,
        vllm_max_num_seqs=128,
        vllm_enable_prefix_caching=False,
        served_model_name="smol",
    )
    assert engine_args(s) == {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "revision": "abc123",
        "dtype": "bfloat16",
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.8,
        "tensor_parallel_size": 2,
        "max_num_seqs": 128,
        "enable_prefix_caching": False,
        "served_model_name": "smol",
    }


def test_engine_args_default_max_model_len_is_the_context_window() -> None:
    args = engine_args(settings(context_window=4096))
    assert args["max_model_len"] == 4096
    assert "revision" not in args


def test_sampling_kwargs_carry_the_same_defaults_as_llamacpp() -> None:
    s = settings()
    assert sampling_kwargs(Sampling(64, 0.2, 0.9, ("\n\n",), 7), s) == {
        "n": 1,
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.0,
        "stop": ["\n\n"],
        "seed": 7,
    }
    plain = sampling_kwargs(Sampling(8, 0.0), settings(top_k=0, min_p=0.0, repeat_penalty=1.1))
    assert (plain["top_k"], plain["min_p"], plain["repetition_penalty"]) == (0, 0.0, 1.1)
    assert "seed" not in plain and "stop" not in plain


def test_both_engines_get_the_same_sampling_settings() -> None:
    tuned = {"top_k": 7, "min_p": 0.1, "repeat_penalty": 1.2}
    llama = build_engine(GeneratorSettings(**tuned), metrics())  # builds, does not load
    assert isinstance(llama, LlamaCppEngine)
    assert (llama.top_k, llama.min_p, llama.repeat_penalty) == (7, 0.1, 1.2)
    vllm = sampling_kwargs(Sampling(8, 0.5), settings(**tuned))
    assert (vllm["top_k"], vllm["min_p"], vllm["repetition_penalty"]) == (7, 0.1, 1.2)


def test_assembler_turns_cumulative_text_into_deltas() -> None:
    a = CumulativeAssembler()
    assert a.event(FakeOutput([FakeCompletion("Hel", [1])])) == TokenEvent("Hel", 1)
    assert a.event(FakeOutput([FakeCompletion("Hello", [1, 2])])) == TokenEvent("lo", 2)
    done = a.event(FakeOutput([FakeCompletion("Hello!", [1, 2, 3], "stop")], finished=True))
    assert done == TokenEvent("!", 3, "stop")
    aborted = CumulativeAssembler().event(FakeOutput([FakeCompletion("x", [1], "abort")], finished=True))
    assert aborted.finish_reason == "aborted"


async def test_full_stream_is_assembled_and_not_aborted() -> None:
    fake = FakeAsyncLLM(["a", "b", "c"])
    m = metrics()
    engine = await loaded(fake, m)
    events = [e async for e in engine.stream(Prompt("p", [1, 2, 3]), Sampling(3, 0.0), "req-1")]
    assert "".join(e.text for e in events) == "abc"
    assert events[-1] == TokenEvent("c", 3, "length")
    assert fake.aborted == [] and m.engine_aborts._value.get() == 0
    sent_prompt, params, request_id = fake.calls[0]
    assert sent_prompt == {"prompt_token_ids": [1, 2, 3]}
    assert params["max_tokens"] == 3 and params["top_k"] == 40 and request_id == "req-1"
    assert engine._active == set()


async def test_closing_the_stream_aborts_the_request_in_the_engine() -> None:
    fake = FakeAsyncLLM(["a"] * 100, delay=0.001)
    m = metrics()
    engine = await loaded(fake, m)
    stream = engine.stream(Prompt("p", [1]), Sampling(100, 0.0), "req-2")
    got = [await anext(stream), await anext(stream)]
    assert len(got) == 2
    await stream.aclose()  # type: ignore[attr-defined]
    assert fake.aborted == ["req-2"]  # AsyncLLM.generate() aborted itself when closed
    assert m.engine_aborts._value.get() == 1 and engine._active == set()


async def test_task_cancellation_aborts_the_request() -> None:
    fake = FakeAsyncLLM(["a"] * 1000, delay=0.01)
    m = metrics()
    engine = await loaded(fake, m)

    async def consume() -> None:
        async for _ in engine.stream(Prompt("p", [1]), Sampling(1000, 0.0), "req-3"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.aborted == ["req-3"] and m.engine_aborts._value.get() == 1


async def test_an_abort_from_elsewhere_ends_the_stream_as_aborted() -> None:
    fake = FakeAsyncLLM(["a"] * 1000, delay=0.01)
    engine = await loaded(fake)
    stream = engine.stream(Prompt("p", [1]), Sampling(1000, 0.0), "req-4")
    await anext(stream)
    await fake.abort("req-4")
    rest = [e async for e in stream]
    assert rest[-1].finish_reason == "aborted"


async def test_engine_core_death_fails_the_stream_and_every_later_request() -> None:
    fake = FakeAsyncLLM(["a"] * 1000, delay=0.01)
    engine = await loaded(fake)
    stream = engine.stream(Prompt("p", [1]), Sampling(1000, 0.0), "req-5")
    await anext(stream)
    fake.kill(core_said_so=True)
    with pytest.raises(EngineDead) as err:
        await anext(stream)
    assert isinstance(err.value, Unavailable) and err.value.http_status == 503
    assert "EngineDeadError" in err.value.reason
    with pytest.raises(EngineDead):
        await engine.check_health()
    with pytest.raises(EngineDead):
        await anext(engine.stream(Prompt("p", [1]), Sampling(4, 0.0), "req-6"))


async def test_a_silently_killed_engine_ends_open_streams_when_the_check_finds_it_dead() -> None:
    fake = FakeAsyncLLM(["a"] * 1000, delay=0.01)
    engine = await loaded(fake)
    stream = engine.stream(Prompt("p", [1]), Sampling(1000, 0.0), "req-7")
    await anext(stream)
    fake.kill(core_said_so=False)  # SIGKILL / OOM: in-flight requests would wait forever
    with pytest.raises(EngineDead):
        await engine.check_health()
    with pytest.raises(EngineDead):
        await asyncio.wait_for(anext(stream), 1.0)
    assert engine._active == set()


async def test_a_failed_request_is_503_and_the_engine_lives_on() -> None:
    class Failing(FakeAsyncLLM):
        async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> AsyncIterator[FakeOutput]:
            raise RuntimeError("EngineGenerateError")
            yield  # an async generator, as AsyncLLM.generate is

    engine = await loaded(Failing([]))
    with pytest.raises(Unavailable, match="retry") as err:
        await anext(engine.stream(Prompt("p", [1]), Sampling(4, 0.0), "req-8"))
    assert not isinstance(err.value, EngineDead)
    await engine.check_health()


async def test_load_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeAsyncLLM([], tokenizer=FakeTokenizer())

    def slow_build(_: GeneratorSettings) -> tuple[Any, Any, tuple[type[BaseException], ...]]:
        time.sleep(0.3)  # AsyncLLM.from_engine_args blocks for minutes on a real model
        return fake, dict, (EngineDeadError,)

    monkeypatch.setattr(vllm_engine, "_build", slow_build)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    info = await VllmEngine(settings()).load()
    ticker.cancel()
    assert info.context_window == 2048
    assert ticks >= 10, f"the event loop ran only {ticks} times in 0.3 s of loading"


async def test_a_model_that_cannot_generate_is_refused() -> None:
    with pytest.raises(RuntimeError, match="cannot generate"):
        await loaded(FakeAsyncLLM([], tasks=("embed",)))


async def test_close_calls_the_synchronous_shutdown_once() -> None:
    fake = FakeAsyncLLM([])
    engine = await loaded(fake)
    await engine.close()
    assert fake.shutdown_calls == 1


def test_the_engine_core_is_spawned_never_forked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vllm_engine.MULTIPROC_METHOD, raising=False)
    use_spawn()
    import os

    assert os.environ[vllm_engine.MULTIPROC_METHOD] == "spawn"
    monkeypatch.setenv(vllm_engine.MULTIPROC_METHOD, "fork")
    with pytest.raises(RuntimeError, match="gRPC"):
        use_spawn()


async def test_chat_uses_the_tokenizer_template_and_info() -> None:
    engine = await loaded(FakeAsyncLLM([]))
    info = engine.settings
    assert info.vllm_max_num_seqs == 64
    p = engine.render_chat([Message("user", "hi")])
    assert p.text == "<user>hi<assistant>"
    assert p.token_ids == [ord(c) for c in p.text]  # no second BOS on top of the template's
    with pytest.raises(InvalidInput, match="chat template"):
        engine.render_chat([Message("tool", "x")])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
async def test_missing_vllm_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vllm_engine.MULTIPROC_METHOD, "spawn")
    with pytest.raises(RuntimeError, match="vllm extra"):
        await VllmEngine(settings()).load()


async def test_a_dead_engine_makes_the_service_unready_then_not_live_and_requests_503() -> None:
    fake = FakeAsyncLLM(["a"] * 1000, delay=0.01, tokenizer=FakeTokenizer())
    s = settings()
    svc = build(s, engine=VllmEngine(s, engine=fake, sampling_factory=dict, dead_errors=(EngineDeadError,)))
    assert svc.startup is not None and svc.shutdown is not None
    await svc.startup()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url="http://gen") as client:
        assert svc.readiness.ready and (await client.get("/healthz")).status_code == 200
        fake.kill(core_said_so=False)
        for _ in range(300):
            if not svc.readiness.alive:
                break
            await asyncio.sleep(0.01)
        health = await svc.readiness.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        assert health.status == NOT_SERVING
        live = await client.get("/healthz")
        assert live.status_code == 503 and "EngineDeadError" in live.json()["reason"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "fatal" in ready.json()["reasons"]
        chat = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 503
        assert "engine is dead" in chat.json()["error"]["message"]
    await svc.shutdown()
    assert fake.shutdown_calls == 1


async def test_metrics_serve_vllm_families_beside_ragline_without_duplicates() -> None:
    waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", ["model_name"])
    try:
        waiting.labels("m").set(3)  # what vLLM's PrometheusStatLogger keeps in the global registry
        fake = FakeAsyncLLM([], tokenizer=FakeTokenizer())
        s = settings()
        svc = build(s, engine=VllmEngine(s, engine=fake, sampling_factory=dict))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url="http://gen") as client:
            text = (await client.get("/metrics")).text
        assert 'vllm:num_requests_waiting{model_name="m"} 3.0' in text
        assert "ragline_generator_requests_waiting 0.0" in text
        assert text.count("# TYPE process_cpu_seconds_total") == 1
    finally:
        REGISTRY.unregister(waiting)
