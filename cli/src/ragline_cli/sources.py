"""The sources under an answer: each document once, with the numbers [n] the answer cites and where they sit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def cited_numbers(answer: str) -> set[int]:
    """The passage numbers an answer cites: [2], [1][3] and [1, 3] forms."""
    return {int(n) for group in _MARKER.findall(answer) for n in group.split(",")}


def format_sources(citations: Sequence[dict[str, Any]], answer: str, used: Sequence[int] | None = None) -> list[str]:
    """Lines listing each document once, in order of its best passage.

    A passage keeps the number the prompt gave it, so the answer's [n] markers match; its position is the
    character range of the chunk in the document. Passages the generator dropped (not in `used`, 1-based) are
    left out; cited passages are marked with *. Retrieval scores are not shown: with hybrid search they are
    reciprocal-rank fusion scores, which say nothing to a reader."""
    cited = cited_numbers(answer)
    keep = set(used) if used else None
    docs: dict[str, list[str]] = {}
    for pos, c in enumerate(citations, 1):
        n = int(c.get("index", pos))
        if keep is not None and n not in keep:
            continue
        where = f"chars {c['start']}-{c['end']}" if c.get("end") else "whole document"
        docs.setdefault(str(c.get("doc_id")), []).append(f"[{n}]{'*' if n in cited else ''} {where}")
    lines = [f"  {doc}  {', '.join(parts)}" for doc, parts in docs.items()]
    if lines and cited:
        lines.append("  (* cited in the answer)")
    return lines
