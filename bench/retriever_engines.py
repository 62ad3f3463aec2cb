"""Embedded engines for the retriever: qdrant-edge-py vs qdrant-client local mode — durability and speed, one run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ragline_retriever.store import CollectionMeta, PointIn, SearchQuery, Sidecar, Sparse, Store
from ragline_retriever.store_client import ClientStore
from ragline_retriever.store_qdrant_edge import EdgeStore

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "retriever_engines.json"
DIM = 384
BATCH = 256
WORDS = "tide moon sea ship keeper light storm harbour rope sail anchor wave wind coast rock fog bell lamp".split()


def make_store(engine: str, root: Path) -> Store:
    if engine == "edge":
        return EdgeStore(root / "edge", Sidecar(root / "edge.meta.json"), threads=1)
    return ClientStore("bench", path=str(root / "local"), sidecar=Sidecar(root / "local.meta.json"))


def points(start: int, n: int, rng: np.random.Generator) -> list[PointIn]:
    """Random unit vectors (the engines do not care what the vectors mean) with small BM25-like sparse parts."""
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = []
    for j, v in enumerate(vecs.tolist()):
        i = start + j
        idx = sorted({int(x) for x in rng.integers(0, 5000, 12)})
        text = " ".join(WORDS[k % len(WORDS)] for k in idx)
        payload = {"doc_id": f"d{i // 4}", "chunk_index": i % 4, "text": text, "start": 0, "end": len(text),
                   "metadata": {"n": i % 100}}  # fmt: skip
        out.append(PointIn(str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))), v, Sparse(idx, [1.0] * len(idx)), payload))
    return out


async def open_new(engine: str, root: Path) -> Store:
    store = make_store(engine, root)
    if await store.open() is None:
        await store.create(CollectionMeta(DIM, "bench", "0"))
    return store


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def speed(engine: str, n: int, queries: int) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    root = Path(tempfile.mkdtemp(prefix=f"engines-{engine}-"))
    try:
        store = await open_new(engine, root)
        started = time.perf_counter()
        for s in range(0, n, BATCH):
            await store.upsert(points(s, min(BATCH, n - s), rng))
        ingest = time.perf_counter() - started
        qv = rng.standard_normal((queries, DIM)).astype(np.float32)
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)

        async def search_all(hybrid: bool) -> dict[str, float]:
            lat = []
            for q in qv.tolist():
                sparse = Sparse([1, 2, 3], [1.0, 1.0, 1.0]) if hybrid else None
                t = time.perf_counter()
                await store.search(SearchQuery(q, sparse, 10, [], 100, 60))
                lat.append(time.perf_counter() - t)
            return {"p50_ms": round(pct(lat, 50) * 1000, 2), "p99_ms": round(pct(lat, 99) * 1000, 2)}

        out: dict[str, Any] = {"points": await store.count(), "ingest_points_per_s": round(n / ingest, 1)}
        out["dense_search"] = await search_all(False)
        out["hybrid_search"] = await search_all(True)
        if isinstance(store, EdgeStore):
            t = time.perf_counter()
            await store.optimize()
            out["optimize_seconds"] = round(time.perf_counter() - t, 2)
            out["dense_search_after_optimize"] = await search_all(False)
            out["hybrid_search_after_optimize"] = await search_all(True)
        await store.close()
        out["disk_mb"] = round(sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20, 1)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def child(engine: str, root: Path, n: int) -> None:
    """Writes batches and reports each acknowledged one on stdout; the parent kills it with SIGKILL mid-way."""
    store = await open_new(engine, root)
    rng = np.random.default_rng(1)
    for s in range(0, n, BATCH):
        await store.upsert(points(s, BATCH, rng))
        print(s + BATCH, flush=True)
    await asyncio.sleep(3600)


async def durability(engine: str, n: int, kill_after: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"durability-{engine}-"))
    try:
        proc = subprocess.Popen(  # noqa: S603 - this script, fixed arguments
            [sys.executable, __file__, "--child", engine, str(root), str(n)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        acked = 0
        for line in proc.stdout:
            acked = int(line)
            if acked >= kill_after:
                break
        proc.send_signal(signal.SIGKILL)  # mid-stream: the next batch may be half written
        proc.wait()
        store = make_store(engine, root)
        t = time.perf_counter()
        if await store.open() is None:
            return {"acknowledged": acked, "recovered": 0, "lost": acked, "error": "collection missing after restart"}
        recovered = await store.count()
        reopen = time.perf_counter() - t
        await store.close()
        return {"acknowledged": acked, "recovered": recovered, "lost": max(0, acked - recovered),
                "reopen_seconds": round(reopen, 2)}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, nargs="+", default=[10_000], help="collection sizes (100000 is slow)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--engines", nargs="+", default=["edge", "local"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        await child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return
    result: dict[str, Any] = {
        "bench": "retriever_engines",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "vectors": f"random unit vectors, dim {DIM}, with 12-term sparse vectors; batches of {BATCH}",
        "speed": {},
        "durability": {},
    }
    for engine in args.engines:
        result["durability"][engine] = await durability(engine, 100_000, 5_000)
        print(engine, "durability", result["durability"][engine], flush=True)
        for n in args.points:
            result["speed"].setdefault(engine, {})[str(n)] = await speed(engine, n, args.queries)
            print(engine, n, result["speed"][engine][str(n)], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
