"""One error tree for every service, with its HTTP and gRPC tables."""

from __future__ import annotations

import grpc


class RaglineError(Exception):
    """Base of every error a service reports to a caller; its message is safe to show."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    kind = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidInput(RaglineError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_request_error"


class Unauthenticated(RaglineError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    kind = "authentication_error"


class NotFound(RaglineError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    kind = "not_found_error"


class TooLarge(RaglineError):
    http_status = 413
    # gRPC has no "too large" code; INVALID_ARGUMENT tells the caller not to retry it as is.
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "request_too_large"


class Overloaded(RaglineError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class Unavailable(RaglineError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class DeadlineExceeded(RaglineError):
    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    kind = "timeout_error"


class Cancelled(RaglineError):
    # 499 is nginx's "client closed request"; the client is gone, so nobody reads it.
    http_status = 499
    grpc_code = grpc.StatusCode.CANCELLED
    kind = "cancelled"


_BY_GRPC_CODE: dict[grpc.StatusCode, type[RaglineError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidInput,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}

# Trailing metadata keys that carry what a status code alone cannot.
RETRY_AFTER_KEY = "retry-after"
ERROR_KIND_KEY = "ragline-error-kind"


def from_grpc(code: grpc.StatusCode, details: str | None, trailing: dict[str, str] | None = None) -> RaglineError:
    """Turn a downstream's gRPC status back into the error it stood for."""
    trailing = trailing or {}
    message = details or code.name.lower()
    if trailing.get(ERROR_KIND_KEY) == TooLarge.kind:
        return TooLarge(message)
    cls = _BY_GRPC_CODE.get(code)
    if cls is None:
        # UNKNOWN, INTERNAL, DATA_LOSS, UNIMPLEMENTED…: a downstream fault the caller cannot fix.
        return Unavailable(f"downstream failed: {message}")
    retry_after = trailing.get(RETRY_AFTER_KEY)
    err = cls(message)
    if retry_after is not None:
        try:
            err.retry_after = float(retry_after)
        except ValueError:
            pass
    return err
