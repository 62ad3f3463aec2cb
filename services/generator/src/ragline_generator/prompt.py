"""The versioned RAG prompt template: loads prompts/<version>.toml and fits retrieved chunks into its budget."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ragline_common.errors import InvalidInput
from ragline_generator.engines.base import Message

DEFAULT_TEMPLATE = "rag.v2"  # chosen by bench/answer_quality.py; rag.v1 stays selectable
_FIELDS = ("version", "system", "chunk_format", "chunk_separator", "user_format", "context_token_budget", "drop_policy")


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    text: str


@dataclass(frozen=True)
class RagTemplate:
    version: str
    system: str
    chunk_format: str
    chunk_separator: str
    user_format: str
    context_token_budget: int
    drop_policy: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> RagTemplate:
        """A bundled template by version (`rag.v1`), a TOML file by path, or the default when None / empty."""
        name = str(path or DEFAULT_TEMPLATE)
        if "/" not in name and not name.endswith(".toml"):
            bundled = resources.files("ragline_generator").joinpath(f"prompts/{name}.toml")
            if not bundled.is_file():
                raise ValueError(f"no bundled prompt template {name!r}; give a version such as rag.v1 or a .toml path")
            raw = bundled.read_text("utf-8")
        else:
            raw = Path(name).read_text("utf-8")
        data = tomllib.loads(raw)
        missing = [f for f in _FIELDS if f not in data]
        if missing:
            raise ValueError(f"prompt template {path or DEFAULT_TEMPLATE} lacks {', '.join(missing)}")
        if data["drop_policy"] != "drop_lowest_ranked":
            raise ValueError(f"prompt template drop_policy must be drop_lowest_ranked, got {data['drop_policy']!r}")
        return cls(**{f: data[f] for f in _FIELDS})

    def format_chunk(self, n: int, chunk: Chunk) -> str:
        return self.chunk_format.format(n=n, doc_id=chunk.doc_id, text=chunk.text)

    def apply(
        self,
        messages: Sequence[Message],
        chunks: Sequence[Chunk],
        count_tokens: Callable[[str], int],
        budget: int,
    ) -> tuple[list[Message], list[int]]:
        """Messages with the template's system prompt and numbered chunks; and the indexes of the chunks kept.

        Chunks come best first; those past `budget` tokens are dropped from the end, so the kept ones are
        a prefix and chunk i is cited as [i + 1].
        """
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        if last_user < 0:
            raise InvalidInput("context was given but messages have no user message to answer")
        budget = min(budget, self.context_token_budget)
        parts: list[str] = []
        used = 0
        sep_tokens = count_tokens(self.chunk_separator) if self.chunk_separator else 0
        for i, chunk in enumerate(chunks):
            text = self.format_chunk(i + 1, chunk)
            cost = count_tokens(text) + (sep_tokens if parts else 0)
            if used + cost > budget:
                break  # drop_lowest_ranked: this chunk and every later (lower-ranked) one
            parts.append(text)
            used += cost
        kept = list(range(len(parts)))
        system = self.system
        extra = [m.content for m in messages if m.role == "system"]
        if extra:
            system = "\n\n".join([system, *extra])
        out = [Message("system", system)]
        for i, m in enumerate(messages):
            if m.role == "system":
                continue
            if i == last_user:
                context = self.chunk_separator.join(parts) if parts else "(no passages)"
                m = Message("user", self.user_format.format(context=context, question=m.content))
            out.append(m)
        return out, kept
