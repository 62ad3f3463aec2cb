"""Per-request context that crosses services: request id and deadline."""

from __future__ import annotations

import contextvars
import re
import time
import uuid

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Absolute monotonic time by which the current request must be answered.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """Keep a caller's id when it is sane, otherwise mint one (ids end up in logs and headers)."""
    if value and _VALID_ID.match(value):
        return value
    return new_request_id()


def set_deadline_in(seconds: float | None) -> None:
    deadline_var.set(None if seconds is None else time.monotonic() + seconds)


def remaining(default: float | None = None) -> float | None:
    """Seconds left before the current request's deadline, or `default` when it has none."""
    deadline = deadline_var.get()
    if deadline is None:
        return default
    return deadline - time.monotonic()
