"""Chunking: exact offsets, bounded size, overlap, deterministic ids and hashes."""

from __future__ import annotations

import pytest

from ragline_retriever.chunking import Chunker, chunk_id, content_hash

pytestmark = pytest.mark.unit

TEXT = (
    "Qdrant stores vectors. Ünïcödé words, punctuation!!! and   odd   spacing\n\nsurvive chunking; "
    "each chunk keeps offsets into the source so that citations point at the right characters. " * 6
)


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(size=24, overlap=6)


def test_chunks_are_exact_slices_within_the_token_budget(chunker: Chunker) -> None:
    chunks = chunker.split(TEXT)
    assert len(chunks) > 3
    for c in chunks:
        assert TEXT[c.start : c.end] == c.text
        assert c.tokens <= 24
        assert chunker.count_tokens(c.text) <= 24
    assert chunks[0].start == 0
    assert chunks[-1].end == len(TEXT.rstrip())
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_consecutive_chunks_overlap_and_cover_the_text(chunker: Chunker) -> None:
    chunks = chunker.split(TEXT)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start < a.end  # overlap
        assert b.start > a.start


def test_short_and_empty_texts(chunker: Chunker) -> None:
    assert chunker.split("") == []
    assert chunker.split("   \n\t ") == []
    (only,) = chunker.split("  hello world  ")
    assert (only.start, only.end, only.text) == (2, 13, "hello world")


def test_no_overlap_steps_by_full_windows() -> None:
    c = Chunker(size=4, overlap=0)
    chunks = c.split("one two three four five six seven eight nine")
    assert [x.text for x in chunks] == ["one two three four", "five six seven eight", "nine"]


def test_bad_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        Chunker(size=8, overlap=8)


def test_ids_and_hashes_are_deterministic() -> None:
    assert chunk_id("doc", 0) == chunk_id("doc", 0)
    assert chunk_id("doc", 0) != chunk_id("doc", 1) != chunk_id("doc2", 1)
    h = content_hash("text", {"a": 1, "b": 2}, "wordpiece:200:40")
    assert h == content_hash("text", {"b": 2, "a": 1}, "wordpiece:200:40")  # key order does not matter
    assert h != content_hash("text!", {"a": 1, "b": 2}, "wordpiece:200:40")
    assert h != content_hash("text", {"a": 2, "b": 2}, "wordpiece:200:40")
    assert h != content_hash("text", {"a": 1, "b": 2}, "wordpiece:100:10")


def test_chunks_cut_between_words(chunker: Chunker) -> None:
    for c in chunker.split(TEXT):
        before = TEXT[c.start - 1] if c.start > 0 else " "
        after = TEXT[c.end] if c.end < len(TEXT) else " "
        assert not (before.isalnum() and TEXT[c.start].isalnum()), c
        assert not (after.isalnum() and TEXT[c.end - 1].isalnum()), c


def test_a_word_longer_than_a_chunk_is_still_cut() -> None:
    c = Chunker(size=4, overlap=1)
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    chunks = c.split(word)
    assert len(chunks) > 1 and chunks[0].start == 0 and chunks[-1].end == len(word)
