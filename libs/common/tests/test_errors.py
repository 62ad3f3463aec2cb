"""The error tree and its two tables."""

from __future__ import annotations

import grpc
import pytest

from ragline_common import errors

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (errors.InvalidInput, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, 404, grpc.StatusCode.NOT_FOUND),
        (errors.TooLarge, 413, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable, 503, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded, 504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_each_error_has_one_http_status_and_one_grpc_code(
    cls: type[errors.RaglineError], status: int, code: object
) -> None:
    assert cls.http_status == status
    assert cls.grpc_code == code


def test_grpc_codes_map_back_to_the_same_errors() -> None:
    assert isinstance(errors.from_grpc(grpc.StatusCode.NOT_FOUND, "x"), errors.NotFound)
    assert isinstance(errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "x"), errors.InvalidInput)
    too_large = errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "big", {errors.ERROR_KIND_KEY: "request_too_large"})
    assert isinstance(too_large, errors.TooLarge)
    busy = errors.from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", {errors.RETRY_AFTER_KEY: "3"})
    assert isinstance(busy, errors.Overloaded) and busy.retry_after == 3.0


def test_downstream_internal_errors_become_unavailable_not_internal() -> None:
    err = errors.from_grpc(grpc.StatusCode.INTERNAL, "boom")
    assert isinstance(err, errors.Unavailable)
    assert err.http_status == 503
