"""The versioned RAG template: numbering, the token budget and the drop-lowest-ranked policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragline_common.errors import InvalidInput
from ragline_generator.engines.base import Message
from ragline_generator.prompt import Chunk, RagTemplate

pytestmark = pytest.mark.unit


def words(text: str) -> int:
    return len(text.split())


def test_bundled_template_loads_with_its_version() -> None:
    t = RagTemplate.load()
    assert t.version == "rag.v2"
    assert t.context_token_budget > 0
    assert "[1]" in t.system
    assert RagTemplate.load("rag.v1").version == "rag.v1"  # the previous version stays selectable


def test_v2_numbers_passages_and_asks_the_question_before_and_after_them() -> None:
    t = RagTemplate.load("rag.v2")
    out, used = t.apply([Message("user", "Why?")], [Chunk("a", "Because.")], words, 1000)
    assert used == [0]
    assert out[0] == Message("system", t.system)
    assert out[1].content == "Question: Why?\n\nSources:\n\n[1] Because.\n\nQuestion: Why?"
    assert "source:" not in out[1].content  # small models copied rag.v1's source lines into answers


def test_chunks_are_numbered_in_order_and_wrap_the_last_user_message() -> None:
    t = RagTemplate.load("rag.v1")
    msgs = [Message("user", "first"), Message("assistant", "ok"), Message("user", "What colour is the sky?")]
    out, used = t.apply(msgs, [Chunk("a", "The sky is blue."), Chunk("b", "Grass is green.")], words, 1000)
    assert used == [0, 1]
    assert out[0] == Message("system", t.system)
    assert out[1] == msgs[0] and out[2] == msgs[1]
    last = out[3].content
    assert last.index("[1] (source: a)\nThe sky is blue.") < last.index("[2] (source: b)\nGrass is green.")
    assert last.endswith("Question: What colour is the sky?")


def test_over_budget_drops_lowest_ranked_chunks_first() -> None:
    t = RagTemplate.load("rag.v1")
    chunks = [Chunk(str(i), " ".join(["w"] * 10)) for i in range(5)]
    # Each formatted chunk is 13 "tokens" here ([n], (source:, id), + 10 words); 30 fits two.
    out, used = t.apply([Message("user", "q")], chunks, words, 30)
    assert used == [0, 1]
    assert "[3]" not in out[-1].content


def test_budget_is_capped_by_the_template() -> None:
    t = RagTemplate.load("rag.v1")
    chunks = [Chunk(str(i), " ".join(["w"] * 1000)) for i in range(3)]
    _, used = t.apply([Message("user", "q")], chunks, words, 10**9)
    assert used == [0]  # 1536-token template budget: one 1003-token chunk fits, two do not


def test_nothing_fits_says_so() -> None:
    out, used = RagTemplate.load("rag.v1").apply([Message("user", "q")], [Chunk("a", "x " * 50)], words, 5)
    assert used == []
    assert "(no passages)" in out[-1].content


def test_request_system_message_is_kept_after_the_template_one() -> None:
    t = RagTemplate.load("rag.v1")
    out, _ = t.apply([Message("system", "Answer in French."), Message("user", "q")], [], words, 100)
    assert [m.role for m in out] == ["system", "user"]
    assert out[0].content == t.system + "\n\nAnswer in French."


def test_context_without_a_user_message_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="no user message"):
        RagTemplate.load("rag.v1").apply([Message("system", "s")], [Chunk("a", "b")], words, 100)


def test_custom_template_file(tmp_path: Path) -> None:
    path = tmp_path / "rag.v2.toml"
    path.write_text(
        'version = "rag.v2"\nsystem = "S"\nchunk_format = "<{n}> {text}"\nchunk_separator = "\\n"\n'
        'user_format = "{context} | {question}"\ncontext_token_budget = 100\ndrop_policy = "drop_lowest_ranked"\n'
    )
    t = RagTemplate.load(path)
    out, used = t.apply([Message("user", "q")], [Chunk("a", "x"), Chunk("b", "y")], words, 100)
    assert t.version == "rag.v2" and used == [0, 1]
    assert out[-1].content == "<1> x\n<2> y | q"


def test_bundled_template_by_version_and_unknown_version() -> None:
    assert RagTemplate.load("rag.v2") == RagTemplate.load() == RagTemplate.load("")
    with pytest.raises(ValueError, match="no bundled prompt template 'rag.v9'"):
        RagTemplate.load("rag.v9")


def test_template_missing_fields_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('version = "x"\n')
    with pytest.raises(ValueError, match="lacks"):
        RagTemplate.load(path)
