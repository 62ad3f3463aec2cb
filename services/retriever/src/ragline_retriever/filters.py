"""Metadata filters: one neutral shape checked here, translated to Qdrant filters by each store."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ragline_common.errors import InvalidInput
from ragline_common.limits import FILTER_KEY_PATTERN, MAX_ANY_OF, MAX_FILTER_CONDITIONS
from ragline_retriever.store import METADATA, Condition

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


def _scalar(value: Any, where: str) -> str | int | bool:
    value = normalize_number(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > EXACT_INT:
        raise InvalidInput(f"{where}: integer {value} is outside ±2^53, the range compared exactly")
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, float) and value.is_integer():
        raise InvalidInput(f"{where}: integer {value:.0f} is outside ±2^53, the range compared exactly")
    if isinstance(value, float):
        raise InvalidInput(f"{where}: equality on a fractional number ({value}) is not supported; use a range")
    raise InvalidInput(f"{where}: expected a string, integer or boolean, got {type(value).__name__}")


def _bounds(raw: Any, where: str, *, dates: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: expected an object with gt, gte, lt or lte")
    unknown = set(raw) - set(BOUNDS)
    if unknown:
        raise InvalidInput(f"{where}: unknown bound(s) {sorted(unknown)}; use gt, gte, lt, lte")
    out = {k: v for k, v in raw.items() if v is not None}
    if not out:
        raise InvalidInput(f"{where}: give at least one of gt, gte, lt, lte")
    for name, value in out.items():
        if dates:
            if not isinstance(value, str):
                raise InvalidInput(f"{where}.{name}: expected an RFC 3339 timestamp string, got {value!r}")
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidInput(f"{where}.{name}: {value!r} is not an RFC 3339 timestamp") from None
            if parsed.tzinfo is None:
                raise InvalidInput(f"{where}.{name}: {value!r} has no time zone; add Z or an offset")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where}.{name}: expected a number, got {value!r}")
    return out


def parse_conditions(specs: list[dict[str, Any]]) -> list[Condition]:
    """Each spec: {"key": ..., and exactly one of equals, any_of, range, date_range}."""
    if len(specs) > MAX_CONDITIONS:
        raise InvalidInput(f"filter has {len(specs)} conditions; at most {MAX_CONDITIONS} are allowed")
    out: list[Condition] = []
    for i, spec in enumerate(specs):
        where = f"filter.must[{i}]"
        key = spec.get("key")
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidInput(f"{where}.key: expected a metadata field name like 'source' or 'a.b', got {key!r}")
        given = [k for k in KINDS if spec.get(k) is not None]
        extra = set(spec) - {"key", *KINDS}
        if len(given) != 1 or extra:
            raise InvalidInput(
                f"{where}: unknown filter shape; give the key and exactly one of {', '.join(KINDS)}"
                + (f" (unexpected: {sorted(extra)})" if extra else "")
            )
        kind = given[0]
        raw = spec[kind]
        value: Any
        if kind == "equals":
            value = _scalar(raw, f"{where}.equals")
        elif kind == "any_of":
            if not isinstance(raw, list) or not raw or len(raw) > MAX_ANY_OF:
                raise InvalidInput(f"{where}.any_of: expected a list of 1 to {MAX_ANY_OF} values")
            value = [_scalar(v, f"{where}.any_of") for v in raw]
            if not (all(isinstance(v, str) for v in value) or all(type(v) is int for v in value)):
                raise InvalidInput(f"{where}.any_of: values must be all strings or all integers")
        else:
            value = _bounds(raw, f"{where}.{kind}", dates=kind == "date_range")
        out.append(Condition(f"{METADATA}.{key}", kind, value))  # type: ignore[arg-type]
    return out
