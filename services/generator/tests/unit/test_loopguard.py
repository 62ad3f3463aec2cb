"""The loop guard alone and inside the core: a repeating answer ends with finish_reason stop and is counted."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from ragline_generator.core import GenerateInput, Generator
from ragline_generator.engines.base import Message
from ragline_generator.loopguard import LoopGuard, has_loop
from ragline_generator.metrics import GeneratorMetrics
from ragline_generator.prompt import RagTemplate
from ragline_generator.settings import GeneratorSettings

from .test_core import FakeEngine

pytestmark = pytest.mark.unit

LOOP = "A dpkg-dev is a package which has not been updated to dpkg-v2. " * 6


def stream(guard: LoopGuard, text: str, piece: int = 3) -> tuple[str, bool]:
    """Feed `text` in pieces of `piece` characters (as tokens arrive); the emitted text and whether it looped."""
    out = []
    for i in range(0, len(text), piece):
        emitted, looped = guard.feed(text[i : i + piece])
        out.append(emitted)
        if looped:
            return "".join(out), True
    out.append(guard.flush())
    return "".join(out), False


def test_plain_answer_passes_through_unchanged() -> None:
    text = "A dpkg trigger records events caused by one package for another package [1]. It is processed later."
    assert stream(LoopGuard(), text) == (text, False)


def test_loop_stops_before_the_third_copy() -> None:
    out, looped = stream(LoopGuard(4, 3), LOOP)
    assert looped
    assert out.count("A dpkg-dev is a package") == 2
    assert not has_loop(out)  # what the reader got holds no n-gram three times
    assert has_loop(LOOP)


def test_punctuation_and_case_do_not_hide_a_loop() -> None:
    out, looped = stream(LoopGuard(4, 3), "The answer is yes. the answer is YES, The answer is yes! The end")
    assert looped and out.rstrip() == "The answer is yes. the answer is YES, The answer is"


def test_a_one_word_loop_is_caught() -> None:
    out, looped = stream(LoopGuard(4, 3), "paying\n" * 40, piece=7)
    assert looped and out.split() == ["paying"] * 5


def test_unfinished_word_is_held_then_flushed() -> None:
    guard = LoopGuard()
    assert guard.feed("dpkg-trig") == ("dpkg-", False)
    assert guard.feed("ger runs") == ("trigger ", False)
    assert guard.feed("/x") == ("runs/", False)
    assert guard.flush() == "x"


def test_long_text_without_spaces_is_not_held_forever() -> None:
    guard = LoopGuard()
    url = "https://example.org/" + "a" * 80
    assert guard.feed(url) == (url, False)


def test_off_passes_everything() -> None:
    assert stream(LoopGuard(0), LOOP) == (LOOP, False)


@pytest.mark.parametrize(("ngram", "repeats"), [(-1, 3), (4, 1)])
def test_bad_settings_are_refused(ngram: int, repeats: int) -> None:
    with pytest.raises(ValueError, match="loop guard needs"):
        LoopGuard(ngram, repeats)


async def test_core_stops_a_looping_engine_with_stop_and_counts_it() -> None:
    engine = FakeEngine(LOOP)
    s = GeneratorSettings(max_tokens_cap=256, default_max_tokens=200)
    core = Generator(s, engine, GeneratorMetrics(CollectorRegistry()), RagTemplate.load())
    await core.load()
    r = await core.generate(GenerateInput(messages=[Message("user", "What is a dpkg trigger?")]))
    assert r.final.finish_reason == "stop"
    assert r.text.count("A dpkg-dev is a package") == 2
    assert r.final.completion_tokens < len(LOOP.split())  # the engine was stopped, not drained
    assert core.metrics.loops_stopped._value.get() == 1
    assert engine.closed  # the engine's stream was closed
    assert core.metrics.running._value.get() == 0


async def test_core_leaves_a_normal_answer_alone() -> None:
    core = Generator(GeneratorSettings(), FakeEngine("one two three"), GeneratorMetrics(CollectorRegistry()),
                     RagTemplate.load())  # fmt: skip
    await core.load()
    r = await core.generate(GenerateInput(messages=[Message("user", "hi")]))
    assert (r.text, r.final.finish_reason) == ("one two three ", "stop")
    assert core.metrics.loops_stopped._value.get() == 0


def test_a_loop_without_spaces_is_caught() -> None:
    out, looped = stream(LoopGuard(4, 3), "The directory is /usr/lib/" + "zlib1g-dev/libminizip/" * 20)
    assert looped and not has_loop(out) and out.count("libminizip") == 3
