"""The retriever core: collection lifecycle, idempotent ingestion and search, free of any transport."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline_common.errors import InvalidInput, NotFound, Overloaded, RaglineError, TooLarge, Unavailable
from ragline_common.health import Readiness
from ragline_common.limits import MAX_METADATA_BYTES, doc_id_problem, k_problem
from ragline_retriever.chunking import Chunk, Chunker, chunk_id, content_hash
from ragline_retriever.clients import EmbedderClient
from ragline_retriever.fencing import IngestFences, Ticket
from ragline_retriever.metrics import RetrieverMetrics
from ragline_retriever.settings import RetrieverSettings
from ragline_retriever.store import (
    CHUNK_INDEX,
    DOC_ID,
    DOC_TEXT,
    METADATA,
    CollectionMeta,
    FieldMatch,
    PointIn,
    SearchQuery,
    SparseEncoder,
    Store,
    StoredPoint,
    open_sparse_encoder,
)

log = logging.getLogger(__name__)

COLLECTION = "collection"  # readiness condition name
RECHECK_SECONDS = 30.0
WRITE_BATCH = 256


@dataclass(frozen=True)
class DocIn:
    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertOutcome:
    id: str
    status: str  # created, updated, unchanged, failed
    chunks: int = 0
    content_hash: str = ""
    error: str = ""


@dataclass(frozen=True)
class Hit:
    doc_id: str
    chunk_id: str
    text: str
    score: float
    start: int
    end: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class RankedHits:
    hits: list[Hit]
    embed_seconds: float
    search_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class StoredDoc:
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    chunks: list[StoredPoint]


@dataclass
class _Plan:
    doc: DocIn
    hash: str
    chunks: list[Chunk]
    existed: bool
    vectors: list[list[float]] = field(default_factory=list)
    error: RaglineError | None = None


class _Permits:
    """A fixed number of requests in flight; the next one is refused at once, never queued."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.what, self.used = limit, what, 0

    def __enter__(self) -> None:
        if self.used >= self.limit:
            raise Overloaded(f"{self.limit} {self.what} already in flight; retry later")
        self.used += 1

    def __exit__(self, *exc: object) -> None:
        self.used -= 1


class Retriever:
    def __init__(
        self,
        settings: RetrieverSettings,
        store: Store,
        embedder: EmbedderClient,
        chunker: Chunker,
        metrics: RetrieverMetrics,
        readiness: Readiness,
        sparse: SparseEncoder | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.metrics = metrics
        self.readiness = readiness
        self.sparse = sparse or open_sparse_encoder()
        self.embedder_info: epb.InfoResponse | None = None
        self.meta: CollectionMeta | None = None
        self._ready = False
        self._write_lock = asyncio.Lock()
        self._fences = IngestFences()
        self._searches = _Permits(settings.max_concurrent_searches, "searches")
        self._upserts = _Permits(settings.max_concurrent_upserts, "upserts")

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Forever: learn the embedder's model, open or create the collection, refuse a mismatch."""
        backoff = 0.2
        while True:
            try:
                info = await self.embedder.info()
                wanted = CollectionMeta(int(info.dimension), info.model, info.revision)
                if self.meta is None:
                    existing = await self.store.open()
                    if existing is None:
                        await self.store.create(wanted)
                        log.info(
                            "created collection %s (dim %d, %s)", self.settings.collection, info.dimension, info.model
                        )
                        existing = wanted
                    elif self.settings.optimize_on_start and existing.mismatch(wanted) is None:
                        await self.readiness.set(COLLECTION, False, "optimizing the embedded store")
                        await self.store.optimize()
                    self.meta = existing
                reason = self.meta.mismatch(wanted)
                self.embedder_info = info
                if reason is None and self.settings.chunk_tokens + 2 > info.max_seq_length:
                    log.warning("chunks of %d tokens exceed the embedder's max_seq_length %d: they will be cut",
                                self.settings.chunk_tokens, info.max_seq_length)  # fmt: skip
                self._ready = reason is None
                await self.readiness.set(COLLECTION, self._ready, f"{reason}; refusing to mix models" if reason else "")
                if self._ready:
                    self.metrics.collection_points.set(await self.store.count())
                backoff = 0.2
                await asyncio.sleep(RECHECK_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # embedder or store not there yet: not ready, with the reason, and retry
                message = exc.message if isinstance(exc, RaglineError) else f"{type(exc).__name__}: {exc}"
                # Once the collection is open, an embedder outage does not take the retriever out of its Service
                # (readiness does not cascade): each call that needs the embedder answers UNAVAILABLE naming it.
                self._ready = self._ready and self.meta is not None
                await self.readiness.set(COLLECTION, self._ready, f"waiting for embedder/store: {message}"[:300])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _check_ready(self) -> None:
        if not self._ready:
            reason = self.readiness.reasons().get(COLLECTION, "starting")
            raise Unavailable(f"the retriever is not ready: {reason}")

    async def close(self) -> None:
        await self.store.close()
        await self.embedder.close()

    # ---- search ----------------------------------------------------------------------------------------------

    async def search(self, query: str, k: int, conditions: list[FieldMatch], mode: str | None = None) -> RankedHits:
        s = self.settings
        if not query or not query.strip():
            raise InvalidInput("query is empty; give some text to search for")
        if len(query.encode("utf-8", errors="replace")) > s.max_query_bytes:
            raise TooLarge(f"query is over {s.max_query_bytes} bytes")
        problem = k_problem(k, s.max_k)
        if problem:
            raise InvalidInput(problem)
        mode = mode or s.search_mode
        self._check_ready()
        with self._searches:
            started = time.perf_counter()
            dense = (await self._embed([query], "query"))[0]
            embedded = time.perf_counter()
            sparse = None
            if mode == "hybrid":
                # A query of stop words only has no lexical part (None): dense alone answers it.
                sparse = self.sparse.encode_query(query)
            try:
                found = await self.store.search(
                    SearchQuery(dense, sparse, k, conditions, max(s.hybrid_candidates, k), s.rrf_k)
                )
            except NotFound as exc:
                # The collection went away under us (deleted on the server): the service's fault, not the caller's.
                raise Unavailable(f"the collection is missing from the store: {exc.message}") from None
            done = time.perf_counter()
        self.metrics.search_seconds.labels(mode).observe(done - embedded)
        hits = [
            Hit(
                doc_id=p.payload.get(DOC_ID, ""),
                chunk_id=p.id,
                text=p.payload.get("text", ""),
                score=p.score,
                start=int(p.payload.get("start", 0)),
                end=int(p.payload.get("end", 0)),
                metadata=p.payload.get(METADATA) or {},
            )
            for p in found
        ]
        return RankedHits(hits, embedded - started, done - embedded, done - started)

    async def _embed(self, texts: list[str], purpose: str) -> list[list[float]]:
        started = time.perf_counter()
        try:
            vectors = await self.embedder.embed(texts, bulk=purpose == "ingest")
            return vectors.tolist()  # type: ignore[no-any-return]
        finally:
            self.metrics.embed_seconds.labels(purpose).observe(time.perf_counter() - started)

    # ---- ingestion -------------------------------------------------------------------------------------------

    def _validate(self, docs: list[DocIn]) -> None:
        s = self.settings
        if not docs:
            raise InvalidInput("documents is empty; give at least one document")
        if len(docs) > s.max_documents_per_upsert:
            raise InvalidInput(f"{len(docs)} documents in one upsert; at most {s.max_documents_per_upsert} allowed")
        seen: set[str] = set()
        for i, d in enumerate(docs):
            problem = doc_id_problem(d.id)
            if problem:
                raise InvalidInput(f"documents[{i}].{problem}")
            if d.id in seen:
                raise InvalidInput(f"documents[{i}].id {d.id!r} appears twice in one upsert")
            seen.add(d.id)
            try:
                size = len(d.text.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidInput(f"documents[{i}].text is not valid UTF-8 (it holds a lone surrogate)") from None
            if size > s.max_document_bytes:
                raise TooLarge(f"documents[{i}] ({d.id!r}) is {size} bytes; at most {s.max_document_bytes} allowed")
            if not d.text.strip():
                raise InvalidInput(f"documents[{i}] ({d.id!r}) has no text")
            meta_size = len(json.dumps(d.metadata, default=str).encode())
            if meta_size > MAX_METADATA_BYTES:
                raise TooLarge(f"documents[{i}] ({d.id!r}) metadata is {meta_size} bytes; at most {MAX_METADATA_BYTES}")

    async def upsert(self, docs: list[DocIn]) -> list[UpsertOutcome]:
        self._validate(docs)
        self._check_ready()
        # Tickets first, before chunking (seconds for a large text): a DELETE from now on fences this ingest.
        with self._upserts, self._fences.registered([d.id for d in docs]) as tickets:
            plans = await asyncio.to_thread(self._plan, docs)
            for i, plan in enumerate(plans):
                if not plan.chunks:
                    raise InvalidInput(f"documents[{i}] ({plan.doc.id!r}) has no words to index")
            async with self._fences.serialized([d.id for d in docs]):
                todo, outcomes = await self._compare(plans, tickets)
                await self._embed_plans(todo)
                for plan in todo:
                    outcomes[plan.doc.id] = await self._write(plan, tickets[plan.doc.id])
            if todo:
                self.metrics.collection_points.set(await self.store.count())
        results = [outcomes[d.id] for d in docs]
        for r in results:
            self.metrics.ingest_documents.labels(r.status).inc()
        failed = [p.error for p in todo if p.error is not None]
        if failed and len(failed) == len(docs) and isinstance(failed[0], Unavailable | Overloaded):
            raise failed[0]  # nothing could be done: say so with the status a client retries on
        return results

    async def _compare(
        self, plans: list[_Plan], tickets: dict[str, Ticket]
    ) -> tuple[list[_Plan], dict[str, UpsertOutcome]]:
        """Split the plans into those with new content (to embed and write) and those already stored."""
        firsts = {p.id: p for p in await self.store.retrieve([chunk_id(p.doc.id, 0) for p in plans])}
        todo: list[_Plan] = []
        outcomes: dict[str, UpsertOutcome] = {}
        for plan in plans:
            old = firsts.get(chunk_id(plan.doc.id, 0))
            plan.existed = old is not None
            if old is not None and old.payload.get("content_hash") == plan.hash:
                # Same content; the count also catches a crash between writing chunks and trimming the tail.
                if await self.store.count(plan.doc.id) == len(plan.chunks):
                    if tickets[plan.doc.id].fenced:
                        outcomes[plan.doc.id] = _deleted(plan)
                    else:
                        outcomes[plan.doc.id] = UpsertOutcome(plan.doc.id, "unchanged", len(plan.chunks), plan.hash)
                    continue
            todo.append(plan)
        return todo, outcomes

    def _plan(self, docs: list[DocIn]) -> list[_Plan]:
        sig = self.chunker.signature
        return [_Plan(d, content_hash(d.text, d.metadata, sig), self.chunker.split(d.text), False) for d in docs]

    async def _embed_plans(self, plans: list[_Plan]) -> None:
        info = self.embedder_info
        size = min(self.settings.embed_batch_size, info.max_texts_per_request if info else 64) or 1
        items = [(plan, c.index, c.text) for plan in plans for c in plan.chunks]
        for plan in plans:
            plan.vectors = [[] for _ in plan.chunks]
        gate = asyncio.Semaphore(self.settings.embed_concurrency)

        async def run(start: int) -> None:
            batch = items[start : start + size]
            async with gate:
                if all(p.error is not None for p, _, _ in batch):
                    return
                try:
                    vectors = await self._embed([t for _, _, t in batch], "ingest")
                except RaglineError as exc:
                    for p, _, _ in batch:
                        p.error = p.error or exc
                    return
            for (p, index, _), vec in zip(batch, vectors, strict=True):
                p.vectors[index] = vec

        await asyncio.gather(*(run(i) for i in range(0, len(items), size)))

    async def _write(self, plan: _Plan, ticket: Ticket) -> UpsertOutcome:
        doc = plan.doc
        if plan.error is not None:
            return UpsertOutcome(doc.id, "failed", 0, plan.hash, plan.error.message)
        if ticket.fenced:
            return _deleted(plan)
        points = []
        for c, vec in zip(plan.chunks, plan.vectors, strict=True):
            payload: dict[str, Any] = {
                DOC_ID: doc.id,
                CHUNK_INDEX: c.index,
                "n_chunks": len(plan.chunks),
                "content_hash": plan.hash,
                "text": c.text,
                "start": c.start,
                "end": c.end,
                METADATA: doc.metadata,
            }
            if c.index == 0:
                payload[DOC_TEXT] = doc.text
            points.append(PointIn(chunk_id(doc.id, c.index), vec, self.sparse.encode_document(c.text), payload))
        # Chunk 0 last: it carries the text and content hash, so until the whole document is written a Get or a
        # re-ingest still sees the earlier version (or none) and a crash mid-write is repaired by the next ingest.
        points = points[1:] + points[:1]
        async with self._write_lock:
            # Under the lock a DELETE cannot slip in between this check and the write.
            if ticket.fenced:
                return _deleted(plan)
            try:
                # Shielded: a caller that goes away (deadline, cancel) mid-write must not leave half a document.
                await asyncio.shield(self._write_points(doc.id, points))
            except RaglineError as exc:
                return UpsertOutcome(doc.id, "failed", 0, plan.hash, exc.message)
        self.metrics.ingest_chunks.inc(len(points))
        return UpsertOutcome(doc.id, "updated" if plan.existed else "created", len(points), plan.hash)

    async def _write_points(self, doc_id: str, points: list[PointIn]) -> None:
        for i in range(0, len(points), WRITE_BATCH):
            await self.store.upsert(points[i : i + WRITE_BATCH])
        # Chunks past the new count belonged to a longer earlier version: no orphans.
        await self.store.delete_doc(doc_id, from_index=len(points))

    # ---- documents -------------------------------------------------------------------------------------------

    async def get(self, doc_id: str) -> StoredDoc:
        self._check_ready()
        points = sorted(await self.store.scroll_doc(doc_id), key=lambda p: int(p.payload.get(CHUNK_INDEX, 0)))
        # No chunk 0: a first write that never finished (chunk 0 is written last), not a document.
        if not points or int(points[0].payload.get(CHUNK_INDEX, -1)) != 0:
            raise NotFound(f"document {doc_id!r} not found")
        first = points[0].payload
        return StoredDoc(
            doc_id, first.get(DOC_TEXT, ""), first.get(METADATA) or {}, first.get("content_hash", ""), points
        )

    async def delete(self, doc_id: str) -> int:
        """Delete wins: every ingest of `doc_id` received before this call is fenced and writes nothing, so a
        document deleted while its ingest is still running never comes back (see the README)."""
        self._check_ready()
        async with self._write_lock:
            fenced = self._fences.fence(doc_id)
            n = await self.store.count(doc_id)
            if n == 0 and not fenced:
                raise NotFound(f"document {doc_id!r} not found")
            if n:
                await self.store.delete_doc(doc_id)
        if fenced:
            log.info("delete of %r fenced %d ingest(s) in flight", doc_id, fenced)
        self.metrics.deleted_chunks.inc(n)
        self.metrics.collection_points.set(await self.store.count())
        return n

    async def info(self) -> dict[str, Any]:
        meta = self.meta
        return {
            "collection": self.settings.collection,
            "engine": self.store.engine,
            "points": await self.store.count() if self._ready else 0,
            "embedder_model": meta.model if meta else "",
            "embedder_revision": meta.revision if meta else "",
            "dimension": meta.dimension if meta else 0,
            "default_mode": self.settings.search_mode,
        }


def _deleted(plan: _Plan) -> UpsertOutcome:
    return UpsertOutcome(
        plan.doc.id, "failed", 0, plan.hash, f"document {plan.doc.id!r} was deleted while being ingested; nothing kept"
    )
