"""Start the embedder: settings → logging → core → serve()."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from ragline.embedder.v1 import embedder_pb2
from ragline_common.grpc_server import add_servicer
from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.logs import configure_logging
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import Service
from ragline_common.serve import main as serve_main
from ragline_common.settings import ReleaseSettings, effective_threads, load_settings
from ragline_common.tracing import configure_tracing
from ragline_embedder import __version__
from ragline_embedder.core import Embedder
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.routes import router
from ragline_embedder.servicer import EmbedderServicer
from ragline_embedder.settings import EmbedderSettings

SERVICE = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"]

log = logging.getLogger(__name__)


class EmbedderService(Service):
    """A Service that remembers why it stopped early, so that main() can exit non-zero."""

    failure: BaseException | None = None


def build(settings: EmbedderSettings) -> EmbedderService:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "embedder")
    core = Embedder(settings, EmbedderMetrics(registry), effective_threads(settings.threads))
    readiness = Readiness([SERVICE.full_name])
    readiness.require("model", "loading")
    app = create_app(service="embedder", version=__version__, readiness=readiness, metrics=metrics)
    app.state.core = core
    app.include_router(router)

    async def startup() -> None:
        try:
            await asyncio.to_thread(core.load)
            await core.start()
        except Exception as exc:
            # Serving "not ready" forever would hide the cause; stop so the failure is seen and restarted.
            log.exception("cannot load model %r; stopping", settings.model or "(default all-MiniLM-L6-v2)")
            await readiness.set("model", False, f"load failed: {exc}")
            service.failure = exc
            service.request_stop()
            return
        await readiness.set("model", True)

    service = EmbedderService(
        name="embedder",
        settings=settings,
        env_prefix="EMBEDDER_",
        app=app,
        readiness=readiness,
        register_grpc=lambda server: add_servicer(server, EmbedderServicer(core), SERVICE, metrics),
        startup=startup,
        shutdown=core.close,
    )
    return service


def main() -> None:
    settings = load_settings(EmbedderSettings)
    release = load_settings(ReleaseSettings)
    configure_logging("embedder", settings.log_level, release.release)
    configure_tracing("embedder", release.release)
    built: list[EmbedderService] = []

    def _build() -> Service:
        svc = build(settings)
        built.append(svc)
        return svc

    serve_main(_build)
    if built and built[0].failure is not None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
