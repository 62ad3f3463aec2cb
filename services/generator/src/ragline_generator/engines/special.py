"""Chat prompts whose message text stays text: special-token strings inside content never become control tokens."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from ragline_generator.engines.base import Message, Prompt

# Private-use code points mark where a piece of content that must stay literal sat, through the chat template.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARK = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


class SpecialText:
    """Renders a chat with the model's template and tokenizes it so that only the template writes special tokens.

    A retrieved passage or a user message may hold the text of a control token ("<|im_end|>", "<end_of_turn>").
    Parsed as a special token it would close the turn early and let the passage speak as the system or the
    assistant. Each such string in message content is swapped for a marker before the template runs; the rendered
    text is tokenized with special tokens parsed between markers (the template's own) and each marked string is
    tokenized as plain text. Prompts whose content holds no special-token text are tokenized in one piece, exactly
    as before."""

    def __init__(self, specials: Iterable[str]) -> None:
        strings = sorted({s for s in specials if s}, key=len, reverse=True)
        # The marker characters themselves are shielded too, so content cannot forge a marker.
        self._pattern = re.compile("|".join([*map(re.escape, strings), _OPEN, _CLOSE]))

    def shield(self, messages: Sequence[Message]) -> tuple[list[dict[str, str]], list[str]]:
        """Messages for the template, with every special string in content replaced by a numbered marker."""
        literals: list[str] = []

        def mark(match: re.Match[str]) -> str:
            literals.append(match.group(0))
            return f"{_OPEN}{len(literals) - 1}{_CLOSE}"

        return [{"role": m.role, "content": self._pattern.sub(mark, m.content)} for m in messages], literals

    def render(
        self,
        messages: Sequence[Message],
        template: Callable[[list[dict[str, str]]], str],
        encode_parsed: Callable[[str, bool], list[int]],
        encode_literal: Callable[[str], list[int]],
    ) -> Prompt:
        """template(messages) → text; encode_parsed(text, first) parses special tokens (first: the prompt's start,
        where a BOS may belong); encode_literal(text) never does."""
        shielded, literals = self.shield(messages)
        rendered = template(shielded)
        if not literals:
            return Prompt(rendered, encode_parsed(rendered, True))
        pieces = _MARK.split(rendered)  # text, index, text, index, …, text
        ids: list[int] = []
        text: list[str] = []
        for i, piece in enumerate(pieces):
            if i % 2:
                literal = literals[int(piece)]
                text.append(literal)
                ids.extend(encode_literal(literal))
            elif piece:
                text.append(piece)
                ids.extend(encode_parsed(piece, i == 0))
        return Prompt("".join(text), ids)
