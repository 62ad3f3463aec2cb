"""The vector store seam: a small Store protocol, neutral filter/point types, and the engine factory."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

DENSE = "dense"
SPARSE = "bm25"
# Payload fields every chunk carries; user metadata lives under METADATA so filters cannot hit ours.
DOC_ID = "doc_id"
CHUNK_INDEX = "chunk_index"
METADATA = "metadata"
DOC_TEXT = "doc_text"  # the whole source text, on chunk 0 only (Get returns it; search never does)


@dataclass(frozen=True)
class FieldMatch:
    """One filter condition on a payload path; all conditions of a search must hold."""

    key: str
    kind: Literal["equals", "any_of", "range", "date_range"]
    value: Any  # scalar for equals, list for any_of, {gt,gte,lt,lte} for the ranges


@dataclass(frozen=True)
class Sparse:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class PointIn:
    id: str
    dense: list[float]
    sparse: Sparse
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    id: str
    payload: dict[str, Any]
    score: float = 0.0


@dataclass(frozen=True)
class CollectionMeta:
    """What the vectors in a collection were made with; a different embedder must not write into it."""

    dimension: int
    model: str
    revision: str

    def mismatch(self, other: CollectionMeta) -> str | None:
        for name in ("dimension", "model", "revision"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"collection holds vectors with {name} {mine!r} but the embedder reports {theirs!r}"
        return None


@dataclass(frozen=True)
class SearchQuery:
    dense: list[float]
    sparse: Sparse | None  # None = dense only
    k: int
    conditions: list[FieldMatch]
    candidates: int
    rrf_k: int


class Store(Protocol):
    engine: str

    async def open(self) -> CollectionMeta | None:
        """Open the collection if it exists and return what it was made with (None = no collection yet)."""

    async def create(self, meta: CollectionMeta) -> None: ...

    async def upsert(self, points: list[PointIn]) -> None:
        """Returns once the points are durable (WAL or server acknowledged)."""

    async def delete_doc(self, doc_id: str, from_index: int = 0) -> None:
        """Delete the chunks of `doc_id` whose index is >= from_index."""

    async def count(self, doc_id: str | None = None) -> int: ...

    async def retrieve(self, ids: list[str]) -> list[StoredPoint]: ...

    async def scroll_doc(self, doc_id: str) -> list[StoredPoint]: ...

    async def search(self, query: SearchQuery) -> list[StoredPoint]: ...

    async def optimize(self) -> bool:
        """Build indexes now if the engine does not by itself; True when anything changed."""

    async def close(self) -> None: ...


class Sidecar:
    """Collection metadata for embedded engines, written atomically next to the data."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> CollectionMeta | None:
        if not self.path.exists():
            return None
        raw = json.loads(self.path.read_text())
        return CollectionMeta(int(raw["dimension"]), str(raw["model"]), str(raw["revision"]))

    def write(self, meta: CollectionMeta) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(asdict(meta), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


class SparseEncoder(Protocol):
    """Text to the sparse (BM25) vector the hybrid search fuses with the dense one."""

    def encode_query(self, text: str) -> Sparse | None: ...

    def encode_document(self, text: str) -> Sparse: ...


class EdgeBm25:
    """The Qdrant edge engine's BM25, whatever store holds the vectors."""

    def __init__(self) -> None:
        import qdrant_edge as qe

        self._bm25 = qe.Bm25()

    def encode_query(self, text: str) -> Sparse | None:
        vec = self._bm25.embed_query(text)
        return Sparse(list(vec.indices), list(vec.values)) if vec.indices else None

    def encode_document(self, text: str) -> Sparse:
        vec = self._bm25.embed_document(text)
        return Sparse(list(vec.indices), list(vec.values))


def open_sparse_encoder() -> SparseEncoder:
    return EdgeBm25()


def open_store(
    *,
    qdrant_url: str,
    api_key: str | None,
    timeout: int,
    data_dir: str,
    engine: str,
    collection: str,
    threads: int,
) -> Store:
    """Server mode through qdrant-client when a URL is set; otherwise an embedded store under data_dir."""
    if qdrant_url:
        from ragline_retriever.store_client import ClientStore

        return ClientStore(collection, url=qdrant_url, api_key=api_key, timeout=timeout)
    root = Path(data_dir)
    if engine == "local":
        from ragline_retriever.store_client import ClientStore

        return ClientStore(
            collection, path=str(root / "local"), sidecar=Sidecar(root / f"{collection}.local.meta.json")
        )
    from ragline_retriever.store_qdrant_edge import EdgeStore

    return EdgeStore(root / "edge" / collection, Sidecar(root / f"{collection}.edge.meta.json"), threads=threads)
