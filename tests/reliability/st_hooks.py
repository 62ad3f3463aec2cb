"""Schemathesis hooks for the bad-input test: a no-stack-trace check, and short generations so the run is bounded."""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_TOKENS_IN_FUZZ = 8
TRACE_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages/")


@schemathesis.check
def no_stack_trace(ctx: Any, response: Any, case: Any) -> bool | None:
    """No answer, whatever its status, may carry a Python stack trace or file paths."""
    text = response.text if isinstance(response.text, str) else ""
    for marker in TRACE_MARKERS:
        if marker in text:
            raise AssertionError(f"the response body leaks a stack trace ({marker!r})")
    return None


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    # A valid max_tokens is capped so each generation takes well under the gateway's deadline: this run tests
    # input handling, not generation speed. Invalid values (negative, strings, too large) are left as drawn.
    if isinstance(body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096:
                body[field] = min(value, MAX_TOKENS_IN_FUZZ)
        if "max_tokens" not in body and ("messages" in body or "question" in body or "prompt" in body):
            body["max_tokens"] = MAX_TOKENS_IN_FUZZ
    return body
