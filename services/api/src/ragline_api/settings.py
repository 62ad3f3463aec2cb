"""API gateway settings (API_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from ragline_common.limits import MAX_K
from ragline_common.settings import ServiceSettings, host_port

# Values people paste from examples; a gateway that accepts them is open to anyone who read the same example.
_PLACEHOLDER_KEYS = {
    "changeme", "change-me", "change_me", "secret", "password", "apikey", "api-key", "api_key", "test",
    "example", "your-api-key", "your_api_key", "replace-me", "replaceme", "xxx", "todo", "dev", "default",
}  # fmt: skip
MIN_KEY_LENGTH = 16
DEFAULT_RATE_LIMIT = 50.0


class ApiSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="API_", extra="ignore", frozen=True)

    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port: the public REST + SSE API, probes, /metrics.")
    grpc_port: int = Field(50050, ge=0, le=65535, description="gRPC port: grpc.health.v1 only (for native probes).")
    retriever_addr: str = Field(description="Retriever gRPC address, host:port (or a gRPC target such as dns:///…).")
    generator_addr: str = Field(description="Generator gRPC address, host:port.")
    embedder_addr: str = Field(description="Embedder gRPC address, host:port (for /v1/embeddings).")

    enable_auth: bool = Field(True, description="Require `Authorization: Bearer <key>` on /v1/*. Off only explicitly.")
    keys: SecretStr = Field(SecretStr(""), description="API keys, comma separated (prefer API_KEYS_FILE in clusters).")
    keys_file: str = Field("", description="File with one API key per line (a mounted Secret); '#' lines ignored.")
    cors_origins: str = Field("", description="Comma separated origins allowed by CORS; empty = CORS off.")

    request_timeout_seconds: float = Field(30.0, gt=0, le=600, description="Deadline of a non-streaming request.")
    stream_timeout_seconds: float = Field(120.0, gt=0, le=3600, description="Deadline of a whole streamed answer.")
    ingest_timeout_seconds: float = Field(
        300.0, gt=0, le=3600, description="Deadline of a POST /v1/documents call (chunking and embedding every chunk)."
    )
    retriever_timeout_seconds: float = Field(10.0, gt=0, description="Cap on one retriever call.")
    generator_timeout_seconds: float = Field(120.0, gt=0, description="Cap on one generator call.")
    embedder_timeout_seconds: float = Field(10.0, gt=0, description="Cap on one embedder call.")
    info_cache_seconds: float = Field(
        30.0, ge=0, description="How long downstream Info answers are cached for /v1/info."
    )

    retry_max_attempts: int = Field(
        3, ge=1, le=5, description="Attempts per idempotent call (Search, Get, Info, Embed)."
    )
    # 0.15, not 0.1: 10 % transient failures need about 0.11 retries per request (0.1 + 0.1² + …), so 0.1 ran
    # dry and refused ~1 % of requests (tests/reliability/test_retries.py); 0.15 still keeps attempts ≤ 1.2x.
    retry_budget_ratio: float = Field(
        0.15, ge=0, le=1, description="Retries allowed per request made (token bucket): caps the load retries add."
    )
    retry_budget_burst: float = Field(3.0, ge=0, description="Retry tokens held at most (and at start).")
    breaker_failure_threshold: int = Field(
        5, ge=1, description="Consecutive downstream failures (unavailable / deadline) that open its circuit."
    )
    breaker_open_seconds: float = Field(5.0, gt=0, description="How long an open circuit refuses calls before a probe.")

    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body (413 above).")
    rate_limit_per_second: float | None = Field(
        None,
        ge=0,
        description="Requests per second per API key; 0 = no limit. Unset: 50 with auth on; none with auth off, "
        "where there is no key to count by and every local caller shares one address.",
    )
    rate_limit_burst: float = Field(100.0, ge=1, description="Requests a key may make at once before the rate applies.")
    max_concurrency: int = Field(
        64, ge=1, description="Ceiling of the adaptive limit on requests handled at once (it follows latency below)."
    )
    min_concurrency: int = Field(
        16,
        ge=1,
        description="Floor of the adaptive limit: this many run at once whatever latency says. "
        "Equal to API_MAX_CONCURRENCY: a fixed limit.",
    )
    admission_tolerance: float = Field(
        2.0,
        ge=1.0,
        description="The limit shrinks when the median request takes longer than this many times the lowest "
        "median of the last 30 s; lower = shorter latency under overload, more refusals.",
    )
    max_queue: int = Field(
        128, ge=0, description="Ceiling of the wait line (as long as the current limit, at most this); beyond, 429."
    )
    queue_timeout_seconds: float = Field(1.0, ge=0, description="Longest wait for a slot before a 503.")

    default_k: int = Field(5, ge=1, le=100, description="Passages retrieved when a request gives no k.")
    max_k: int = Field(MAX_K, ge=1, le=MAX_K, description="Largest k a request may ask for (at most the retriever's).")
    max_question_chars: int = Field(4000, ge=1, description="Longest question / query / chat message, in characters.")

    @field_validator("retriever_addr", "generator_addr", "embedder_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return value if "///" in value else host_port(value, "address")

    @model_validator(mode="after")
    def _auth_has_keys(self) -> ApiSettings:
        if self.enable_auth:
            keys = self.api_keys()
            if not keys:
                raise ValueError("API_ENABLE_AUTH is on but no key is set: give API_KEYS or API_KEYS_FILE")
            for key in keys:
                if key.lower() in _PLACEHOLDER_KEYS or len(key) < MIN_KEY_LENGTH:
                    raise ValueError(
                        f"an API key is a placeholder or shorter than {MIN_KEY_LENGTH} characters; "
                        "generate one, e.g. `openssl rand -hex 24`"
                    )
        return self

    def effective_rate_limit(self) -> float:
        """Requests per second per caller: the setting, else 50 per API key with auth and no limit without."""
        if self.rate_limit_per_second is not None:
            return self.rate_limit_per_second
        return DEFAULT_RATE_LIMIT if self.enable_auth else 0.0

    def api_keys(self) -> list[str]:
        keys = [k.strip() for k in self.keys.get_secret_value().split(",") if k.strip()]
        if self.keys_file:
            try:
                lines = Path(self.keys_file).read_text().splitlines()
            except OSError as exc:
                raise ValueError(f"API_KEYS_FILE {self.keys_file!r} cannot be read: {exc.strerror}") from None
            keys += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        return keys

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
