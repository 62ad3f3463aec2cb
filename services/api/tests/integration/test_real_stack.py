"""The gateway in front of the real embedder (real model), retriever (embedded Qdrant on disk) and generator
(llama.cpp, SmolLM2), all on free ports in this process."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from pydantic import SecretStr

from ragline_api.__main__ import build as build_api
from ragline_api.settings import ApiSettings
from ragline_common.settings import ReleaseSettings
from ragline_common.testing import running
from ragline_embedder.__main__ import build as build_embedder
from ragline_embedder.settings import EmbedderSettings
from ragline_generator.__main__ import build as build_generator
from ragline_generator.settings import GeneratorSettings
from ragline_retriever.__main__ import build as build_retriever
from ragline_retriever.settings import RetrieverSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KEY = "integration-key-0123456789abcdef"
DOCS = [
    {
        "id": "paris",
        "text": "Paris is the capital of France. The Eiffel Tower was finished in 1889.",
        "metadata": {"lang": "en", "year": 2020},
    },
    {
        "id": "python",
        "text": "Python is a programming language created by Guido van Rossum. It emphasises readability.",
        "metadata": {"lang": "en", "year": 2023},
    },
    {
        "id": "berlin",
        "text": "Berlin est la capitale de l'Allemagne. Le mur est tombé en 1989.",
        "metadata": {"lang": "fr", "year": 2021},
    },
]
COMMON = {"http_port": 0, "grpc_port": 0, "threads": 1, "shutdown_grace_seconds": 2}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    data: Path = tmp_path_factory.mktemp("retriever")
    async with contextlib.AsyncExitStack() as es:
        emb = await es.enter_async_context(running(build_embedder(EmbedderSettings(**COMMON))))
        emb_addr = f"127.0.0.1:{emb.grpc_port}"
        gen = await es.enter_async_context(running(build_generator(GeneratorSettings(**COMMON, context_window=2048))))
        ret = await es.enter_async_context(
            running(build_retriever(RetrieverSettings(**COMMON, embedder_addr=emb_addr, data_dir=str(data))))
        )
        api_settings = ApiSettings(
            **COMMON,
            retriever_addr=f"127.0.0.1:{ret.grpc_port}",
            generator_addr=f"127.0.0.1:{gen.grpc_port}",
            embedder_addr=emb_addr,
            keys=SecretStr(KEY),
        )
        api = await es.enter_async_context(running(build_api(api_settings, ReleaseSettings(release="it-1"))))
        base = f"http://127.0.0.1:{api.http_port}"
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            r = await c.post("/v1/documents", json={"documents": DOCS})
            assert r.status_code == 200, r.text
            assert [x["status"] for x in r.json()["results"]] == ["created"] * 3
            yield {"client": c, "base": base}


pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def test_upsert_is_idempotent_and_documents_round_trip(stack) -> None:
    c = stack["client"]
    r = await c.post("/v1/documents", json={"documents": DOCS[:1]})
    assert r.json()["results"][0]["status"] == "unchanged"
    doc = (await c.get("/v1/documents/paris")).json()
    assert doc["text"] == DOCS[0]["text"] and doc["metadata"]["lang"] == "en" and doc["chunks"]
    assert (await c.get("/v1/documents/nope")).status_code == 404


async def test_search_ranks_the_relevant_document_first_and_filters(stack) -> None:
    c = stack["client"]
    r = await c.post("/v1/search", json={"query": "Who created the Python language?", "k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["doc_id"] == "python"
    assert "embed;dur=" in r.headers["server-timing"] and "search;dur=" in r.headers["server-timing"]
    r = await c.post(
        "/v1/search", json={"query": "capital city", "k": 3, "filters": {"must": [{"key": "lang", "equals": "fr"}]}}
    )
    assert {h["doc_id"] for h in r.json()["hits"]} == {"berlin"}
    r = await c.post(
        "/v1/search", json={"query": "capital", "k": 3, "filters": {"must": [{"key": "year", "range": {"gte": 2021}}]}}
    )
    assert {h["doc_id"] for h in r.json()["hits"]} <= {"berlin", "python"}


async def test_query_answers_with_citations_and_the_release(stack) -> None:
    c = stack["client"]
    info = (await c.get("/v1/info")).json()
    assert info["embedder_model"] and info["embedder_revision"] and info["generator_model"]
    assert info["prompt_version"] and info["release"] == "it-1"
    r = await c.post(
        "/v1/query",
        json={"question": "When was the Eiffel Tower finished?", "k": 2, "max_tokens": 24, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"].strip() and body["citations"][0]["doc_id"] == "paris"
    assert body["usage"]["completion_tokens"] > 0 and body["release"]["prompt_version"] == info["prompt_version"]
    assert "generate;dur=" in r.headers["server-timing"]


async def test_query_stream_events(stack) -> None:
    c = stack["client"]
    body = {"question": "What is Python?", "k": 2, "max_tokens": 16, "temperature": 0, "stream": True}
    async with c.stream("POST", "/v1/query", json=body) as r:
        raw = (await r.aread()).decode()
    names = [block.split("\n")[0].removeprefix("event: ") for block in raw.strip().split("\n\n")]
    assert names[0] == "citations" and names[-1] == "done" and "token" in names and "error" not in names
    done = json.loads(raw.strip().split("\n\n")[-1].split("\n")[1].removeprefix("data: "))
    assert done["usage"]["completion_tokens"] > 0


async def test_openai_sdk_streams_with_citations(stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack["base"] + "/v1", api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="ragline",
        messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
        max_tokens=16,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].model_extra["citations"][0]["doc_id"] == "paris"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).strip()
    emb = await client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello"])
    assert len(emb.data[0].embedding) == 384
    await client.close()
