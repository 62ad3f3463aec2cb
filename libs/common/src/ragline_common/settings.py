"""Settings base: environment only, one prefix per service, validated at startup."""

from __future__ import annotations

import os
import sys
from typing import TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def host_port(value: str, name: str) -> str:
    """Check a peer address of the form host:port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{name} must be host:port, got {value!r}")
    return value


class ServiceSettings(BaseSettings):
    """Fields every service has; each service subclasses with its own env prefix."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address both servers bind; 0.0.0.0 in containers.")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port (REST, /healthz, /readyz, /metrics).")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (service API and grpc.health.v1).")
    log_level: str = Field("info", description="debug, info, warning or error.")
    shutdown_grace_seconds: float = Field(
        20.0, gt=0, description="On SIGTERM: how long in-flight requests get to finish before the process exits."
    )
    drain_seconds: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM: keep serving this long while reporting not-ready, so load balancers "
        "and endpoints stop sending new work before the listeners close (0 when a preStop hook waits instead).",
    )
    threads: int = Field(
        0,
        ge=0,
        description="Compute threads for the model / BLAS; 0 = the CPU limit (cgroup) or core count. "
        "On small nodes pools that each take every core fight; set it deliberately.",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError(f"log level must be debug, info, warning or error, got {value!r}")
        return value.lower()


class ReleaseSettings(BaseSettings):
    """The release unit every service reports: pinned together per overlay (RAGLINE_* variables)."""

    model_config = SettingsConfigDict(env_prefix="RAGLINE_", extra="ignore", frozen=True)

    release: str = Field("dev", description="Release name of this deployment, e.g. 2026.11.1.")
    log_payloads: bool = Field(False, description="Log question text and document content (off: privacy).")
    log_requests: bool = Field(True, description="One access log line per HTTP request and gRPC call.")


T = TypeVar("T", bound=BaseSettings)


def load_settings(cls: type[T]) -> T:
    """Build settings or stop the process with one line per bad variable naming the expected form."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            if not field:  # a check across several variables (model validator): no single variable to name
                print(f"configuration error: {prefix}*: {err['msg']}", file=sys.stderr)  # noqa: T201
                continue
            var = (prefix + field).upper()
            got = os.environ.get(var)
            shown = "missing" if got is None else f"got {got!r}"
            print(f"configuration error: {var}: {err['msg']} ({shown})", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None


def effective_threads(configured: int) -> int:
    """Threads to use: the setting, else the cgroup CPU limit, else the cores we may run on."""
    if configured > 0:
        return configured
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            return max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, len(os.sched_getaffinity(0)))
