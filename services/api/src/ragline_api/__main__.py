"""Start the api gateway: settings → logging → clients → QueryPipeline → serve()."""

from __future__ import annotations

import logging

from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from starlette.middleware import Middleware

from ragline_api import __version__
from ragline_api.auth import KeyChecker
from ragline_api.clients import Downstreams
from ragline_api.core import QueryPipeline
from ragline_api.edge import EdgeMiddleware
from ragline_api.limits import RateLimiter, build_admission
from ragline_api.metrics import ApiMetrics
from ragline_api.openai_routes import router as openai_router
from ragline_api.routes import router
from ragline_api.settings import ApiSettings
from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import Service, run_service
from ragline_common.settings import ReleaseSettings, load_settings

log = logging.getLogger("ragline_api")

DESCRIPTION = (
    "The public ragline API. Authenticate with `Authorization: Bearer <key>`. "
    "Streaming answers are Server-Sent Events (see the service README for event names)."
)


def build(settings: ApiSettings, release: ReleaseSettings | None = None) -> Service:
    release = release or load_settings(ReleaseSettings)
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "api")
    api_metrics = ApiMetrics(registry)
    downstreams = Downstreams(settings, api_metrics)
    core = QueryPipeline(settings, downstreams, release)
    # The gateway's readiness does not follow its downstreams: if it did, a generator outage would take every
    # api pod out of the Service and kill search too. Downstream failures are answered per request (503).
    readiness = Readiness([])
    app = create_app(service="api", version=__version__, readiness=readiness, metrics=metrics, description=DESCRIPTION)
    app.state.core = core
    app.include_router(router)
    app.include_router(openai_router)

    if settings.enable_auth:
        keys: KeyChecker | None = KeyChecker(settings.api_keys())
    else:
        keys = None
        log.warning("authentication is OFF (API_ENABLE_AUTH=false): anyone who reaches this port can use the API")
    slots = build_admission(settings, on_change=api_metrics.admission_limit.set)
    # Innermost of the user middleware: the request-id middleware (outer) still stamps edge refusals.
    app.user_middleware.append(
        Middleware(
            EdgeMiddleware,
            keys=keys,
            rate=RateLimiter(settings.effective_rate_limit(), settings.rate_limit_burst),
            slots=slots,
            max_body_bytes=settings.max_body_bytes,
            metrics=api_metrics,
            release=release.release,
        )
    )
    origins = settings.cors_origin_list()
    if origins:  # outermost, so that preflight requests need no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            expose_headers=["x-request-id", "server-timing", "retry-after"],
        )

    return Service(
        name="api",
        settings=settings,
        env_prefix="API_",
        app=app,
        readiness=readiness,
        register_grpc=lambda server: None,  # gRPC carries grpc.health.v1 only (added by serve.run)
        shutdown=downstreams.close,
    )


def main() -> None:
    run_service("api", ApiSettings, build)


if __name__ == "__main__":
    main()
