"""Fake downstreams (real grpc.aio servers on port 0 serving fake logic) and a running gateway, for api tests."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline.generator.v1 import generator_pb2 as gpb
from ragline.retriever.v1 import retriever_pb2 as rpb
from ragline_api.__main__ import build
from ragline_api.settings import ApiSettings
from ragline_common.errors import NotFound, Unavailable
from ragline_common.grpc_server import add_servicer
from ragline_common.metrics import RequestMetrics
from ragline_common.serve import Service
from ragline_common.settings import ReleaseSettings
from ragline_common.testing import running

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"


class Fault:
    """What a fake does before answering: nothing, fail UNAVAILABLE, crash (INTERNAL), or hang."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay = 0.0
        self.calls: collections.Counter[str] = collections.Counter()

    async def __call__(self, method: str) -> None:
        self.calls[method] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "unavailable":
            raise Unavailable("fake downstream is down")
        if self.mode == "internal":
            raise RuntimeError("fake crash")
        if self.mode == "hang":
            await asyncio.sleep(3600)


class FakeRetriever:
    def __init__(self) -> None:
        self.fault = Fault()
        self.docs: dict[str, rpb.Document] = {}
        self.last_search: rpb.SearchRequest | None = None

    async def Search(self, request: rpb.SearchRequest, context: Any) -> rpb.SearchResponse:
        await self.fault("Search")
        self.last_search = request
        words = set(request.query.lower().split())
        scored = []
        for doc in self.docs.values():
            overlap = len(words & set(doc.text.lower().split()))
            if overlap:
                scored.append((overlap / max(1, len(words)), doc))
        scored.sort(key=lambda x: (-x[0], x[1].id))
        hits = [
            rpb.Hit(
                doc_id=d.id, chunk_id=f"{d.id}#0", text=d.text, score=s, metadata=d.metadata, start=0, end=len(d.text)
            )
            for s, d in scored[: request.k or 5]
        ]
        return rpb.SearchResponse(
            hits=hits, timings=rpb.Timings(embed_seconds=0.002, search_seconds=0.001, total_seconds=0.003)
        )

    async def Upsert(self, request: rpb.UpsertRequest, context: Any) -> rpb.UpsertResponse:
        await self.fault("Upsert")
        results = []
        for doc in request.documents:
            old = self.docs.get(doc.id)
            status = (
                rpb.UPSERT_STATUS_CREATED
                if old is None
                else rpb.UPSERT_STATUS_UNCHANGED
                if old == doc
                else rpb.UPSERT_STATUS_UPDATED
            )
            self.docs[doc.id] = doc
            results.append(
                rpb.UpsertResult(id=doc.id, status=status, chunks=1, content_hash=f"h{hash(doc.text) % 997}")
            )
        return rpb.UpsertResponse(results=results)

    async def Delete(self, request: rpb.DeleteRequest, context: Any) -> rpb.DeleteResponse:
        await self.fault("Delete")
        if self.docs.pop(request.id, None) is None:
            raise NotFound(f"document {request.id!r} not found")
        return rpb.DeleteResponse(deleted_chunks=1)

    async def Get(self, request: rpb.GetRequest, context: Any) -> rpb.GetResponse:
        await self.fault("Get")
        doc = self.docs.get(request.id)
        if doc is None:
            raise NotFound(f"document {request.id!r} not found")
        chunk = rpb.Chunk(chunk_id=f"{doc.id}#0", text=doc.text, start=0, end=len(doc.text))
        return rpb.GetResponse(document=doc, content_hash="h", chunks=[chunk])

    async def Info(self, request: rpb.InfoRequest, context: Any) -> rpb.InfoResponse:
        await self.fault("Info")
        return rpb.InfoResponse(collection="docs", engine="fake", points=len(self.docs), embedder_model="fake-emb")


class FakeGenerator:
    def __init__(self) -> None:
        self.fault = Fault()
        self.last: gpb.GenerateRequest | None = None
        self.token_delay = 0.0
        self.stream_closed_early = asyncio.Event()
        self.fail_after_tokens: int | None = None  # abort the stream (INTERNAL) after this many tokens
        self.max_tokens_cap = 0  # 0: Info reports no cap

    def _answer(self, request: gpb.GenerateRequest) -> str:
        question = request.messages[-1].content if request.messages else request.prompt
        return f"From {len(request.context)} passages [1]: {question}"

    async def Generate(self, request: gpb.GenerateRequest, context: Any) -> gpb.GenerateResponse:
        await self.fault("Generate")
        self.last = request
        text = self._answer(request)
        return gpb.GenerateResponse(
            text=text,
            finish_reason=gpb.FINISH_REASON_STOP,
            usage=gpb.Usage(prompt_tokens=10, completion_tokens=len(text.split())),
            model="fake-llm",
            prompt_version="rag-v1",
            context_used=list(range(len(request.context))),
            timings=gpb.Timings(queue_seconds=0.001, time_to_first_token_seconds=0.01, total_seconds=0.02),
        )

    async def GenerateStream(self, request: gpb.GenerateRequest, context: Any) -> AsyncIterator[gpb.GenerateChunk]:
        await self.fault("GenerateStream")
        self.last = request
        words = self._answer(request).split(" ")
        try:
            for i, w in enumerate(words):
                if i == self.fail_after_tokens:
                    await context.abort(grpc.StatusCode.INTERNAL, "fake crash mid-stream")
                await asyncio.sleep(self.token_delay)
                yield gpb.GenerateChunk(delta=w if i == 0 else " " + w)
        except (asyncio.CancelledError, GeneratorExit):
            self.stream_closed_early.set()
            raise
        yield gpb.GenerateChunk(
            finish_reason=gpb.FINISH_REASON_STOP,
            usage=gpb.Usage(prompt_tokens=10, completion_tokens=len(words)),
            model="fake-llm",
            prompt_version="rag-v1",
            context_used=list(range(len(request.context))),
            timings=gpb.Timings(queue_seconds=0.001, time_to_first_token_seconds=0.01, total_seconds=0.02),
        )

    async def Info(self, request: gpb.InfoRequest, context: Any) -> gpb.InfoResponse:
        await self.fault("Info")
        return gpb.InfoResponse(
            engine="fake", model="fake-llm", revision="r1", prompt_version="rag-v1", max_tokens_cap=self.max_tokens_cap
        )


class FakeEmbedder:
    def __init__(self) -> None:
        self.fault = Fault()
        self.max_texts_per_request = 256
        self.batches: list[int] = []  # texts per Embed call

    async def Embed(self, request: epb.EmbedRequest, context: Any) -> epb.EmbedResponse:
        await self.fault("Embed")
        if len(request.texts) > self.max_texts_per_request:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.texts)} texts in one request")
        self.batches.append(len(request.texts))
        vecs = [epb.Embedding(values=[float(len(t)), 1.0, 0.0, 0.5], tokens=len(t.split())) for t in request.texts]
        return epb.EmbedResponse(embeddings=vecs, model="fake-emb", prompt_tokens=sum(v.tokens for v in vecs))

    async def Info(self, request: epb.InfoRequest, context: Any) -> epb.InfoResponse:
        await self.fault("Info")
        return epb.InfoResponse(
            model="fake-emb", revision="e1", dimension=4, max_texts_per_request=self.max_texts_per_request
        )


@dataclass
class Fakes:
    retriever: FakeRetriever = field(default_factory=FakeRetriever)
    generator: FakeGenerator = field(default_factory=FakeGenerator)
    embedder: FakeEmbedder = field(default_factory=FakeEmbedder)
    addrs: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def fake_downstreams() -> AsyncIterator[Fakes]:
    fakes = Fakes()
    servers = []
    for name, fake, pb in (
        ("retriever", fakes.retriever, rpb),
        ("generator", fakes.generator, gpb),
        ("embedder", fakes.embedder, epb),
    ):
        server = grpc.aio.server()
        svc = next(iter(pb.DESCRIPTOR.services_by_name.values()))
        add_servicer(server, fake, svc, RequestMetrics(CollectorRegistry(), f"fake-{name}"))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        fakes.addrs[name] = f"127.0.0.1:{port}"
    try:
        yield fakes
    finally:
        await asyncio.gather(*(s.stop(None) for s in servers))


def api_settings(fakes: Fakes, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "http_port": 0,
        "grpc_port": 0,
        "shutdown_grace_seconds": 1.0,
        "retriever_addr": fakes.addrs["retriever"],
        "generator_addr": fakes.addrs["generator"],
        "embedder_addr": fakes.addrs["embedder"],
        "keys": SecretStr(f"{KEY},{OTHER_KEY}"),
    }
    values.update(overrides)
    return ApiSettings(**values)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    async with fake_downstreams() as f:
        yield f


@contextlib.asynccontextmanager
async def gateway(fakes: Fakes, **overrides: Any) -> AsyncIterator[Service]:
    async with running(build(api_settings(fakes, **overrides), ReleaseSettings(release="test-rel"))) as svc:
        yield svc


class ThreadedStack:
    """Fakes + gateway on their own event loop in a thread, for synchronous clients (schemathesis, openai sync)."""

    def __init__(self, **overrides: Any) -> None:
        self.overrides = overrides
        self.base_url = ""
        self.fakes: Fakes | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                async with fake_downstreams() as fakes, gateway(fakes, **self.overrides) as svc:
                    self.fakes = fakes
                    self.base_url = f"http://127.0.0.1:{svc.http_port}"
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                self._ready.set()

        asyncio.run(main())

    def __enter__(self) -> ThreadedStack:
        self._thread.start()
        self._ready.wait(60)
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="session")
def threaded_stack() -> Iterator[ThreadedStack]:
    with ThreadedStack() as stack:
        yield stack


@pytest.fixture
def api_key() -> str:
    return KEY


@pytest.fixture
def start_gateway(fakes: Fakes) -> Any:
    """`async with start_gateway(**settings_overrides) as svc:` runs the gateway against the fakes."""
    return lambda **overrides: gateway(fakes, **overrides)
