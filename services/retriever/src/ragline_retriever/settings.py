"""Retriever settings (RETRIEVER_*)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from ragline_common.limits import MAX_K
from ragline_common.settings import ServiceSettings, host_port


class RetrieverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_", extra="ignore", frozen=True)

    http_port: int = Field(8082, ge=0, le=65535, description="HTTP port: /v1/search, /v1/documents, probes, /metrics.")
    grpc_port: int = Field(50052, ge=0, le=65535, description="gRPC port: ragline.retriever.v1 and grpc.health.v1.")
    embedder_addr: str = Field(description="Embedder gRPC address, host:port (required).")
    embedder_timeout_seconds: float = Field(
        30.0, gt=0, description="Deadline of one Embed call (capped by the caller's remaining deadline)."
    )
    qdrant_url: str = Field(
        "", description="Qdrant server URL (e.g. http://qdrant:6333; gRPC on 6334 is used). Empty = embedded store."
    )
    qdrant_api_key: SecretStr | None = Field(None, description="API key for the Qdrant server, if it needs one.")
    qdrant_timeout_seconds: int = Field(10, ge=1, description="Timeout of one call to the Qdrant server.")
    data_dir: str = Field("./var/retriever", description="Directory of the embedded store (when QDRANT_URL is empty).")
    embedded_engine: Literal["edge", "local"] = Field(
        "edge",
        description="Embedded engine: edge = qdrant-edge-py (WAL, HNSW; the measured choice), "
        "local = qdrant-client's local mode (brute force, for comparison).",
    )
    collection: str = Field("ragline", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Collection name.")
    chunk_tokens: int = Field(
        200, ge=16, le=510, description="Chunk size in WordPiece tokens; keep it under the embedder's max_seq_length."
    )
    chunk_overlap_tokens: int = Field(40, ge=0, description="Tokens shared by consecutive chunks (context at edges).")
    max_k: int = Field(MAX_K, ge=1, le=MAX_K, description="Largest k a search may ask for (400 above).")
    max_query_bytes: int = Field(8192, ge=1, description="Largest query in UTF-8 bytes (413 above).")
    max_document_bytes: int = Field(1_048_576, ge=1, description="Largest document text in UTF-8 bytes (413 above).")
    max_documents_per_upsert: int = Field(256, ge=1, description="Documents one Upsert may carry (400 above).")
    search_mode: Literal["dense", "hybrid"] = Field(
        "hybrid",
        description="Default search mode when a request leaves it unspecified. hybrid = dense + BM25 fused by RRF; "
        "it raised recall@5 from 0.850 to 0.881 on bench/eval_retrieval.py (see README).",
    )
    hybrid_candidates: int = Field(
        100, ge=1, le=10_000, description="Candidates each arm (dense, BM25) hands to reciprocal rank fusion."
    )
    rrf_k: int = Field(60, ge=1, description="RRF constant k: score = sum 1 / (k + rank).")
    optimize_on_start: bool = Field(
        False,
        description="Embedded edge store: build HNSW / merge segments at startup, before reporting ready. "
        "It blocks the process while it runs (minutes at 100k chunks on 2 cores); without it search is exact "
        "brute force over the segments (see README for both figures).",
    )
    embed_batch_size: int = Field(
        32,
        ge=1,
        description="Chunks per Embed call when ingesting (capped by the embedder's max_texts_per_request); "
        "32 = the embedder's default model batch.",
    )
    embed_concurrency: int = Field(2, ge=1, le=32, description="Embed calls in flight per Upsert.")
    max_concurrent_searches: int = Field(64, ge=1, description="Searches in flight; beyond it 429 at once.")
    max_concurrent_upserts: int = Field(4, ge=1, description="Upserts in flight; beyond it 429 at once.")

    @field_validator("embedder_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return host_port(value, "RETRIEVER_EMBEDDER_ADDR")

    @model_validator(mode="after")
    def _overlap(self) -> RetrieverSettings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"chunk_overlap_tokens ({self.chunk_overlap_tokens}) must be smaller than "
                f"chunk_tokens ({self.chunk_tokens})"
            )
        return self
