"""Build the benchmark's collection once with the services' own cores; both systems then get a copy of it."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from ragline_common import context
from ragline_common.health import Readiness
from ragline_common.logs import configure_logging
from ragline_common.settings import load_settings
from ragline_embedder.core import Embedder
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.settings import EmbedderSettings
from ragline_retriever.chunking import Chunker
from ragline_retriever.core import COLLECTION, DocIn, Retriever
from ragline_retriever.metrics import RetrieverMetrics
from ragline_retriever.settings import RetrieverSettings
from ragline_retriever.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_inprocess import InProcessEmbedder  # noqa: E402

log = logging.getLogger("e2e_ingest")
BATCH = 16  # documents per upsert, as a client would send them


async def ingest(docs_path: Path, threads: int) -> dict[str, object]:
    """Reads RETRIEVER_* / EMBEDDER_* like the services do; threads only speed this one-off step up."""
    docs = json.loads(docs_path.read_text())
    emb_settings = load_settings(EmbedderSettings)
    ret_settings = load_settings(RetrieverSettings)
    registry = CollectorRegistry()
    embedder = Embedder(emb_settings, EmbedderMetrics(registry), threads)
    await asyncio.to_thread(embedder.load)
    await embedder.start()
    readiness = Readiness([])
    readiness.require(COLLECTION, "waiting for the embedder's model info")
    store = open_store(
        qdrant_url="",
        api_key=None,
        timeout=10,
        data_dir=ret_settings.data_dir,
        engine="edge",
        collection=ret_settings.collection,
        threads=threads,
    )
    chunker = Chunker(ret_settings.chunk_tokens, ret_settings.chunk_overlap_tokens)
    retriever = Retriever(
        ret_settings, store, InProcessEmbedder(embedder), chunker, RetrieverMetrics(registry), readiness
    )  # type: ignore[arg-type]
    connect = asyncio.create_task(retriever.connect())
    while not readiness.ready:
        await asyncio.sleep(0.05)
    started = time.perf_counter()
    statuses: dict[str, int] = {}
    chunks = 0
    for i in range(0, len(docs), BATCH):
        context.set_deadline_in(300)  # per upsert, as each request to the service would bring its own
        outcomes = await retriever.upsert([DocIn(d["id"], d["text"]) for d in docs[i : i + BATCH]])
        for o in outcomes:
            statuses[o.status] = statuses.get(o.status, 0) + 1
            chunks += o.chunks
            if o.status == "failed":
                raise RuntimeError(f"ingesting {o.id} failed: {o.error}")
    seconds = time.perf_counter() - started
    points = await store.count()
    connect.cancel()
    await asyncio.gather(connect, return_exceptions=True)
    await retriever.close()
    await embedder.close()
    return {"documents": len(docs), "chunks": chunks, "points": points, "statuses": statuses, "seconds": seconds}


def main() -> None:
    configure_logging("e2e-ingest", "warning")
    docs_path, threads = Path(sys.argv[1]), int(sys.argv[2])
    print(json.dumps(asyncio.run(ingest(docs_path, threads))))  # noqa: T201 - the parent reads this line


if __name__ == "__main__":
    main()
