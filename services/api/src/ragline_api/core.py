"""QueryPipeline: the gateway's transport-free core — retrieve, generate, documents, release info."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline.generator.v1 import generator_pb2 as gpb
from ragline.retriever.v1 import retriever_pb2 as rpb
from ragline_api import __version__
from ragline_api.clients import Downstreams
from ragline_api.settings import ApiSettings
from ragline_common import context
from ragline_common.errors import RaglineError, Unavailable
from ragline_common.http import FieldError
from ragline_common.limits import max_tokens_problem
from ragline_common.settings import ReleaseSettings

_MODES = {None: rpb.SEARCH_MODE_UNSPECIFIED, "dense": rpb.SEARCH_MODE_DENSE, "hybrid": rpb.SEARCH_MODE_HYBRID}
FINISH = {gpb.FINISH_REASON_STOP: "stop", gpb.FINISH_REASON_LENGTH: "length", gpb.FINISH_REASON_ABORTED: "abort"}
UPSERT_STATUS = {
    rpb.UPSERT_STATUS_CREATED: "created",
    rpb.UPSERT_STATUS_UPDATED: "updated",
    rpb.UPSERT_STATUS_UNCHANGED: "unchanged",
    rpb.UPSERT_STATUS_FAILED: "error",
}

log = logging.getLogger(__name__)

# Embed calls in flight for one /v1/embeddings request that needs several (the embedder batches across them).
EMBED_CONCURRENCY = 4


def filter_to_proto(filters: dict[str, Any] | None) -> rpb.Filter | None:
    """The REST filter shape ({"must": [{"key", one of equals/any_of/range/date_range}]}) as the proto Filter."""
    if not filters or not filters.get("must"):
        return None
    out = rpb.Filter()
    for cond in filters["must"]:
        fc = out.must.add(key=cond["key"])
        if cond.get("equals") is not None:
            json_format.ParseDict(cond["equals"], fc.equals)
        elif cond.get("any_of") is not None:
            json_format.ParseDict(cond["any_of"], fc.any_of)
        elif cond.get("range") is not None:
            fc.range.CopyFrom(rpb.Range(**{k: v for k, v in cond["range"].items() if v is not None}))
        elif cond.get("date_range") is not None:
            fc.date_range.CopyFrom(rpb.DateRange(**{k: v for k, v in cond["date_range"].items() if v is not None}))
    return out


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        # Struct keeps every number as a double; give whole numbers back as integers (2021, not 2021.0).
        n = v.number_value
        return int(n) if n.is_integer() and abs(n) < 2**53 else n
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return struct_to_dict(v.struct_value)
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    return None


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    return {k: _value(v) for k, v in value.fields.items()}


@dataclass
class StageTimes:
    """Stage durations in seconds for the Server-Timing header (taken from the downstream Timings messages)."""

    values: dict[str, float] = field(default_factory=dict)

    def header(self) -> str:
        return ", ".join(f"{name};dur={secs * 1000:.2f}" for name, secs in self.values.items())


@dataclass
class SearchResult:
    hits: list[dict[str, Any]]
    times: StageTimes


@dataclass
class Prepared:
    """A question with its retrieved context, ready for the generator."""

    request: gpb.GenerateRequest
    citations: list[dict[str, Any]]
    times: StageTimes


def _hit(h: rpb.Hit) -> dict[str, Any]:
    return {
        "doc_id": h.doc_id,
        "chunk_id": h.chunk_id,
        "text": h.text,
        "score": h.score,
        "metadata": struct_to_dict(h.metadata),
        "start": h.start,
        "end": h.end,
    }


def sampling(params: dict[str, Any]) -> gpb.SamplingParams:
    return gpb.SamplingParams(
        **{k: v for k, v in params.items() if k in {"max_tokens", "temperature", "top_p", "seed"} and v is not None},
        stop=params.get("stop") or [],
    )


class QueryPipeline:
    def __init__(self, settings: ApiSettings, downstreams: Downstreams, release: ReleaseSettings) -> None:
        self.settings = settings
        self.ds = downstreams
        self.release = release
        self._info: dict[str, Any] | None = None
        self._info_at = 0.0
        self._info_lock = asyncio.Lock()
        self.started = int(time.time())
        self._per_call: int | None = None
        self._per_call_at = 0.0

    def begin(self, *, stream: bool = False) -> None:
        """Start this request's clock: every downstream call gets the time that is left."""
        s = self.settings
        context.set_deadline_in(s.stream_timeout_seconds if stream else s.request_timeout_seconds)

    # Retrieval ---------------------------------------------------------------------------------------------------
    async def search(self, query: str, k: int, filters: dict[str, Any] | None, mode: str | None = None) -> SearchResult:
        req = rpb.SearchRequest(query=query, k=k, mode=_MODES[mode])
        f = filter_to_proto(filters)
        if f is not None:
            req.filter.CopyFrom(f)
        start = time.perf_counter()
        reply = await self.ds.retriever.call("Search", req)
        t = reply.timings
        times = StageTimes({"embed": t.embed_seconds, "search": t.search_seconds})
        times.values["retriever"] = time.perf_counter() - start
        return SearchResult([_hit(h) for h in reply.hits], times)

    async def prepare(
        self,
        messages: list[tuple[str, str]],
        k: int,
        filters: dict[str, Any] | None,
        params: dict[str, Any],
        *,
        retrieve: bool = True,
    ) -> Prepared:
        """Retrieve on the last user message and build the generator request with that context."""
        question = next((content for role, content in reversed(messages) if role == "user"), "")
        if self.release.log_payloads:
            # Off by default: questions can carry personal data (RAGLINE_LOG_PAYLOADS=true to debug retrieval).
            log.info("question received", extra={"question": question, "k": k})
        result = (
            await self.search(question, k, filters) if retrieve and question.strip() else SearchResult([], StageTimes())
        )
        citations = [{"index": i + 1, **hit} for i, hit in enumerate(result.hits)]
        return Prepared(self.generate_request(messages, result.hits, params), citations, result.times)

    def prepare_prompt(self, prompt: str, params: dict[str, Any]) -> Prepared:
        """A raw prompt for the generator's own model: no retrieval, no template, the text as given."""
        return Prepared(gpb.GenerateRequest(prompt=prompt, params=sampling(params)), [], StageTimes())

    def generate_request(
        self, messages: list[tuple[str, str]], hits: list[dict[str, Any]], params: dict[str, Any]
    ) -> gpb.GenerateRequest:
        """The generator's request: the conversation, the retrieved passages as context, the sampling params."""
        return gpb.GenerateRequest(
            messages=[gpb.ChatMessage(role=r, content=c) for r, c in messages],
            context=[gpb.ContextChunk(doc_id=h["doc_id"], text=h["text"]) for h in hits],
            params=sampling(params),
        )

    # Generation --------------------------------------------------------------------------------------------------
    async def generate(self, prepared: Prepared) -> dict[str, Any]:
        start = time.perf_counter()
        reply = await self.ds.generator.call("Generate", prepared.request)
        t = reply.timings
        prepared.times.values.update(
            {"queue": t.queue_seconds, "ttft": t.time_to_first_token_seconds, "generate": time.perf_counter() - start}
        )
        return {
            "answer": reply.text,
            "finish_reason": FINISH.get(reply.finish_reason, "stop"),
            "usage": _usage(reply.usage),
            "model": reply.model,
            "prompt_version": reply.prompt_version,
            "context_used": [i + 1 for i in reply.context_used],
        }

    async def generate_stream(self, prepared: Prepared) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yields ("token", {"delta"}) frames, then one ("done", {finish_reason, usage, model, …})."""
        start = time.perf_counter()
        last: gpb.GenerateChunk | None = None
        async for chunk in self.ds.generator.stream("GenerateStream", prepared.request):
            if chunk.delta:
                yield "token", {"delta": chunk.delta}
            last = chunk
        done: dict[str, Any] = {"finish_reason": "stop", "usage": _usage(None), "model": "", "prompt_version": ""}
        if last is not None:
            t = last.timings
            done = {
                "finish_reason": FINISH.get(last.finish_reason, "stop"),
                "usage": _usage(last.usage),
                "model": last.model,
                "prompt_version": last.prompt_version,
                "context_used": [i + 1 for i in last.context_used],
                "timings": {
                    "queue_seconds": t.queue_seconds,
                    "time_to_first_token_seconds": t.time_to_first_token_seconds,
                    "generate_seconds": time.perf_counter() - start,
                },
            }
        yield "done", done

    # Documents ---------------------------------------------------------------------------------------------------
    async def upsert(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        req = rpb.UpsertRequest()
        for doc in documents:
            d = req.documents.add(id=doc["id"], text=doc["text"])
            if doc.get("metadata"):
                d.metadata.update(doc["metadata"])
        # Ingestion embeds every chunk: it gets its own, longer deadline than a query.
        context.set_deadline_in(self.settings.ingest_timeout_seconds)
        reply = await self.ds.retriever.call("Upsert", req, timeout=self.settings.ingest_timeout_seconds)
        return [
            {
                "id": r.id,
                "status": UPSERT_STATUS.get(r.status, "error"),
                "chunks": r.chunks,
                "content_hash": r.content_hash,
                "error": r.error or None,
            }
            for r in reply.results
        ]

    async def get_document(self, doc_id: str) -> dict[str, Any]:
        reply = await self.ds.retriever.call("Get", rpb.GetRequest(id=doc_id))
        return {
            "id": reply.document.id,
            "text": reply.document.text,
            "metadata": struct_to_dict(reply.document.metadata),
            "content_hash": reply.content_hash,
            "chunks": [{"chunk_id": c.chunk_id, "text": c.text, "start": c.start, "end": c.end} for c in reply.chunks],
        }

    async def delete_document(self, doc_id: str) -> int:
        reply = await self.ds.retriever.call("Delete", rpb.DeleteRequest(id=doc_id))
        return int(reply.deleted_chunks)

    # Embeddings --------------------------------------------------------------------------------------------------
    async def embed(self, texts: list[str]) -> epb.EmbedResponse:
        """Embed any number of texts: split into the embedder's max_texts_per_request, a few calls at a time."""
        per_call = await self._embed_per_call()
        if len(texts) <= per_call:
            return await self.ds.embedder.call("Embed", epb.EmbedRequest(texts=texts))
        gate = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def one(start: int) -> epb.EmbedResponse:
            async with gate:
                reply: epb.EmbedResponse = await self.ds.embedder.call(
                    "Embed", epb.EmbedRequest(texts=texts[start : start + per_call])
                )
                return reply

        replies = await asyncio.gather(*(one(i) for i in range(0, len(texts), per_call)))
        out = epb.EmbedResponse(model=replies[0].model)
        for reply in replies:
            out.embeddings.extend(reply.embeddings)
            out.prompt_tokens += reply.prompt_tokens
        return out

    async def _embed_per_call(self) -> int:
        """The embedder's max_texts_per_request, from its Info (asked once an info period, not per request)."""
        now = time.monotonic()
        if self._per_call is None or now - self._per_call_at > self.settings.info_cache_seconds:
            reply = await self.ds.embedder.call("Info", epb.InfoRequest())
            self._per_call, self._per_call_at = int(reply.max_texts_per_request) or 64, now
        return self._per_call

    # Models ------------------------------------------------------------------------------------------------------
    async def generator_info(self) -> dict[str, Any]:
        """The generator's Info (cached with the release info); Unavailable when it cannot be had."""
        gen = (await self.info())["services"].get("generator", {})
        if "error" in gen:
            raise Unavailable(f"the generator's model cannot be looked up: {gen['error']}")
        return gen  # type: ignore[no-any-return]

    async def check_max_tokens(self, max_tokens: int | None) -> None:
        """The generator owns the cap; checking it here turns a streamed 200 + error into a plain 400."""
        if max_tokens is None:
            return
        cap = int((await self.generator_info()).get("max_tokens_cap") or 0)
        problem = max_tokens_problem(max_tokens, cap) if cap else None
        if problem:
            raise FieldError(problem, "max_tokens")

    # Release -----------------------------------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        """The release: this gateway, RAGLINE_* settings and each downstream's Info (cached; errors shown)."""
        async with self._info_lock:
            now = time.monotonic()
            if self._info is not None and now - self._info_at < self.settings.info_cache_seconds:
                return self._info
            calls = [
                self.ds.retriever.call("Info", rpb.InfoRequest()),
                self.ds.generator.call("Info", gpb.InfoRequest()),
                self.ds.embedder.call("Info", epb.InfoRequest()),
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            services: dict[str, Any] = {"api": {"version": __version__}}
            complete = True
            for name, res in zip(("retriever", "generator", "embedder"), results, strict=True):
                if isinstance(res, RaglineError):
                    services[name] = {"error": res.message}
                    complete = False
                elif isinstance(res, BaseException):
                    raise res
                else:
                    services[name] = json_format.MessageToDict(
                        res, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                    )
            gen = services["generator"]
            emb = services["embedder"]
            info = {
                "release": self.release.release,
                "release_settings": self.release.model_dump(),
                "services": services,
                "generator_model": gen.get("model"),
                "generator_revision": gen.get("revision"),
                "embedder_model": emb.get("model"),
                "embedder_revision": emb.get("revision"),
                "prompt_version": gen.get("prompt_version"),
            }
            if complete:  # cache only a full answer, so a recovered downstream shows up at once
                self._info, self._info_at = info, now
            return info

    def cached_info(self) -> dict[str, Any] | None:
        return self._info


def _usage(u: gpb.Usage | None) -> dict[str, int]:
    p, c = (u.prompt_tokens, u.completion_tokens) if u is not None else (0, 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
