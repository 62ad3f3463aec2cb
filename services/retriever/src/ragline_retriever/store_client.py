"""Store through qdrant-client: a Qdrant server over gRPC, or qdrant-client's local mode on disk."""

from __future__ import annotations

from typing import Any

from qdrant_client import AsyncQdrantClient, models

from ragline_common.errors import Unavailable
from ragline_retriever.store import (
    CHUNK_INDEX,
    DENSE,
    DOC_ID,
    DOC_TEXT,
    SPARSE,
    CollectionMeta,
    Condition,
    PointIn,
    SearchQuery,
    Sidecar,
    StoredPoint,
)

_SCROLL_PAGE = 256


def to_filter(conditions: list[Condition], doc_id: str | None = None, from_index: int = 0) -> models.Filter | None:
    must: list[Any] = []
    if doc_id is not None:
        must.append(models.FieldCondition(key=DOC_ID, match=models.MatchValue(value=doc_id)))
    if from_index > 0:
        must.append(models.FieldCondition(key=CHUNK_INDEX, range=models.Range(gte=from_index)))
    for c in conditions:
        if c.kind == "equals":
            must.append(models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value)))
        elif c.kind == "any_of":
            must.append(models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.value))))
        elif c.kind == "range":
            must.append(models.FieldCondition(key=c.key, range=models.Range(**c.value)))
        else:
            must.append(models.FieldCondition(key=c.key, range=models.DatetimeRange(**c.value)))
    return models.Filter(must=must) if must else None


class ClientStore:
    def __init__(
        self,
        collection: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: int = 10,
        path: str | None = None,
        sidecar: Sidecar | None = None,
    ) -> None:
        self.collection = collection
        self.engine = "qdrant-server" if url else "qdrant-client-local"
        self.sidecar = sidecar
        if url:
            self.client = AsyncQdrantClient(url=url, api_key=api_key, prefer_grpc=True, timeout=timeout)
        else:
            self.client = AsyncQdrantClient(path=path)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"Qdrant is unavailable: {exc}") from None
        except Exception as exc:
            # qdrant-client raises transport errors as its own types (gRPC AioRpcError, httpx errors).
            if type(exc).__module__.startswith(("grpc", "httpx", "qdrant_client.http.exceptions")):
                raise Unavailable(f"Qdrant call failed: {type(exc).__name__}: {exc}"[:300]) from None
            raise

    async def open(self) -> CollectionMeta | None:
        if not await self._call(self.client.collection_exists(self.collection)):
            return None
        if self.sidecar is not None:
            return self.sidecar.read()
        info = await self._call(self.client.get_collection(self.collection))
        raw = info.config.metadata or {}
        vectors = info.config.params.vectors
        dim = vectors[DENSE].size if isinstance(vectors, dict) and DENSE in vectors else 0
        return CollectionMeta(int(dim), str(raw.get("embedder_model", "")), str(raw.get("embedder_revision", "")))

    async def create(self, meta: CollectionMeta) -> None:
        await self._call(
            self.client.create_collection(
                self.collection,
                vectors_config={DENSE: models.VectorParams(size=meta.dimension, distance=models.Distance.COSINE)},
                sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                metadata={"embedder_model": meta.model, "embedder_revision": meta.revision},
            )
        )
        for field, schema in (
            (DOC_ID, models.PayloadSchemaType.KEYWORD),
            (CHUNK_INDEX, models.PayloadSchemaType.INTEGER),
        ):
            await self._call(self.client.create_payload_index(self.collection, field, schema, wait=True))
        if self.sidecar is not None:
            self.sidecar.write(meta)

    async def upsert(self, points: list[PointIn]) -> None:
        structs = [
            models.PointStruct(
                id=p.id,
                vector={
                    DENSE: p.dense,
                    SPARSE: models.SparseVector(indices=p.sparse.indices, values=p.sparse.values),
                },
                payload=p.payload,
            )
            for p in points
        ]
        await self._call(self.client.upsert(self.collection, structs, wait=True))

    async def delete_doc(self, doc_id: str, from_index: int = 0) -> None:
        flt = to_filter([], doc_id, from_index)
        assert flt is not None
        await self._call(self.client.delete(self.collection, models.FilterSelector(filter=flt), wait=True))

    async def count(self, doc_id: str | None = None) -> int:
        flt = to_filter([], doc_id) if doc_id is not None else None
        result = await self._call(self.client.count(self.collection, count_filter=flt, exact=True))
        return int(result.count)

    async def retrieve(self, ids: list[str]) -> list[StoredPoint]:
        records = await self._call(self.client.retrieve(self.collection, ids, with_payload=True))
        return [StoredPoint(str(r.id), r.payload or {}) for r in records]

    async def scroll_doc(self, doc_id: str) -> list[StoredPoint]:
        out: list[StoredPoint] = []
        offset: Any = None
        while True:
            records, offset = await self._call(
                self.client.scroll(
                    self.collection, to_filter([], doc_id), limit=_SCROLL_PAGE, offset=offset, with_payload=True
                )
            )
            out.extend(StoredPoint(str(r.id), r.payload or {}) for r in records)
            if offset is None:
                return out

    async def search(self, q: SearchQuery) -> list[StoredPoint]:
        flt = to_filter(q.conditions)
        no_doc_text = models.PayloadSelectorExclude(exclude=[DOC_TEXT])
        if q.sparse is None:
            result = await self._call(
                self.client.query_points(
                    self.collection, query=q.dense, using=DENSE, limit=q.k, query_filter=flt, with_payload=no_doc_text
                )
            )
        else:
            sparse = models.SparseVector(indices=q.sparse.indices, values=q.sparse.values)
            result = await self._call(
                self.client.query_points(
                    self.collection,
                    prefetch=[
                        models.Prefetch(query=q.dense, using=DENSE, limit=q.candidates, filter=flt),
                        models.Prefetch(query=sparse, using=SPARSE, limit=q.candidates, filter=flt),
                    ],
                    query=models.RrfQuery(rrf=models.Rrf(k=q.rrf_k)),
                    limit=q.k,
                    with_payload=no_doc_text,
                )
            )
        return [StoredPoint(str(p.id), p.payload or {}, float(p.score)) for p in result.points]

    async def optimize(self) -> bool:
        return False  # a Qdrant server optimizes in the background; local mode has no index to build

    async def close(self) -> None:
        await self.client.close()
