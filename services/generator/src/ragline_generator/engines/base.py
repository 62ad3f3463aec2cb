"""The engine interface both back ends implement, plus the pieces they share."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ragline_common.errors import Unavailable

FinishReason = Literal["stop", "length", "aborted"]


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class TokenEvent:
    """Text produced since the previous event; the last event of a stream carries finish_reason."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class EngineInfo:
    engine: str
    model: str
    revision: str
    context_window: int
    max_parallel: int


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Prompt:
    """A rendered prompt and its token ids (counted before generation so limits are checked up front)."""

    text: str
    token_ids: list[int] = field(default_factory=list)


class EngineDead(Unavailable):
    """The engine cannot serve again (its process died): 503 / UNAVAILABLE, and the pod should be restarted."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the generation engine is dead ({reason}); this replica is restarting, retry another")
        self.reason = reason


class Engine(abc.ABC):
    """One loaded model. `stream` is cancelled by closing its iterator: the engine must then stop generating."""

    @abc.abstractmethod
    async def load(self) -> EngineInfo: ...

    @abc.abstractmethod
    def render_chat(self, messages: Sequence[Message]) -> Prompt:
        """Apply the model's own chat template (GGUF metadata / tokenizer) and tokenize."""

    @abc.abstractmethod
    def render_completion(self, prompt: str) -> Prompt: ...

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int: ...

    @abc.abstractmethod
    def stream(self, prompt: Prompt, sampling: Sampling, request_id: str) -> AsyncIterator[TokenEvent]: ...

    async def check_health(self) -> None:
        """Raise EngineDead once the engine can no longer serve; in-process engines die with the process."""
        return None

    async def close(self) -> None:
        return None


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back a tail that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text that is safe to emit now, and whether a stop string was hit (generation should end)."""
        if not self.stops:
            return text, False
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.buffer[: min(hits)]
            self.buffer = ""
            return out, True
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = n
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(self.buffer) - hold :]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out
