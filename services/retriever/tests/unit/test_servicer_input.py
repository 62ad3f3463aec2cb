"""The gRPC edge: numbers JSON cannot hold are the caller's error, not an internal one."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from ragline_common.errors import InvalidInput
from ragline_retriever.servicer import struct_dict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_metadata_is_invalid_input(value: float) -> None:
    meta = struct_pb2.Struct()
    meta.update({"n": value})
    with pytest.raises(InvalidInput, match=r"documents\[0\]\.metadata"):
        struct_dict(meta, "documents[0].metadata")


def test_finite_metadata_passes() -> None:
    meta = struct_pb2.Struct()
    meta.update({"n": 3, "s": "x"})
    assert struct_dict(meta, "m") == {"n": 3.0, "s": "x"}
