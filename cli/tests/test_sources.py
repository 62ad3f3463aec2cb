"""The sources list under `ragline ask`: one line per document, numbers that match the answer's markers."""

from __future__ import annotations

import pytest

from ragline_cli.sources import cited_numbers, format_sources

pytestmark = pytest.mark.unit


def hit(n: int, doc: str, start: int, end: int) -> dict[str, object]:
    return {"index": n, "doc_id": doc, "start": start, "end": end, "score": 0.032, "text": "..."}


def test_markers_in_every_form_are_found() -> None:
    assert cited_numbers("Triggers run later [1]. See [2][4] and [3, 5]; not [x] or [].") == {1, 2, 3, 4, 5}


def test_each_document_once_with_numbers_positions_and_what_was_cited() -> None:
    citations = [
        hit(1, "dpkg/spec/triggers.txt", 0, 1020),
        hit(2, "zstd/TESTING.md", 0, 900),
        hit(3, "dpkg/spec/triggers.txt", 950, 2010),
        hit(4, "dpkg/spec/triggers.txt", 1900, 3000),
    ]
    lines = format_sources(citations, "A trigger is processed later [3].", used=[1, 2, 3])
    assert lines == [
        "  dpkg/spec/triggers.txt  [1] chars 0-1020, [3]* chars 950-2010",
        "  zstd/TESTING.md  [2] chars 0-900",
        "  (* cited in the answer)",
    ]
    assert not any("0.032" in line for line in lines)  # no fusion scores


def test_without_context_used_every_passage_is_listed() -> None:
    lines = format_sources([hit(1, "a.txt", 0, 10), hit(2, "b.txt", 5, 20)], "No markers here.")
    assert lines == ["  a.txt  [1] chars 0-10", "  b.txt  [2] chars 5-20"]
