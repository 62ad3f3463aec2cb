"""Embedded store on qdrant-edge-py: Qdrant's engine in process (segments, WAL, HNSW) on local disk."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from ragline_retriever.store import (
    CHUNK_INDEX,
    DENSE,
    DOC_ID,
    DOC_TEXT,
    SPARSE,
    CollectionMeta,
    FieldMatch,
    PointIn,
    SearchQuery,
    Sidecar,
    StoredPoint,
)

log = logging.getLogger(__name__)

_SCROLL_PAGE = 256


def to_filter(conditions: list[FieldMatch], doc_id: str | None = None, from_index: int = 0) -> qe.Filter | None:
    must: list[Any] = []
    if doc_id is not None:
        must.append(qe.FieldCondition(DOC_ID, match=qe.MatchValue(doc_id)))
    if from_index > 0:
        must.append(qe.FieldCondition(CHUNK_INDEX, range=qe.RangeFloat(gte=float(from_index))))
    for c in conditions:
        if c.kind == "equals":
            must.append(qe.FieldCondition(c.key, match=qe.MatchValue(c.value)))
        elif c.kind == "any_of":
            must.append(qe.FieldCondition(c.key, match=qe.MatchAny(list(c.value))))
        elif c.kind == "range":
            must.append(qe.FieldCondition(c.key, range=qe.RangeFloat(**c.value)))
        else:
            must.append(qe.FieldCondition(c.key, range=qe.RangeDateTime(**c.value)))
    return qe.Filter(must=must) if must else None


class EdgeStore:
    engine = "qdrant-edge"

    def __init__(self, path: Path, sidecar: Sidecar, *, threads: int) -> None:
        self.path = path
        self.sidecar = sidecar
        self.threads = threads
        self.shard: qe.EdgeShard | None = None
        # Writes run one at a time; searches run beside them.
        self._write_lock = threading.Lock()

    def _config(self, dimension: int) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            max_search_threads=self.threads,
        )

    @property
    def _shard(self) -> qe.EdgeShard:
        if self.shard is None:
            raise RuntimeError("the store is not open")
        return self.shard

    async def open(self) -> CollectionMeta | None:
        meta = self.sidecar.read()
        if meta is None or not (self.path / "edge_config.json").exists():
            return None
        self.shard = await asyncio.to_thread(qe.EdgeShard.load, str(self.path), None)
        return meta

    async def create(self, meta: CollectionMeta) -> None:
        def _create() -> qe.EdgeShard:
            if (self.path / "edge_config.json").exists():
                # Data without its metadata record (crash between the two writes): load, don't destroy.
                shard = qe.EdgeShard.load(str(self.path), self._config(meta.dimension))
            else:
                shard = qe.EdgeShard.create(str(self.path), self._config(meta.dimension))
            shard.update(qe.UpdateOperation.create_field_index(DOC_ID, qe.PayloadSchemaType.Keyword))
            shard.update(qe.UpdateOperation.create_field_index(CHUNK_INDEX, qe.PayloadSchemaType.Integer))
            return shard

        self.shard = await asyncio.to_thread(_create)
        self.sidecar.write(meta)

    def _write(self, op: qe.UpdateOperation) -> None:
        with self._write_lock:
            self._shard.update(op)

    async def upsert(self, points: list[PointIn]) -> None:
        pts = [
            qe.Point(
                p.id,
                {DENSE: p.dense, SPARSE: qe.SparseVector(p.sparse.indices, p.sparse.values)},
                p.payload,
            )
            for p in points
        ]
        await asyncio.to_thread(self._write, qe.UpdateOperation.upsert_points(pts))

    async def optimize(self) -> bool:
        """Merge segments and build HNSW. Edge has no background optimizer, and optimize() holds the GIL for
        its whole run (measured: a 10k x 384 build froze every Python thread for ~30 s on 2 cores), so the
        service calls it only before it reports ready (RETRIEVER_OPTIMIZE_ON_START), never while serving."""

        def _run() -> bool:
            with self._write_lock:
                return bool(self._shard.optimize())

        started = time.perf_counter()
        changed = await asyncio.to_thread(_run)
        log.info("optimized the embedded store in %.1fs (changed: %s)", time.perf_counter() - started, changed)
        return changed

    async def delete_doc(self, doc_id: str, from_index: int = 0) -> None:
        flt = to_filter([], doc_id, from_index)
        assert flt is not None
        await asyncio.to_thread(self._write, qe.UpdateOperation.delete_points_by_filter(flt))

    async def count(self, doc_id: str | None = None) -> int:
        flt = to_filter([], doc_id) if doc_id is not None else None
        return int(await asyncio.to_thread(self._shard.count, qe.CountRequest(exact=True, filter=flt)))

    async def retrieve(self, ids: list[str]) -> list[StoredPoint]:
        wanted: list[Any] = list(ids)
        records = await asyncio.to_thread(self._shard.retrieve, wanted, True, False)
        return [StoredPoint(str(r.id), r.payload or {}) for r in records]

    async def scroll_doc(self, doc_id: str) -> list[StoredPoint]:
        def _scroll() -> list[StoredPoint]:
            out: list[StoredPoint] = []
            offset: Any = None
            while True:
                records, offset = self._shard.scroll(
                    qe.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, filter=to_filter([], doc_id), with_payload=True)
                )
                out.extend(StoredPoint(str(r.id), r.payload or {}) for r in records)
                if offset is None:
                    return out

        return await asyncio.to_thread(_scroll)

    def _request(self, q: SearchQuery) -> qe.QueryRequest:
        flt = to_filter(q.conditions)
        no_doc_text = qe.PayloadSelector.Exclude([DOC_TEXT])
        if q.sparse is None:
            return qe.QueryRequest(
                limit=q.k, query=qe.Query.Nearest(q.dense, using=DENSE), filter=flt, with_payload=no_doc_text
            )
        sparse = qe.SparseVector(q.sparse.indices, q.sparse.values)
        return qe.QueryRequest(
            limit=q.k,
            prefetches=[
                qe.Prefetch(limit=q.candidates, query=qe.Query.Nearest(q.dense, using=DENSE), filter=flt),
                qe.Prefetch(limit=q.candidates, query=qe.Query.Nearest(sparse, using=SPARSE), filter=flt),
            ],
            query=qe.Fusion.Rrf(k=q.rrf_k),  # type: ignore[arg-type]  # the stub omits nested classes
            with_payload=no_doc_text,
        )

    async def search(self, query: SearchQuery) -> list[StoredPoint]:
        found = await asyncio.to_thread(self._shard.query, self._request(query))
        return [StoredPoint(str(p.id), p.payload or {}, float(p.score)) for p in found]

    async def close(self) -> None:
        if self.shard is not None:
            shard, self.shard = self.shard, None
            await asyncio.to_thread(shard.flush)
            await asyncio.to_thread(shard.close)
