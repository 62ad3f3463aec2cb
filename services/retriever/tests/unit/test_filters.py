"""Filter parsing: the accepted shapes and a clear InvalidInput for everything else."""

from __future__ import annotations

from typing import Any

import pytest

from ragline_common.errors import InvalidInput
from ragline_retriever.filters import normalize_number, parse_conditions
from ragline_retriever.store import CollectionMeta, Condition
from ragline_retriever.store_client import to_filter as client_filter
from ragline_retriever.store_edge import to_filter as edge_filter

pytestmark = pytest.mark.unit


def test_accepted_shapes() -> None:
    got = parse_conditions(
        [
            {"key": "topic", "equals": "code"},
            {"key": "year", "equals": 2021.0},
            {"key": "tags", "any_of": ["a", "b"]},
            {"key": "score", "range": {"gte": 0.5, "lt": 2}},
            {"key": "when", "date_range": {"gt": "2024-01-01T00:00:00Z"}},
            {"key": "a.b", "equals": True},
        ]
    )
    assert got == [
        Condition("metadata.topic", "equals", "code"),
        Condition("metadata.year", "equals", 2021),
        Condition("metadata.tags", "any_of", ["a", "b"]),
        Condition("metadata.score", "range", {"gte": 0.5, "lt": 2}),
        Condition("metadata.when", "date_range", {"gt": "2024-01-01T00:00:00Z"}),
        Condition("metadata.a.b", "equals", True),
    ]
    # Both stores translate every shape.
    assert edge_filter(got) is not None
    flt = client_filter(got, doc_id="d", from_index=2)
    assert flt is not None and len(flt.must or []) == len(got) + 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"key": "topic"}, "unknown filter shape"),
        ({"key": "topic", "equals": "a", "any_of": ["a"]}, "unknown filter shape"),
        ({"key": "topic", "near": [1, 2]}, "unknown filter shape"),
        ({"key": "bad key", "equals": "a"}, "key"),
        ({"key": "", "equals": "a"}, "key"),
        ({"key": "x", "equals": 1.5}, "fractional"),
        ({"key": "x", "equals": {"a": 1}}, "expected a string"),
        ({"key": "x", "any_of": []}, "list of 1"),
        ({"key": "x", "any_of": ["a", 1]}, "all strings or all integers"),
        ({"key": "x", "range": {}}, "at least one"),
        ({"key": "x", "range": {"gte": "soon"}}, "expected a number"),
        ({"key": "x", "range": {"above": 1}}, "unknown bound"),
        ({"key": "x", "date_range": {"gt": "yesterday"}}, "RFC 3339"),
        ({"key": "x", "date_range": {"gt": "2024-01-01T00:00:00"}}, "time zone"),
        ({"key": "x", "date_range": {"gt": 5}}, "RFC 3339"),
    ],
)
def test_rejected_shapes(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_conditions([spec])


def test_too_many_conditions() -> None:
    with pytest.raises(InvalidInput, match="at most"):
        parse_conditions([{"key": "a", "equals": 1}] * 33)


def test_normalize_number() -> None:
    assert normalize_number({"a": 2.0, "b": [1.0, 1.5], "c": "x"}) == {"a": 2, "b": [1, 1.5], "c": "x"}


def test_collection_meta_mismatch_names_the_field() -> None:
    meta = CollectionMeta(384, "m", "r1")
    assert meta.mismatch(CollectionMeta(384, "m", "r1")) is None
    reason = meta.mismatch(CollectionMeta(768, "m", "r1"))
    assert reason is not None and "dimension" in reason and "768" in reason
    reason = meta.mismatch(CollectionMeta(384, "m", "r2"))
    assert reason is not None and "revision" in reason
