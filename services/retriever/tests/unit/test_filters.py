"""Filter parsing: the accepted shapes and a clear InvalidInput for everything else."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import struct_pb2

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline_common.errors import InvalidInput
from ragline_retriever.filters import conditions_from_pb, normalize_number, parse_conditions
from ragline_retriever.store import CollectionMeta, FieldMatch
from ragline_retriever.store_client import to_filter as client_filter
from ragline_retriever.store_qdrant_edge import to_filter as edge_filter

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
        FieldMatch("metadata.topic", "equals", "code"),
        FieldMatch("metadata.year", "equals", 2021),
        FieldMatch("metadata.tags", "any_of", ["a", "b"]),
        FieldMatch("metadata.score", "range", {"gte": 0.5, "lt": 2}),
        FieldMatch("metadata.when", "date_range", {"gt": "2024-01-01T00:00:00Z"}),
        FieldMatch("metadata.a.b", "equals", True),
    ]
    # Both stores translate every shape.
    assert edge_filter(got) is not None
    flt = client_filter(got, doc_id="d", from_index=2)
    assert flt is not None and len(flt.must or []) == len(got) + 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"key": "topic"}, "unknown filter shape"),
        ({"key": "topic", "equals": "a", "any_of": ["a"]}, "multiple"),
        ({"key": "topic", "near": [1, 2]}, 'no field named "near"'),
        ({"key": "bad key", "equals": "a"}, "key"),
        ({"key": "", "equals": "a"}, "key"),
        ({"key": "x", "equals": 1.5}, "fractional"),
        ({"key": "x", "equals": {"a": 1}}, "expected a string"),
        ({"key": "x", "any_of": []}, "list of 1"),
        ({"key": "x", "any_of": ["a", 1]}, "all strings or all integers"),
        ({"key": "x", "range": {}}, "at least one"),
        ({"key": "x", "range": {"gte": "soon"}}, "parse float: soon at Filter.must.0..range.gte"),
        ({"key": "x", "range": {"above": 1}}, 'no field named "above"'),
        ({"key": "x", "date_range": {"gt": "yesterday"}}, "RFC 3339"),
        ({"key": "x", "date_range": {"gt": "2024-01-01T00:00:00"}}, "time zone"),
        ({"key": "x", "date_range": {"gt": 5}}, "parse gt field"),
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


def _pb_filter(**condition: Any) -> pb.Filter:
    return pb.Filter(must=[pb.FieldCondition(key="x", **condition)])


def test_proto_filter_is_parsed_without_a_json_detour() -> None:
    flt = pb.Filter(
        must=[
            pb.FieldCondition(key="year", equals=struct_pb2.Value(number_value=2021.0)),
            pb.FieldCondition(key="tags", any_of=struct_pb2.ListValue(values=[struct_pb2.Value(string_value="a")])),
            pb.FieldCondition(key="score", range=pb.Range(gte=0.5, lt=2.0)),
            pb.FieldCondition(key="when", date_range=pb.DateRange(gt="2024-01-01T00:00:00Z")),
        ]
    )
    assert conditions_from_pb(flt) == [
        FieldMatch("metadata.year", "equals", 2021),
        FieldMatch("metadata.tags", "any_of", ["a"]),
        FieldMatch("metadata.score", "range", {"gte": 0.5, "lt": 2}),
        FieldMatch("metadata.when", "date_range", {"gt": "2024-01-01T00:00:00Z"}),
    ]


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (_pb_filter(equals=struct_pb2.Value(number_value=math.nan)), "not a finite number"),
        (_pb_filter(equals=struct_pb2.Value(number_value=2.0**60)), r"outside ±2\^53"),
        (_pb_filter(equals=struct_pb2.Value(null_value=0)), "got null"),
        (_pb_filter(range=pb.Range(gt=math.inf)), "finite number"),
        (_pb_filter(range=pb.Range()), "at least one"),
        (pb.Filter(must=[pb.FieldCondition(key="x")]), "unknown filter shape"),
        (pb.Filter(must=[pb.FieldCondition(key="a b", equals=struct_pb2.Value(bool_value=True))]), "key"),
    ],
)
def test_proto_filter_rejections(flt: pb.Filter, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        conditions_from_pb(flt)


def test_core_depends_on_the_store_seam_not_an_engine() -> None:
    import ast
    import inspect

    from ragline_retriever import core

    tree = ast.parse(inspect.getsource(core))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.startswith(("qdrant", "ragline_retriever.store_"))}


def test_null_kinds_are_not_given() -> None:
    spec = {"key": "a", "equals": None, "any_of": ["x"], "range": None, "date_range": None}
    assert parse_conditions([spec]) == [FieldMatch("metadata.a", "any_of", ["x"])]
