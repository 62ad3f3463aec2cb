"""Start the retriever: settings → logging → store, embedder client, core → serve()."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry

from ragline.retriever.v1 import retriever_pb2
from ragline_common.grpc_server import add_servicer
from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import Service, run_service
from ragline_common.settings import effective_threads
from ragline_retriever import __version__
from ragline_retriever.chunking import Chunker
from ragline_retriever.clients import EmbedderClient
from ragline_retriever.core import COLLECTION, Retriever
from ragline_retriever.metrics import RetrieverMetrics
from ragline_retriever.routes import router
from ragline_retriever.servicer import RetrieverServicer
from ragline_retriever.settings import RetrieverSettings
from ragline_retriever.store import open_sparse_encoder, open_store

SERVICE = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"]


def build(settings: RetrieverSettings) -> Service:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "retriever")
    readiness = Readiness([SERVICE.full_name])
    readiness.require(COLLECTION, "waiting for the embedder's model info")
    store = open_store(
        qdrant_url=settings.qdrant_url,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        timeout=settings.qdrant_timeout_seconds,
        data_dir=settings.data_dir,
        engine=settings.embedded_engine,
        collection=settings.collection,
        threads=effective_threads(settings.threads),
    )
    embedder = EmbedderClient(settings.embedder_addr, settings.embedder_timeout_seconds)
    chunker = Chunker(settings.chunk_tokens, settings.chunk_overlap_tokens)
    core = Retriever(
        settings, store, embedder, chunker, RetrieverMetrics(registry), readiness, sparse=open_sparse_encoder()
    )
    app = create_app(service="retriever", version=__version__, readiness=readiness, metrics=metrics)
    app.state.core = core
    app.include_router(router)
    tasks: list[asyncio.Task[None]] = []

    async def startup() -> None:
        # For the life of the process: not ready until the embedder's model info opens the collection, never a
        # crash; a later embedder outage is answered per call (UNAVAILABLE naming it), not by leaving the Service.
        tasks.append(asyncio.create_task(core.connect(), name="connect-collection"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await core.close()

    return Service(
        name="retriever",
        settings=settings,
        env_prefix="RETRIEVER_",
        app=app,
        readiness=readiness,
        register_grpc=lambda server: add_servicer(server, RetrieverServicer(core), SERVICE, metrics),
        startup=startup,
        shutdown=shutdown,
    )


def main() -> None:
    run_service("retriever", RetrieverSettings, lambda s, _: build(s))


if __name__ == "__main__":
    main()
