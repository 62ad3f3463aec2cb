"""Retriever metrics (ragline_retriever_*)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ragline_common.metrics import LATENCY_BUCKETS


class RetrieverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.search_seconds = Histogram(
            "ragline_retriever_search_seconds",
            "Vector store time per search (after the query is embedded), by mode.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.embed_seconds = Histogram(
            "ragline_retriever_embed_seconds",
            "Time per call to the embedder, by purpose (query, ingest).",
            ["purpose"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.collection_points = Gauge(
            "ragline_retriever_collection_points", "Chunks (points) in the collection.", registry=registry
        )
        self.ingest_chunks = Counter(
            "ragline_retriever_ingest_chunks_total", "Chunks embedded and written.", registry=registry
        )
        self.ingest_documents = Counter(
            "ragline_retriever_ingest_documents_total",
            "Documents handled by Upsert, by outcome (created, updated, unchanged, failed).",
            ["status"],
            registry=registry,
        )
        self.deleted_chunks = Counter(
            "ragline_retriever_deleted_chunks_total", "Chunks removed by Delete.", registry=registry
        )
