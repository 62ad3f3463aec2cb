"""Embedder metrics (ragline_embedder_*)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ragline_common.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ragline_embedder.core import EmbedResult


class EmbedderMetrics:
    """Stage metrics beside the shared RED histogram: batches, queue, inference, texts and tokens."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "ragline_embedder_batch_size",
            "Texts per model call.",
            buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256),
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "ragline_embedder_inference_seconds",
            "Model time per batch (tokenize + forward).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "ragline_embedder_queue_seconds",
            "Time a request waited before its first text entered a batch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge("ragline_embedder_queue_depth", "Texts waiting for the model.", registry=registry)
        self.texts = Counter("ragline_embedder_texts_total", "Texts embedded.", registry=registry)
        self.tokens = Counter("ragline_embedder_tokens_total", "Tokens embedded (after truncation).", registry=registry)
        self.truncated = Counter(
            "ragline_embedder_truncated_texts_total", "Texts cut at the model's max sequence length.", registry=registry
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def observe_request(self, result: EmbedResult) -> None:
        self.queue_seconds.observe(result.stats.queue_seconds)
        self.texts.inc(len(result.vectors))
        self.tokens.inc(result.tokens)
        if result.truncated:
            self.truncated.inc(result.truncated)
