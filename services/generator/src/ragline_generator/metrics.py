"""Generator metrics (ragline_generator_*)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from ragline_common.metrics import LATENCY_BUCKETS

# Inter-token gaps are milliseconds on a GPU and tens of milliseconds on a small CPU.
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class GeneratorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.time_to_first_token = Histogram(
            "ragline_generator_time_to_first_token_seconds",
            "From request arrival (queue time included) to the first generated text.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inter_token = Histogram(
            "ragline_generator_inter_token_seconds",
            "Gap between consecutive streamed text events of one request.",
            buckets=TOKEN_GAP_BUCKETS,
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "ragline_generator_output_tokens_per_second",
            "Completion tokens per second of decode time (first token to last), per request.",
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "ragline_generator_queue_seconds",
            "Time a request waited for a generation slot.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.output_tokens = Counter(
            "ragline_generator_output_tokens_total", "Completion tokens generated.", registry=registry
        )
        self.prompt_tokens = Counter(
            "ragline_generator_prompt_tokens_total", "Prompt tokens processed.", registry=registry
        )
        self.finished = Counter(
            "ragline_generator_requests_finished_total",
            "Generations ended, by finish reason (stop, length, aborted, error).",
            ["finish_reason"],
            registry=registry,
        )
        self.loops_stopped = Counter(
            "ragline_generator_loops_stopped_total",
            "Generations ended early because the text began repeating itself (finish_reason stop).",
            registry=registry,
        )
        self.rejected = Counter(
            "ragline_generator_requests_rejected_total",
            "Requests refused because the wait queue was full (429 / RESOURCE_EXHAUSTED).",
            registry=registry,
        )
        self.engine_aborts = Counter(
            "ragline_generator_engine_aborts_total",
            "Requests the engine stopped before they finished (reader gone, deadline passed, engine died).",
            registry=registry,
        )
        self.running = Gauge("ragline_generator_requests_running", "Requests generating now.", registry=registry)
        self.waiting = Gauge(
            "ragline_generator_requests_waiting",
            "Requests waiting for a generation slot in ragline's admission queue. With vLLM, add "
            "vllm:num_requests_waiting (admitted, not yet scheduled) for the whole queue; the HPA scales on the sum.",
            registry=registry,
        )


class ForeignFamilies:
    """Another registry's metric families whose names start with a prefix, served as they are.

    vLLM registers its vllm: metrics in prometheus_client's global registry; ragline serves its own registry,
    which already carries the process_* / python_* collectors. Serving only the prefixed families adds vLLM's
    series to /metrics without a second copy of those."""

    def __init__(self, prefix: str, source: CollectorRegistry = REGISTRY) -> None:
        self.prefix = prefix
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # names unknown until the engine registers them; nothing here clashes with ragline_ names

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name.startswith(self.prefix):
                yield family
