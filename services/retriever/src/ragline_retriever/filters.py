"""Metadata filters: the proto Filter checked once here, translated to Qdrant filters by each store."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline_common.errors import InvalidInput
from ragline_common.limits import FILTER_KEY_PATTERN, MAX_ANY_OF, MAX_FILTER_CONDITIONS
from ragline_retriever.store import METADATA, FieldMatch

KINDS = ("equals", "any_of", "range", "date_range")
BOUNDS = ("gt", "gte", "lt", "lte")
_KEY = re.compile(FILTER_KEY_PATTERN)
MAX_CONDITIONS = MAX_FILTER_CONDITIONS
# Struct and JSON numbers are doubles: integers beyond this cannot be told apart from their neighbours.
EXACT_INT = 2**53


def normalize_number(value: Any) -> Any:
    """JSON/Struct numbers arrive as floats; whole ones become ints so that equality on ints matches."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: normalize_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_number(v) for v in value]
    return value


def _scalar(value: struct_pb2.Value, where: str) -> str | int | bool:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidInput(f"{where}: {number} is not a finite number")
        if not number.is_integer():
            raise InvalidInput(f"{where}: equality on a fractional number ({number}) is not supported; use a range")
        if abs(number) > EXACT_INT:
            raise InvalidInput(f"{where}: integer {number:.0f} is outside ±2^53, the range compared exactly")
        return int(number)
    got = {"struct_value": "object", "list_value": "list", "null_value": "null", None: "nothing"}[kind]
    raise InvalidInput(f"{where}: expected a string, integer or boolean, got {got}")


def _bounds(msg: pb.Range | pb.DateRange, where: str, *, dates: bool) -> dict[str, Any]:
    out = {name: getattr(msg, name) for name in BOUNDS if msg.HasField(name)}
    if not out:
        raise InvalidInput(f"{where}: give at least one of gt, gte, lt, lte")
    for name, value in out.items():
        if dates:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidInput(f"{where}.{name}: {value!r} is not an RFC 3339 timestamp") from None
            if parsed.tzinfo is None:
                raise InvalidInput(f"{where}.{name}: {value!r} has no time zone; add Z or an offset")
        elif not math.isfinite(value):
            raise InvalidInput(f"{where}.{name}: expected a finite number, got {value}")
        else:
            out[name] = normalize_number(value)
    return out


def conditions_from_pb(flt: pb.Filter) -> list[FieldMatch]:
    """The one parser of filters: gRPC requests and the debug routes' JSON (via json_format) both end here."""
    if len(flt.must) > MAX_CONDITIONS:
        raise InvalidInput(f"filter has {len(flt.must)} conditions; at most {MAX_CONDITIONS} are allowed")
    out: list[FieldMatch] = []
    for i, fc in enumerate(flt.must):
        where = f"filter.must[{i}]"
        if not _KEY.match(fc.key):
            raise InvalidInput(f"{where}.key: expected a metadata field name like 'source' or 'a.b', got {fc.key!r}")
        kind = fc.WhichOneof("condition")
        value: Any
        if kind is None:
            raise InvalidInput(f"{where}: unknown filter shape; give the key and exactly one of {', '.join(KINDS)}")
        if kind == "equals":
            value = _scalar(fc.equals, f"{where}.equals")
        elif kind == "any_of":
            values = fc.any_of.values
            if not values or len(values) > MAX_ANY_OF:
                raise InvalidInput(f"{where}.any_of: expected a list of 1 to {MAX_ANY_OF} values")
            value = [_scalar(v, f"{where}.any_of[{j}]") for j, v in enumerate(values)]
            if not (all(isinstance(v, str) for v in value) or all(type(v) is int for v in value)):
                raise InvalidInput(f"{where}.any_of: values must be all strings or all integers")
        else:
            value = _bounds(getattr(fc, kind), f"{where}.{kind}", dates=kind == "date_range")
        out.append(FieldMatch(f"{METADATA}.{fc.key}", kind, value))
    return out


def check_exact_ints(data: Any, where: str) -> None:
    """JSON integers beyond ±2^53 become a different double in a proto Value: refuse them before they do."""
    if isinstance(data, int) and not isinstance(data, bool) and abs(data) > EXACT_INT:
        raise InvalidInput(f"{where}: integer {data} is outside ±2^53, the range compared exactly")
    if isinstance(data, dict):
        for k, v in data.items():
            check_exact_ints(v, f"{where}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            check_exact_ints(v, f"{where}[{i}]")


def _drop_nulls(flt: Any) -> Any:
    """A condition's null kinds mean "not given" (as pydantic dumps them); json_format would read a null Value."""
    if isinstance(flt, dict) and isinstance(flt.get("must"), list):
        must = [{k: v for k, v in c.items() if v is not None} if isinstance(c, dict) else c for c in flt["must"]]
        return {**flt, "must": must}
    return flt


def parse_json(data: Any, message: Any, where: str) -> Any:
    """JSON into a proto message with json_format; a wrong shape is the caller's error and names the field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}: expected a JSON object, got {type(data).__name__}")
    check_exact_ints(data, where)
    if where == "filter":
        data = _drop_nulls(data)
    elif isinstance(data.get("filter"), dict):
        data = {**data, "filter": _drop_nulls(data["filter"])}
    try:
        return json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def parse_conditions(specs: list[dict[str, Any]]) -> list[FieldMatch]:
    """JSON conditions ({"key": ..., and one of equals, any_of, range, date_range}) through the same parser."""
    return conditions_from_pb(parse_json({"must": specs}, pb.Filter(), "filter"))
