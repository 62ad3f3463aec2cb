"""The whole pipeline in ONE process: the four services' own cores composed in-process behind the api's routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline_api import __version__
from ragline_api.core import Prepared, QueryPipeline, SearchResult, StageTimes
from ragline_api.edge import EdgeMiddleware
from ragline_api.limits import RateLimiter, build_admission
from ragline_api.metrics import ApiMetrics
from ragline_api.routes import router
from ragline_api.settings import ApiSettings
from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.logs import configure_logging
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import Service
from ragline_common.serve import main as serve_main
from ragline_common.settings import ReleaseSettings, effective_threads, load_settings
from ragline_embedder.core import Embedder
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.servicer import info_message
from ragline_embedder.settings import EmbedderSettings
from ragline_generator.__main__ import build_engine
from ragline_generator.core import GenerateInput, Generator
from ragline_generator.engines.base import Message
from ragline_generator.metrics import GeneratorMetrics
from ragline_generator.prompt import Chunk, RagTemplate
from ragline_generator.settings import GeneratorSettings
from ragline_retriever.chunking import Chunker
from ragline_retriever.core import COLLECTION, DocIn, Retriever
from ragline_retriever.filters import parse_conditions
from ragline_retriever.metrics import RetrieverMetrics
from ragline_retriever.settings import RetrieverSettings
from ragline_retriever.store import open_store

log = logging.getLogger("e2e_inprocess")

FINISH = {"stop": "stop", "length": "length", "aborted": "abort"}
UPSERT_STATUS = {"created": "created", "updated": "updated", "unchanged": "unchanged", "failed": "error"}


class InProcessEmbedder:
    """The retriever's EmbedderClient, answered by the Embedder core in this process instead of over gRPC."""

    def __init__(self, core: Embedder) -> None:
        self.core = core

    async def info(self) -> epb.InfoResponse:
        return info_message(self.core)

    async def embed(self, texts: list[str], *, bulk: bool = False) -> np.ndarray:
        result = await self.core.embed(texts, bulk=bulk)
        return np.stack([v.vector for v in result.vectors]).astype(np.float32, copy=False)

    async def close(self) -> None:
        return None


class InProcessPipeline(QueryPipeline):
    """The api's QueryPipeline with its three gRPC downstreams replaced by direct calls into the cores."""

    def __init__(
        self, settings: ApiSettings, release: ReleaseSettings, retriever: Retriever, generator: Generator
    ) -> None:
        super().__init__(settings, None, release)  # type: ignore[arg-type]  # no downstream channels at all
        self.retriever = retriever
        self.generator = generator

    async def search(self, query: str, k: int, filters: dict[str, Any] | None, mode: str | None = None) -> SearchResult:
        conditions = parse_conditions(filters["must"]) if filters and filters.get("must") else []
        start = time.perf_counter()
        r = await self.retriever.search(query, k, conditions, mode)
        times = StageTimes({"embed": r.embed_seconds, "search": r.search_seconds})
        times.values["retriever"] = time.perf_counter() - start
        hits = [
            {
                "doc_id": h.doc_id,
                "chunk_id": h.chunk_id,
                "text": h.text,
                "score": h.score,
                "metadata": h.metadata,
                "start": h.start,
                "end": h.end,
            }
            for h in r.hits
        ]
        return SearchResult(hits, times)

    def generate_request(  # type: ignore[override]  # the generator core's input, not its proto
        self, messages: list[tuple[str, str]], hits: list[dict[str, Any]], params: dict[str, Any]
    ) -> GenerateInput:
        return GenerateInput(
            messages=[Message(r, c) for r, c in messages],
            context=[Chunk(h["doc_id"], h["text"]) for h in hits],
            max_tokens=params.get("max_tokens"),
            temperature=params.get("temperature"),
            top_p=params.get("top_p"),
            stop=params.get("stop") or [],
            seed=params.get("seed"),
        )

    async def generate(self, prepared: Prepared) -> dict[str, Any]:
        start = time.perf_counter()
        r = await self.generator.generate(prepared.request)  # type: ignore[arg-type]
        f = r.final
        prepared.times.values.update(
            {"queue": f.queue_seconds, "ttft": f.time_to_first_token_seconds, "generate": time.perf_counter() - start}
        )
        return {
            "answer": r.text,
            "finish_reason": FINISH.get(f.finish_reason, "stop"),
            "usage": {
                "prompt_tokens": f.prompt_tokens,
                "completion_tokens": f.completion_tokens,
                "total_tokens": f.prompt_tokens + f.completion_tokens,
            },
            "model": r.model,
            "prompt_version": r.prompt_version,
            "context_used": [i + 1 for i in r.context_used],
        }

    async def upsert(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        docs = [DocIn(d["id"], d["text"], d.get("metadata") or {}) for d in documents]
        return [
            {
                "id": o.id,
                "status": UPSERT_STATUS[o.status],
                "chunks": o.chunks,
                "content_hash": o.content_hash,
                "error": o.error or None,
            }
            for o in await self.retriever.upsert(docs)
        ]


def build(api: ApiSettings, release: ReleaseSettings) -> Service:
    """Every setting comes from the same env vars the four services read, so both cases run alike."""
    emb_settings = load_settings(EmbedderSettings)
    ret_settings = load_settings(RetrieverSettings)
    gen_settings = load_settings(GeneratorSettings)
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "api")  # the same RED histogram name and labels the api exports
    api_metrics = ApiMetrics(registry)
    readiness = Readiness([])
    readiness.require("embedder", "loading")
    readiness.require("generator", "loading")
    readiness.require(COLLECTION, "waiting for the embedder's model info")

    embedder = Embedder(emb_settings, EmbedderMetrics(registry), effective_threads(emb_settings.threads))
    store = open_store(
        qdrant_url=ret_settings.qdrant_url,
        api_key=None,
        timeout=ret_settings.qdrant_timeout_seconds,
        data_dir=ret_settings.data_dir,
        engine=ret_settings.embedded_engine,
        collection=ret_settings.collection,
        threads=effective_threads(ret_settings.threads),
    )
    chunker = Chunker(ret_settings.chunk_tokens, ret_settings.chunk_overlap_tokens)
    retriever = Retriever(
        ret_settings, store, InProcessEmbedder(embedder), chunker, RetrieverMetrics(registry), readiness
    )  # type: ignore[arg-type]
    gen_metrics = GeneratorMetrics(registry)
    generator = Generator(gen_settings, build_engine(gen_settings, gen_metrics), gen_metrics, RagTemplate.load())
    core = InProcessPipeline(api, release, retriever, generator)

    app = create_app(service="api", version=__version__, readiness=readiness, metrics=metrics)
    app.state.core = core
    app.include_router(router)
    # The api's own edge middleware, so that the only difference between the two cases is the hops.
    app.user_middleware.append(
        Middleware(
            EdgeMiddleware,
            keys=None,
            rate=RateLimiter(api.effective_rate_limit(), api.rate_limit_burst),
            slots=build_admission(api),
            max_body_bytes=api.max_body_bytes,
            metrics=api_metrics,
        )
    )
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        await asyncio.to_thread(embedder.load)
        await embedder.start()
        await readiness.set("embedder", True)
        await generator.load()
        await readiness.set("generator", True)
        tasks.append(asyncio.create_task(retriever.connect(), name="connect-collection"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await retriever.close()
        await generator.close()
        await embedder.close()

    return Service(
        name="inprocess",
        settings=api,
        env_prefix="API_",
        app=app,
        readiness=readiness,
        register_grpc=lambda server: None,
        startup=startup,
        shutdown=shutdown,
    )


def main() -> None:
    api = load_settings(ApiSettings)
    release = load_settings(ReleaseSettings)
    configure_logging("inprocess", api.log_level, release.release)
    serve_main(lambda: build(api, release))


if __name__ == "__main__":
    main()
