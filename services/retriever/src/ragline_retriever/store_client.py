"""Store through qdrant-client: a Qdrant server over gRPC, or qdrant-client's local mode on disk."""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import grpc
import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.common.version_check import is_compatible
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ragline_common.errors import InvalidInput, NotFound, Overloaded, RaglineError, TooLarge, Unavailable
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

_SCROLL_PAGE = 256
logger = logging.getLogger(__name__)

# What the server says about a request decides whether retrying it can help: the caller's own mistakes
# (bad filter, wrong type) are not retried; everything else (auth, internal, unknown) is the store's fault.
_BY_GRPC_CODE: dict[grpc.StatusCode, type[RaglineError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidInput,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
}
_BY_HTTP_STATUS: dict[int, type[RaglineError]] = {
    400: InvalidInput,
    404: NotFound,
    409: InvalidInput,
    413: TooLarge,
    422: InvalidInput,
    429: Overloaded,
}


def store_error(exc: BaseException) -> RaglineError | None:
    """The ragline error a qdrant-client failure stands for; None when it is not a store failure at all."""
    if isinstance(exc, ResourceExhaustedResponse):
        return Overloaded(f"Qdrant is overloaded: {exc}"[:300], retry_after=float(exc.retry_after_s))
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
        cls = _BY_GRPC_CODE.get(code)
        if cls is None:  # UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED, INTERNAL…: retry later or fix the store
            return Unavailable(f"Qdrant call failed: {code.name}: {details}"[:300])
        return cls(f"Qdrant refused the request: {code.name}: {details}"[:300])
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        text = exc.content.decode(errors="replace")
        cls = _BY_HTTP_STATUS.get(status, Unavailable)
        return cls(f"Qdrant answered HTTP {status}: {text}"[:300])
    if isinstance(exc, ResponseHandlingException):
        source = exc.source  # the transport error (httpx.ConnectError, a timeout) or a body it could not parse
        return Unavailable(f"Qdrant is unavailable: {type(source).__name__}: {source}"[:300])
    if isinstance(exc, httpx.HTTPError | OSError | TimeoutError):
        return Unavailable(f"Qdrant is unavailable: {type(exc).__name__}: {exc}"[:300])
    return None


def to_filter(conditions: list[FieldMatch], doc_id: str | None = None, from_index: int = 0) -> models.Filter | None:
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
        self.server_version = ""
        if url:
            # The client's own version check is a blocking REST GET in a thread that only warns; open() asks over
            # the gRPC channel every other call uses, within the same timeout, and logs the verdict.
            self.client = AsyncQdrantClient(
                url=url, api_key=api_key, prefer_grpc=True, timeout=timeout, check_compatibility=False
            )
        else:
            self.client = AsyncQdrantClient(path=path)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:
            err = store_error(exc)
            if err is None:
                raise
            raise err from None

    async def check_version(self) -> bool:
        """Ask the server its version; False (and a warning) when qdrant-client does not promise to speak it."""
        info = await self._call(self.client.info())
        self.server_version = str(info.version)
        client_version = importlib.metadata.version("qdrant-client")
        if is_compatible(client_version, self.server_version):
            return True
        logger.warning(
            "qdrant-client %s is incompatible with Qdrant server %s: the major versions must match and the minor "
            "versions differ by at most 1; pin the server image to a release next to the client",
            client_version,
            self.server_version or "(no version reported)",
        )
        return False

    async def open(self) -> CollectionMeta | None:
        if self.engine == "qdrant-server" and not self.server_version:
            await self.check_version()
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
