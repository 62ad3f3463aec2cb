"""Schemathesis against the gateway's own OpenAPI document: no 5xx, no response outside the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.unit

KEY = "test-key-0123456789abcdef"
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
# Schemathesis' own pytest plugin does not run under pytest 9 (it reads a removed `_nodeid`), so each operation's
# strategy is driven by Hypothesis here directly; the checks are schemathesis' own.
MAX_EXAMPLES = 25


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_responses_match_the_schema(threaded_stack, mode) -> None:
    schema = schemathesis.openapi.from_url(f"{threaded_stack.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # every /v1 route
    headers = {"Authorization": f"Bearer {KEY}"}
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=threaded_stack.base_url, headers=headers, checks=CHECKS, timeout=10)

        run()
