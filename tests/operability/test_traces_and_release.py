"""Operability across real services in one process: one trace spans every hop of a query, and a release
change made in an overlay shows up in the rendered manifests and at /v1/info of a stack started from it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ragline_api.__main__ import build as build_api
from ragline_api.settings import ApiSettings
from ragline_common import tracing
from ragline_common.settings import ReleaseSettings
from ragline_common.testing import running
from ragline_embedder.__main__ import build as build_embedder
from ragline_embedder.settings import EmbedderSettings
from ragline_generator.__main__ import build as build_generator
from ragline_generator.settings import GeneratorSettings
from ragline_retriever.__main__ import build as build_retriever
from ragline_retriever.settings import RetrieverSettings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[2]
COMMON: dict[str, Any] = {"http_port": 0, "grpc_port": 0, "threads": 1, "shutdown_grace_seconds": 2}
TEMPLATE_V1 = ROOT / "services/generator/src/ragline_generator/prompts/rag.v1.toml"


def render_release(tmp: Path, prompt_version: str) -> dict[str, str]:
    """Copy k8s/, point the dev overlay's release file at a new prompt template, render, return the release data."""
    k8s = tmp / "k8s"
    shutil.copytree(ROOT / "k8s", k8s)
    template = tmp / f"{prompt_version}.toml"
    template.write_text(TEMPLATE_V1.read_text().replace('version = "rag.v1"', f'version = "{prompt_version}"'))
    release_env = k8s / "overlays/dev/release.env"
    lines = [
        f"GENERATOR_PROMPT_TEMPLATE={template}" if line.startswith("GENERATOR_PROMPT_TEMPLATE=") else line
        for line in release_env.read_text().splitlines()
    ]
    release_env.write_text("\n".join(lines) + "\n")
    out = subprocess.run(  # noqa: S603 - kubectl on our own files
        ["kubectl", "kustomize", str(k8s / "overlays/dev")], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    configmaps = [
        d
        for d in yaml.safe_load_all(out)
        if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ragline-release")
    ]
    assert len(configmaps) == 1
    return configmaps[0]["data"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("operability")
    release_data = render_release(tmp, "rag.v9-test")
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("test", "it", processor=SimpleSpanProcessor(exporter))
    release = ReleaseSettings(release=release_data["RAGLINE_RELEASE"])
    async with contextlib.AsyncExitStack() as es:
        emb = await es.enter_async_context(running(build_embedder(EmbedderSettings(**COMMON))))
        emb_addr = f"127.0.0.1:{emb.grpc_port}"
        gen_settings = GeneratorSettings(
            **COMMON, context_window=2048, prompt_template=release_data["GENERATOR_PROMPT_TEMPLATE"]
        )
        gen = await es.enter_async_context(running(build_generator(gen_settings)))
        ret = await es.enter_async_context(
            running(build_retriever(RetrieverSettings(**COMMON, embedder_addr=emb_addr, data_dir=str(tmp / "data"))))
        )
        api_settings = ApiSettings(
            **COMMON,
            retriever_addr=f"127.0.0.1:{ret.grpc_port}",
            generator_addr=f"127.0.0.1:{gen.grpc_port}",
            embedder_addr=emb_addr,
            enable_auth=False,
        )
        api = await es.enter_async_context(running(build_api(api_settings, release)))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.http_port}", timeout=120) as client:
            doc = {"id": "tower", "text": "The Eiffel Tower in Paris was finished in 1889 for the World's Fair."}
            r = await client.post("/v1/documents", json={"documents": [doc]})
            assert r.status_code == 200, r.text
            yield {"client": client, "exporter": exporter, "release": release_data}
    tracing._enabled = False  # later modules build services without tracing


async def test_one_trace_spans_every_hop_of_a_query(stack: dict[str, Any]) -> None:
    exporter: InMemorySpanExporter = stack["exporter"]
    exporter.clear()
    r = await stack["client"].post(
        "/v1/query", json={"question": "When was the Eiffel Tower finished?", "k": 2, "max_tokens": 8}
    )
    assert r.status_code == 200, r.text
    trace_id = r.headers["traceparent"].split("-")[1]
    assert r.headers["x-trace-id"] == trace_id
    spans = [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    rpcs = {str(s.attributes.get("rpc.service", "")) + "/" + str(s.attributes.get("rpc.method", "")) for s in spans}
    assert "ragline.retriever.v1.RetrieverService/Search" in rpcs
    assert "ragline.embedder.v1.EmbedderService/Embed" in rpcs
    assert "ragline.generator.v1.GeneratorService/Generate" in rpcs
    # Client and server side of each hop: the api called the retriever, which called the embedder.
    kinds = {(s.name, s.kind.name) for s in spans}
    assert any(kind == "SERVER" and name.startswith("POST /v1/query") for name, kind in kinds)
    assert sum(1 for s in spans if s.attributes.get("rpc.method") == "Embed") >= 2


async def test_release_from_the_overlay_is_served_at_info_and_in_headers(stack: dict[str, Any]) -> None:
    r = await stack["client"].get("/v1/info")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["release"] == stack["release"]["RAGLINE_RELEASE"]
    assert "rag.v9-test" in r.text
    q = await stack["client"].post("/v1/search", json={"query": "Eiffel", "k": 1})
    assert q.headers["x-ragline-release"] == stack["release"]["RAGLINE_RELEASE"]
