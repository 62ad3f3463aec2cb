"""Start the generator: settings → logging → engine + core → serve()."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from ragline.generator.v1 import generator_pb2
from ragline_common.grpc_server import add_servicer
from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import Service, run_service
from ragline_common.settings import effective_threads
from ragline_generator import __version__
from ragline_generator.core import Generator
from ragline_generator.engines.base import Engine
from ragline_generator.metrics import ForeignFamilies, GeneratorMetrics
from ragline_generator.prompt import RagTemplate
from ragline_generator.routes import router
from ragline_generator.servicer import GeneratorServicer
from ragline_generator.settings import GeneratorSettings

SERVICE = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"]


def build_engine(settings: GeneratorSettings, metrics: GeneratorMetrics) -> Engine:
    if settings.engine == "vllm":
        from ragline_generator.engines.vllm import VllmEngine

        return VllmEngine(settings, aborts=metrics.engine_aborts)
    from ragline_generator.engines.llamacpp import LlamaCppEngine, default_model_path

    return LlamaCppEngine(
        settings.model or default_model_path(),
        context_window=settings.context_window,
        threads=effective_threads(settings.threads),
        revision=settings.model_revision,
        served_model_name=settings.served_model_name,
        buffer_tokens=settings.stream_buffer_tokens,
        top_k=settings.top_k,
        min_p=settings.min_p,
        repeat_penalty=settings.repeat_penalty,
    )


def build(settings: GeneratorSettings, engine: Engine | None = None) -> Service:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, "generator")
    generator_metrics = GeneratorMetrics(registry)
    if settings.engine == "vllm":
        # vllm:num_requests_waiting and friends live in prometheus_client's global registry.
        registry.register(ForeignFamilies("vllm:"))
    template = RagTemplate.load(settings.prompt_template or None)
    core = Generator(settings, engine or build_engine(settings, generator_metrics), generator_metrics, template)
    readiness = Readiness([SERVICE.full_name])
    readiness.require("model", "loading")
    app = create_app(service="generator", version=__version__, readiness=readiness, metrics=metrics)
    app.state.core = core
    app.include_router(router)
    tasks: set[asyncio.Task[None]] = set()

    async def watch_engine() -> None:
        # An engine that died does not come back: not ready, then not live, so the pod is replaced.
        await readiness.fail(f"engine dead: {await core.supervise()}")

    async def startup() -> None:
        # A model that cannot load raises here: serve() logs why and exits non-zero (it will not load later).
        await core.load()
        tasks.add(asyncio.create_task(watch_engine()))
        await readiness.set("model", True)

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        await core.close()

    return Service(
        name="generator",
        settings=settings,
        env_prefix="GENERATOR_",
        app=app,
        readiness=readiness,
        register_grpc=lambda server: add_servicer(server, GeneratorServicer(core), SERVICE, metrics),
        startup=startup,
        shutdown=shutdown,
    )


def main() -> None:
    run_service("generator", GeneratorSettings, lambda s, _: build(s))


if __name__ == "__main__":
    main()
