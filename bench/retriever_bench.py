"""Retriever service (separate process, gRPC) against qdrant-client and qdrant-edge called directly, same run.

Scale uses precomputed random unit vectors (the engines do not care what vectors mean): the collection is
preloaded straight into the service's embedded store, then the service is started on it. Search queries
through the service are real sentences, embedded by a real embedder process. Ingest through the service
is measured separately on real text (it is bound by embedding on CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import qdrant_edge as qe
from qdrant_client import AsyncQdrantClient

from ragline.embedder.v1 import embedder_pb2 as epb
from ragline.embedder.v1 import embedder_pb2_grpc
from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_retriever.chunking import chunk_id
from ragline_retriever.store import CollectionMeta, PointIn, SearchQuery, Sidecar, Sparse, Store
from ragline_retriever.store_client import ClientStore
from ragline_retriever.store_qdrant_edge import EdgeStore

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "retriever_bench.json"
BATCH = 256


def sentences(n: int) -> list[str]:
    """Real English sentences from files every Debian machine has (license texts), in a fixed order."""
    lines: dict[str, None] = {}
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
            for line in fh:
                line = " ".join(line.split())
                if 40 <= len(line) <= 200 and re.search(r"[a-z]{3}", line):
                    lines[line] = None
    out = list(lines)
    return (out * (n // max(1, len(out)) + 1))[:n]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", module], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_ready(proc: subprocess.Popen[bytes], http_port: int, timeout: float = 300) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError("not ready in time")


async def load(fn: Callable[[int], Awaitable[Any]], clients: int, per_client: int) -> dict[str, float]:
    """`clients` concurrent loops of `per_client` calls each; latency percentiles and throughput."""
    lat: list[float] = []

    async def worker(c: int) -> None:
        for i in range(per_client):
            t = time.perf_counter()
            await fn(c * per_client + i)
            lat.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(lat),
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
        "throughput_rps": round(len(lat) / wall, 1),
    }


def synthetic_points(n: int, dim: int, rng: np.random.Generator, bm25: qe.Bm25, texts: list[str]) -> list[PointIn]:
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out = []
    for i, v in enumerate(vecs.tolist()):
        text = texts[i % len(texts)]
        sv = bm25.embed_document(text)
        doc = f"syn{i // 4}"
        payload = {"doc_id": doc, "chunk_index": i % 4, "n_chunks": 4, "content_hash": "synthetic", "text": text,
                   "start": 0, "end": len(text), "metadata": {"n": i % 100}}  # fmt: skip
        out.append(PointIn(chunk_id(doc, i % 4), v, Sparse(list(sv.indices), list(sv.values)), payload))
    return out


async def fill(store: Store, points: list[PointIn]) -> float:
    started = time.perf_counter()
    for s in range(0, len(points), BATCH):
        await store.upsert(points[s : s + BATCH])
    return len(points) / (time.perf_counter() - started)


async def direct(store: Store, qvecs: np.ndarray, qsparse: list[Sparse], queries: int) -> dict[str, Any]:
    def call(hybrid: bool) -> Callable[[int], Awaitable[Any]]:
        async def one(i: int) -> Any:
            j = i % len(qvecs)
            return await store.search(SearchQuery(qvecs[j].tolist(), qsparse[j] if hybrid else None, 10, [], 100, 60))

        return one

    return {
        "dense_1": await load(call(False), 1, queries),
        "hybrid_1": await load(call(True), 1, queries),
        "hybrid_32": await load(call(True), 32, max(1, queries // 16)),
    }


async def scale(n: int, info: epb.InfoResponse, emb_port: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    bm25 = qe.Bm25()
    texts = sentences(2000)
    points = synthetic_points(n, info.dimension, rng, bm25, texts)
    queries = sentences(4000)[2000:]
    qvecs = rng.standard_normal((len(queries), info.dimension)).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    qsparse = [Sparse(list(v.indices), list(v.values)) for v in (bm25.embed_query(q) for q in queries)]
    out: dict[str, Any] = {"chunks": n}

    # Baseline 1: qdrant-client called directly, in-memory local mode (its on-disk mode commits every point
    # to sqlite: see retriever_engines.json for that ingest rate).
    client = ClientStore("bench", path=str(work / "unused"), sidecar=Sidecar(work / f"mem{n}.json"))
    client.client = AsyncQdrantClient(location=":memory:")
    await client.create(CollectionMeta(info.dimension, info.model, info.revision))
    out["qdrant_client_memory"] = {"ingest_chunks_per_s": round(await fill(client, points), 1)}
    out["qdrant_client_memory"].update(await direct(client, qvecs, qsparse, args.client_queries))
    await client.close()

    # Baseline 2: the service's own engine (qdrant-edge) called directly, then handed to the service as its data
    # (optimized, as RETRIEVER_OPTIMIZE_ON_START=true leaves it).
    data = work / f"data{n}"
    edge = EdgeStore(data / "edge" / "ragline", Sidecar(data / "ragline.edge.meta.json"), threads=1)
    await edge.create(CollectionMeta(info.dimension, info.model, info.revision))
    out["qdrant_edge_direct"] = {"ingest_chunks_per_s": round(await fill(edge, points), 1)}
    unindexed = await direct(edge, qvecs, qsparse, args.queries)
    out["qdrant_edge_direct"]["before_optimize"] = {k: unindexed[k] for k in ("dense_1", "hybrid_1")}
    t = time.perf_counter()
    await edge.optimize()
    out["qdrant_edge_direct"]["optimize_seconds"] = round(time.perf_counter() - t, 1)
    out["qdrant_edge_direct"].update(await direct(edge, qvecs, qsparse, args.queries))
    await edge.close()

    http_port, grpc_port = free_port(), free_port()
    env = {"RETRIEVER_EMBEDDER_ADDR": f"127.0.0.1:{emb_port}", "RETRIEVER_DATA_DIR": str(data),
           "RETRIEVER_HTTP_PORT": str(http_port), "RETRIEVER_GRPC_PORT": str(grpc_port), "RETRIEVER_THREADS": "1",
           "RETRIEVER_LOG_LEVEL": "warning"}  # fmt: skip
    proc = spawn("ragline_retriever", env, work / "retriever.log")
    try:
        await wait_ready(proc, http_port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = retriever_pb2_grpc.RetrieverServiceStub(channel)

            inside: dict[int, list[tuple[float, float]]] = {}

            def call(mode: int) -> Callable[[int], Awaitable[Any]]:
                async def one(i: int) -> Any:
                    req = pb.SearchRequest(query=queries[i % len(queries)], k=10, mode=mode)
                    reply = await stub.Search(req, timeout=60)
                    inside.setdefault(mode, []).append((reply.timings.embed_seconds, reply.timings.search_seconds))
                    return reply

                return one

            svc: dict[str, Any] = {
                "dense_1": await load(call(pb.SEARCH_MODE_DENSE), 1, args.queries),
                "hybrid_1": await load(call(pb.SEARCH_MODE_HYBRID), 1, args.queries),
                "hybrid_32": await load(call(pb.SEARCH_MODE_HYBRID), 32, max(1, args.queries // 16)),
            }
            for mode, name in ((pb.SEARCH_MODE_DENSE, "dense"), (pb.SEARCH_MODE_HYBRID, "hybrid")):
                svc[f"{name}_server_side_p50_ms"] = {
                    "embed": round(pct([e for e, _ in inside[mode]], 50) * 1000, 2),
                    "store": round(pct([s for _, s in inside[mode]], 50) * 1000, 2),
                }
            docs = [
                pb.Document(id=f"real{i}", text=" ".join(texts[i * 8 : i * 8 + 8])) for i in range(args.ingest_docs)
            ]
            started = time.perf_counter()
            chunks = 0
            for s in range(0, len(docs), 32):
                reply = await stub.Upsert(pb.UpsertRequest(documents=docs[s : s + 32]), timeout=600)
                chunks += sum(r.chunks for r in reply.results)
            svc["ingest_real_text"] = {"documents": len(docs), "chunks": chunks,
                                       "chunks_per_s": round(chunks / (time.perf_counter() - started), 1)}  # fmt: skip
            out["service"] = svc
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000], help="collection sizes; add 100000")
    parser.add_argument("--queries", type=int, default=200, help="sequential queries per case (32 clients: /16 each)")
    parser.add_argument("--client-queries", type=int, default=50, help="queries per case for the brute-force baseline")
    parser.add_argument("--ingest-docs", type=int, default=64, help="real-text documents ingested through the service")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="retriever-bench-"))
    emb_http, emb_grpc = free_port(), free_port()
    emb = spawn("ragline_embedder", {"EMBEDDER_HTTP_PORT": str(emb_http), "EMBEDDER_GRPC_PORT": str(emb_grpc),
                                     "EMBEDDER_THREADS": "1", "HF_HUB_OFFLINE": "1", "EMBEDDER_LOG_LEVEL": "warning"},
                work / "embedder.log")  # fmt: skip
    try:
        await wait_ready(emb, emb_http)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{emb_grpc}") as channel:
            estub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            info = await estub.Info(epb.InfoRequest(), timeout=10)
            qs = sentences(4000)[2000:]
            embed_only = await load(lambda i: estub.Embed(epb.EmbedRequest(texts=[qs[i]]), timeout=60), 1, args.queries)
        result: dict[str, Any] = {
            "bench": "retriever_bench",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
            "vectors": "precomputed random unit vectors (dim from the embedder) + BM25 of real sentences; "
            "service queries are real sentences embedded by a real embedder process (1 thread)",
            "embedder_embed_one_query": embed_only,
            "runs": [await scale(n, info, emb_grpc, work, args) for n in args.chunks],
        }
    finally:
        emb.terminate()
        emb.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
