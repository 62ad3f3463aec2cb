"""Retrieval quality of the retriever service, dense vs hybrid: recall@5, recall@10 and MRR on real text.

The labeled set is built from text that was not written for it: the sections of the Python language
reference shipped with every CPython (pydoc_data.topics). Each section's heading is the query and the
section body (heading removed) is the one relevant document. Module docstrings of the standard library
are ingested as distractors. Both are read from this machine; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import re
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from ragline.retriever.v1 import retriever_pb2 as pb
from ragline.retriever.v1 import retriever_pb2_grpc
from ragline_common.testing import running
from ragline_embedder.__main__ import build as build_embedder
from ragline_embedder.settings import EmbedderSettings
from ragline_retriever.__main__ import build
from ragline_retriever.settings import RetrieverSettings

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "eval_retrieval.json"
_UNDERLINE = re.compile(r"([*=\-~^])\1{2,}")


def reference_sections() -> list[tuple[str, str, str]]:
    """(doc id, heading, body) for every uniquely titled section of the language reference."""
    from pydoc_data.topics import topics

    found: dict[str, tuple[str, str, str]] = {}
    counts: dict[str, int] = {}
    for name in sorted(topics):
        lines = topics[name].split("\n")
        heads = [
            i
            for i in range(len(lines) - 1)
            if lines[i].strip()
            and _UNDERLINE.fullmatch(lines[i + 1].strip())
            and len(lines[i + 1].strip()) >= len(lines[i].strip()) - 1
        ]
        for n, i in enumerate(heads):
            end = heads[n + 1] if n + 1 < len(heads) else len(lines)
            heading = lines[i].strip()
            body = "\n".join(lines[i + 2 : end]).strip()
            if len(body) < 200:
                continue
            counts[heading] = counts.get(heading, 0) + 1
            # The same section is repeated in several topics: keep its first copy only.
            found.setdefault(heading, (f"ref:{name}:{n}", heading, body))
    return list(found.values())


def stdlib_docstrings(limit: int) -> list[tuple[str, str]]:
    """(doc id, text) distractors: module docstrings of the standard library, read with ast (nothing imported)."""
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc and len(doc) >= 300:
            out.append((f"stdlib:{path.stem}", doc))
    return out[:limit]


def score(ranked: list[list[str]], targets: list[str]) -> dict[str, float]:
    n = len(targets)
    r5 = sum(t in r[:5] for r, t in zip(ranked, targets, strict=True)) / n
    r10 = sum(t in r[:10] for r, t in zip(ranked, targets, strict=True)) / n
    mrr = sum(1 / (r.index(t) + 1) if t in r[:10] else 0.0 for r, t in zip(ranked, targets, strict=True)) / n
    return {"recall@5": round(r5, 4), "recall@10": round(r10, 4), "mrr@10": round(mrr, 4)}


async def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sections = reference_sections()
    distractors = stdlib_docstrings(args.distractors)
    docs = [pb.Document(id=i, text=body) for i, _, body in sections] + [
        pb.Document(id=i, text=t) for i, t in distractors
    ]
    with tempfile.TemporaryDirectory(prefix="eval-retrieval-") as data:
        emb_settings = EmbedderSettings(http_port=0, grpc_port=0, threads=args.threads)
        async with running(build_embedder(emb_settings)) as emb:
            settings = RetrieverSettings(
                embedder_addr=f"127.0.0.1:{emb.grpc_port}",
                http_port=0,
                grpc_port=0,
                data_dir=data,
                threads=1,
                # Quality, not speed, is measured here: a busy shared machine must not fail the ingest.
                embedder_timeout_seconds=600,
            )
            async with running(build(settings)) as svc, grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}") as ch:
                stub = retriever_pb2_grpc.RetrieverServiceStub(ch)
                started = time.perf_counter()
                chunks = 0
                for i in range(0, len(docs), 32):
                    reply = await stub.Upsert(pb.UpsertRequest(documents=docs[i : i + 32]), timeout=600)
                    assert all(r.status == pb.UPSERT_STATUS_CREATED for r in reply.results), reply
                    chunks += sum(r.chunks for r in reply.results)
                ingest = time.perf_counter() - started
                out: dict[str, Any] = {
                    "bench": "eval_retrieval",
                    "dataset": "Python language reference sections (pydoc_data.topics): query = section heading, "
                    "relevant = that section's body (heading removed); stdlib module docstrings as distractors",
                    "queries": len(sections),
                    "documents": len(docs),
                    "chunks": chunks,
                    "chunking": {"tokens": settings.chunk_tokens, "overlap": settings.chunk_overlap_tokens},
                    "ingest_seconds": round(ingest, 1),
                    "rrf_k": settings.rrf_k,
                    "hybrid_candidates": settings.hybrid_candidates,
                }
                targets = [i for i, _, _ in sections]
                for name, mode in (("dense", pb.SEARCH_MODE_DENSE), ("hybrid", pb.SEARCH_MODE_HYBRID)):
                    ranked = []
                    for _, heading, _ in sections:
                        reply = await stub.Search(pb.SearchRequest(query=heading, k=10, mode=mode), timeout=60)
                        ranked.append([h.doc_id for h in reply.hits])
                    out[name] = score(ranked, targets)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distractors", type=int, default=400, help="stdlib module docstrings added as noise")
    parser.add_argument("--threads", type=int, default=2, help="embedder threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = asyncio.run(evaluate(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
