"""The vLLM adapter's pure parts against a small fake engine: args, sampling, stream assembly, abort on cancel."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ragline_common.errors import InvalidInput
from ragline_generator.engines.base import Message, Prompt, Sampling, TokenEvent
from ragline_generator.engines.vllm import CumulativeAssembler, VllmEngine, engine_args, sampling_kwargs
from ragline_generator.settings import GeneratorSettings

pytestmark = pytest.mark.unit


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


class FakeTokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        if any(m["role"] == "tool" for m in messages):
            raise ValueError("tool role not supported")
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([0] if add_special_tokens else []) + [ord(c) for c in text]


@dataclass
class FakeEngine:
    """Mimics AsyncLLMEngine: cumulative outputs per step, abort(request_id)."""

    words: list[str]
    delay: float = 0.0
    aborted: list[str] = field(default_factory=list)
    calls: list[tuple[Any, Any, str]] = field(default_factory=list)

    async def generate(self, prompt: Any, params: Any, request_id: str) -> AsyncIterator[FakeOutput]:
        self.calls.append((prompt, params, request_id))
        text = ""
        for i, w in enumerate(self.words):
            await asyncio.sleep(self.delay)
            text += w
            last = i == len(self.words) - 1
            yield FakeOutput([FakeCompletion(text, list(range(i + 1)), "length" if last else None)], last)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    async def get_model_config(self) -> FakeModelConfig:
        return FakeModelConfig()


def settings(**kw: Any) -> GeneratorSettings:
    return GeneratorSettings(engine="vllm", model="HuggingFaceTB/SmolLM2-135M-Instruct", **kw)


async def loaded(fake: FakeEngine) -> VllmEngine:
    engine = VllmEngine(settings(), engine=fake, sampling_factory=dict)
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


def test_sampling_kwargs() -> None:
    assert sampling_kwargs(Sampling(64, 0.2, 0.9, ("\n\n",), 7)) == {
        "n": 1,
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
    }
    assert "seed" not in sampling_kwargs(Sampling(8, 0.0)) and "stop" not in sampling_kwargs(Sampling(8, 0.0))


def test_assembler_turns_cumulative_text_into_deltas() -> None:
    a = CumulativeAssembler()
    assert a.event(FakeOutput([FakeCompletion("Hel", [1])])) == TokenEvent("Hel", 1)
    assert a.event(FakeOutput([FakeCompletion("Hello", [1, 2])])) == TokenEvent("lo", 2)
    done = a.event(FakeOutput([FakeCompletion("Hello!", [1, 2, 3], "stop")], finished=True))
    assert done == TokenEvent("!", 3, "stop")
    aborted = CumulativeAssembler().event(FakeOutput([FakeCompletion("x", [1], "abort")], finished=True))
    assert aborted.finish_reason == "aborted"


async def test_full_stream_is_assembled_and_not_aborted() -> None:
    fake = FakeEngine(["a", "b", "c"])
    engine = await loaded(fake)
    prompt = Prompt("p", [1, 2, 3])
    events = [e async for e in engine.stream(prompt, Sampling(3, 0.0), "req-1")]
    assert "".join(e.text for e in events) == "abc"
    assert events[-1] == TokenEvent("c", 3, "length")
    assert fake.aborted == []
    sent_prompt, params, request_id = fake.calls[0]
    assert sent_prompt == {"prompt_token_ids": [1, 2, 3]}
    assert params["max_tokens"] == 3 and request_id == "req-1"


async def test_closing_the_stream_aborts_the_request_in_the_engine() -> None:
    fake = FakeEngine(["a"] * 100, delay=0.001)
    engine = await loaded(fake)
    stream = engine.stream(Prompt("p", [1]), Sampling(100, 0.0), "req-2")
    got = [await anext(stream), await anext(stream)]
    assert len(got) == 2
    await stream.aclose()  # type: ignore[attr-defined]
    assert fake.aborted == ["req-2"]


async def test_task_cancellation_aborts_the_request() -> None:
    fake = FakeEngine(["a"] * 1000, delay=0.01)
    engine = await loaded(fake)

    async def consume() -> None:
        async for _ in engine.stream(Prompt("p", [1]), Sampling(1000, 0.0), "req-3"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.aborted == ["req-3"]


async def test_chat_uses_the_tokenizer_template_and_info() -> None:
    engine = VllmEngine(settings(), engine=FakeEngine([]), sampling_factory=dict)
    info = await engine.load()
    assert (info.engine, info.context_window, info.max_parallel) == ("vllm", 2048, 64)
    p = engine.render_chat([Message("user", "hi")])
    assert p.text == "<user>hi<assistant>"
    assert p.token_ids == [ord(c) for c in p.text]  # no second BOS on top of the template's
    with pytest.raises(InvalidInput, match="chat template"):
        engine.render_chat([Message("tool", "x")])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
async def test_missing_vllm_extra_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="vllm extra"):
        await VllmEngine(settings()).load()
