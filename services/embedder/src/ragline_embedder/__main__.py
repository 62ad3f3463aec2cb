"""Start the embedder: settings → logging → core → serve()."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from ragline.embedder.v1 import embedder_pb2
from ragline_common.grpc_server import add_servicer
from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import Service, run_service
from ragline_common.settings import effective_threads
from ragline_embedder import __version__
from ragline_embedder.core import Embedder
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.routes import router
from ragline_embedder.servicer import EmbedderServicer
from ragline_embedder.settings import EmbedderSettings

SERVICE = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"]


def build(settings: EmbedderSettings) -> Service:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "embedder")
    core = Embedder(settings, EmbedderMetrics(registry), effective_threads(settings.threads))
    readiness = Readiness([SERVICE.full_name])
    readiness.require("model", "loading")
    app = create_app(service="embedder", version=__version__, readiness=readiness, metrics=metrics)
    app.state.core = core
    app.include_router(router)

    async def startup() -> None:
        # A model that cannot load raises here: serve() logs why and exits non-zero, so it is seen and restarted.
        await asyncio.to_thread(core.load)
        await core.start()
        await readiness.set("model", True)

    return Service(
        name="embedder",
        settings=settings,
        env_prefix="EMBEDDER_",
        app=app,
        readiness=readiness,
        register_grpc=lambda server: add_servicer(server, EmbedderServicer(core), SERVICE, metrics),
        startup=startup,
        shutdown=core.close,
    )


def main() -> None:
    run_service("embedder", EmbedderSettings, lambda s, _: build(s))


if __name__ == "__main__":
    main()
