"""Data safety: 8 clients ingest overlapping sets, the retriever is killed mid-way; a re-run leaves each chunk once."""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import httpx
import pytest

from ragline.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragline_cli.localstack import Stack
from ragline_retriever.chunking import Chunker, chunk_id
from ragline_retriever.settings import RetrieverSettings
from tests.reliability.conftest import CORPUS
from tests.reliability.report import record

pytestmark = pytest.mark.reliability

CLIENTS = 8
DOCS = 40
RETRYABLE = {429, 503, 504}


def documents() -> dict[str, str]:
    """40 distinct documents from slices of the corpus, 1,000 to 8,000 characters (1 to ~10 chunks)."""
    text = "\n\n".join(p.read_text(errors="replace") for p in sorted(CORPUS.rglob("*")) if p.is_file())
    rng = random.Random(7)  # noqa: S311 - test data
    docs = {}
    for i in range(DOCS):
        size = rng.randint(1_000, 8_000)
        start = rng.randrange(0, len(text) - size)
        docs[f"safety-{i:02d}"] = f"Document {i}.\n" + text[start : start + size]
    return docs


def client_sets(ids: list[str]) -> list[list[list[str]]]:
    """Per client: its batches of 1 or 2 ids; each client takes about half the documents, so sets overlap."""
    plans = []
    for c in range(CLIENTS):
        rng = random.Random(100 + c)  # noqa: S311 - test data
        mine = [d for d in ids if rng.random() < 0.5]
        rng.shuffle(mine)
        batches, i = [], 0
        while i < len(mine):
            n = rng.randint(1, 2)
            batches.append(mine[i : i + n])
            i += n
        plans.append(batches)
    return plans


async def ingest(
    api_url: str, docs: dict[str, str], batches: list[list[str]], *, retry_until: float | None, done: list[str]
) -> dict[str, int]:
    """One client's run; with `retry_until` it retries refusals and failures until then (the re-run must finish)."""
    counts: dict[str, int] = {"ok": 0, "failed": 0}
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0) as client:
        for batch in batches:
            body = {"documents": [{"id": d, "text": docs[d]} for d in batch]}
            while True:
                try:
                    reply = await client.post("/v1/documents", json=body)
                    status = reply.status_code
                    failed = status != 200 or any(r["status"] == "failed" for r in reply.json()["results"])
                except httpx.HTTPError:
                    status, failed = 0, True
                counts[f"status_{status}"] = counts.get(f"status_{status}", 0) + 1
                if not failed:
                    counts["ok"] += 1
                    done.extend(batch)
                    break
                assert status in RETRYABLE or status == 200 or status == 0, reply.text
                if retry_until is None or time.monotonic() > retry_until:
                    counts["failed"] += 1
                    break
                await asyncio.sleep(0.5)
    return counts


def merged(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def stored(retriever_grpc: str, ids: list[str]) -> tuple[dict[str, retriever_pb2.GetResponse], int]:
    with grpc.insecure_channel(retriever_grpc) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        out = {}
        for d in ids:
            try:
                out[d] = stub.Get(retriever_pb2.GetRequest(id=d), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        points = stub.Info(retriever_pb2.InfoRequest(), timeout=10).points
    return out, points


@pytest.mark.timeout(480)  # run 1 up to 120 s + restart + run 2 up to 180 s + the check
async def test_concurrent_ingest_with_a_retriever_crash_stores_every_chunk_once(stack: Stack) -> None:
    docs = documents()
    ids = sorted(docs)
    plans = client_sets(ids)
    assert set().union(*({d for b in p for d in b} for p in plans)) == set(ids), "some document is in no set"
    retriever = stack.procs["retriever"]
    _, points_before = stored(retriever.grpc_addr, [])

    # Run 1: eight clients, and kill -9 of the retriever once a third of the batches went through.
    done: list[str] = []
    run1 = [asyncio.create_task(ingest(stack.api_url, docs, p, retry_until=None, done=done)) for p in plans]
    total = sum(len(b) for p in plans for b in p)
    t0 = time.monotonic()
    while len(done) < total // 3 and time.monotonic() - t0 < 120:
        await asyncio.sleep(0.05)
    stack.kill("retriever")
    killed_after = len(done)
    counts1 = await asyncio.gather(*run1)
    stack.start("retriever")
    await asyncio.to_thread(stack.wait_ready, ("retriever",), 120.0)

    # Run 2: the same ingest again, retrying refusals, until every batch went through.
    done2: list[str] = []
    until = time.monotonic() + 180
    counts2 = await asyncio.gather(*(ingest(stack.api_url, docs, p, retry_until=until, done=done2) for p in plans))

    got, points_after = stored(retriever.grpc_addr, ids)
    settings = RetrieverSettings.model_fields
    chunker = Chunker(settings["chunk_tokens"].default, settings["chunk_overlap_tokens"].default)
    problems = []
    expected_points = 0
    for d in ids:
        want = chunker.split(docs[d])
        expected_points += len(want)
        if d not in got:
            problems.append(f"{d}: missing")
            continue
        have = [(c.chunk_id, c.start, c.end, c.text) for c in got[d].chunks]
        expect = [(chunk_id(d, c.index), c.start, c.end, c.text) for c in want]
        if have != expect:
            differ = [i for i, (x, y) in enumerate(zip(have, expect, strict=False)) if x != y]
            problems.append(f"{d}: {len(have)} chunks stored, {len(expect)} expected, differing at {differ[:5]}")
        if got[d].document.text != docs[d]:
            problems.append(f"{d}: stored text differs from the source")
    figures = {
        "summary": {
            "documents": DOCS,
            "clients": CLIENTS,
            "documents_ingested_before_kill": killed_after,
            "run1_failed_batches": sum(c["failed"] for c in counts1),
            "run2_failed_batches": sum(c["failed"] for c in counts2),
            "run1_answers": merged(counts1),
            "run2_answers": merged(counts2),
            "expected_chunks": expected_points,
            "points_added": points_after - points_before,
            "problems": len(problems),
        },
        "problems": problems[:20],
    }
    record("data_safety", figures)

    assert sum(c["failed"] for c in counts2) == 0, counts2
    assert sum(c["failed"] for c in counts1) > 0, "the kill did not interrupt anything: the test proved nothing"
    assert not problems, problems[:10]
    assert points_after - points_before == expected_points, "points other than the documents' chunks are stored"
