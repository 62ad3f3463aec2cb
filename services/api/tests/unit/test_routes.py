"""The gateway's REST routes over real HTTP and gRPC, against fake downstreams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.unit

DOCS = [
    {"id": "d1", "text": "the cat sat on the mat", "metadata": {"lang": "en", "year": 2021}},
    {"id": "d2", "text": "a dog chased the cat", "metadata": {"lang": "en", "year": 2019}},
    {"id": "d3", "text": "le chat est noir", "metadata": {"lang": "fr", "year": 2022}},
]


def client(svc: Any, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.http_port}", headers=headers, timeout=10)


async def seed(c: httpx.AsyncClient) -> None:
    r = await c.post("/v1/documents", json={"documents": DOCS})
    assert r.status_code == 200, r.text


async def test_documents_lifecycle(start_gateway, api_key) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/documents", json={"documents": DOCS})
        assert [x["status"] for x in r.json()["results"]] == ["created"] * 3
        r = await c.post("/v1/documents", json={"documents": [DOCS[0], {**DOCS[1], "text": "changed"}]})
        assert [x["status"] for x in r.json()["results"]] == ["unchanged", "updated"]
        r = await c.get("/v1/documents/d1")
        assert r.status_code == 200 and r.json()["metadata"] == {"lang": "en", "year": 2021}
        assert '"year":2021' in r.text.replace(" ", "")
        assert r.json()["chunks"][0]["end"] == len(DOCS[0]["text"])
        r = await c.delete("/v1/documents/d1")
        assert r.json() == {"id": "d1", "deleted_chunks": 1}
        r = await c.get("/v1/documents/d1")
        assert r.status_code == 404 and "d1" in r.json()["error"]["message"]


async def test_search_hits_in_rank_order_with_timing_headers(start_gateway, api_key, fakes) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        await seed(c)
        r = await c.post("/v1/search", json={"query": "the cat sat", "k": 2}, headers={"x-request-id": "rid-1"})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert [h["doc_id"] for h in hits] == ["d1", "d2"]
        assert hits[0]["score"] >= hits[1]["score"]
        assert set(hits[0]) == {"doc_id", "chunk_id", "text", "score", "metadata", "start", "end"}
        assert r.headers["x-request-id"] == "rid-1"
        timing = r.headers["server-timing"]
        for stage in ("embed;dur=2.00", "search;dur=1.00", "retriever;dur=", "admission;dur="):
            assert stage in timing
        assert fakes.retriever.last_search.k == 2


async def test_filters_are_mapped_to_the_proto_filter(start_gateway, api_key, fakes) -> None:
    body = {
        "query": "cat",
        "filters": {
            "must": [
                {"key": "lang", "equals": "en"},
                {"key": "year", "range": {"gte": 2020}},
                {"key": "tags", "any_of": ["a", 2]},
                {"key": "ts", "date_range": {"lt": "2026-01-01T00:00:00Z"}},
            ]
        },
    }
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/search", json=body)
        assert r.status_code == 200, r.text
    must = fakes.retriever.last_search.filter.must
    assert [m.key for m in must] == ["lang", "year", "tags", "ts"]
    assert must[0].equals.string_value == "en"
    assert must[1].range.gte == 2020 and not must[1].range.HasField("lt")
    assert [v.WhichOneof("kind") for v in must[2].any_of.values] == ["string_value", "number_value"]
    assert must[3].date_range.lt == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"query": "x", "k": 0}, "k must be an integer from 1 to 100, got 0"),
        ({"query": "x", "k": 101}, "k must be an integer from 1 to 100, got 101"),
        ({"query": "x", "k": "5"}, "k must be an integer from 1 to 100, got '5'"),
        ({"query": "x", "k": True}, "k must be an integer from 1 to 100, got True"),
        ({"query": "   "}, "query must not be blank"),
        ({"query": "x" * 4001}, "query: String should have at most 4000 characters"),
        ({"query": "x", "filters": {"must": [{"key": "a"}]}}, "needs exactly one of equals, any_of, range"),
        ({"query": "x", "filters": {"must": [{"key": "a", "equals": 1, "any_of": [1]}]}}, "got ['equals', 'any_of']"),
        ({"query": "x", "filters": {"must": [{"key": "a", "range": {}}]}}, "needs at least one of gt, gte"),
        ({"query": "x", "filters": {"must": [{"key": "a", "date_range": {"gt": "nope"}}]}}, "not an RFC 3339"),
        ({"query": "x", "filters": {"should": []}}, "filters.should: Extra inputs are not permitted"),
        ({"query": "x", "mode": "sparse"}, "mode: Input should be 'dense' or 'hybrid'"),
    ],
)
async def test_bad_search_input_is_a_clear_400(start_gateway, api_key, body, expect) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/search", json=body)
    assert r.status_code == 400, r.text
    assert expect in r.json()["error"]["message"]


async def test_query_answers_with_citations_usage_and_release(start_gateway, api_key, fakes) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        await seed(c)
        r = await c.post("/v1/query", json={"question": "where sat the cat", "k": 2, "max_tokens": 20, "seed": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["answer"] == "From 2 passages [1]: where sat the cat"
        assert [c["index"] for c in body["citations"]] == [1, 2]
        assert body["citations"][0]["doc_id"] == "d1"
        assert body["context_used"] == [1, 2]
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        assert body["release"]["release"] == "test-rel"
        assert body["release"]["prompt_version"] == "rag-v1"
        assert "generate;dur=" in r.headers["server-timing"] and "queue;dur=1.00" in r.headers["server-timing"]
    sent = fakes.generator.last
    assert [c.doc_id for c in sent.context] == ["d1", "d2"]
    assert sent.params.max_tokens == 20 and sent.params.seed == 1 and not sent.params.HasField("temperature")


async def test_query_stream_sends_citations_then_tokens_then_done(start_gateway, api_key) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        await seed(c)
        async with c.stream("POST", "/v1/query", json={"question": "cat", "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = (await r.aread()).decode()
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
        for block in raw.strip().split("\n\n")
    ]
    names = [e for e, _ in events]
    assert names[0] == "citations" and names[-1] == "done"
    assert set(names[1:-1]) == {"token"} and len(names) > 3
    assert {c["doc_id"] for c in events[0][1]["citations"]} == {"d1", "d2"}
    assert "".join(d["delta"] for e, d in events if e == "token") == "From 2 passages [1]: cat"
    done = events[-1][1]
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] > 0
    assert done["release"]["prompt_version"] == "rag-v1"


async def test_client_leaving_a_stream_cancels_the_generation(start_gateway, api_key, fakes) -> None:
    fakes.generator.token_delay = 0.2
    async with start_gateway(max_concurrency=1, max_queue=0) as svc, client(svc, api_key) as c:
        async with c.stream("POST", "/v1/query", json={"question": "cat", "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("event: token"):
                    break  # leave after the first token
        await asyncio.wait_for(fakes.generator.stream_closed_early.wait(), 5)
        # The only slot was given back: the gateway still answers.
        await asyncio.sleep(0.1)
        assert (await c.post("/v1/search", json={"query": "cat"})).status_code == 200


async def test_stream_refused_before_start_is_an_http_status(start_gateway, api_key, fakes) -> None:
    fakes.generator.fault.mode = "internal"
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/query", json={"question": "cat", "stream": True})
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    assert "fake crash" not in r.text


async def test_stream_max_tokens_over_the_generator_cap_is_a_400_before_any_byte(start_gateway, api_key, fakes) -> None:
    fakes.generator.max_tokens_cap = 8
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/query", json={"question": "cat", "stream": True, "max_tokens": 9})
        chat = await c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "cat"}], "stream": True, "max_tokens": 9},
        )
    for reply in (r, chat):
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "max_tokens"
        assert "exceeds the limit of 8 (max_tokens_cap)" in reply.json()["error"]["message"]


async def test_stream_failure_after_start_is_an_error_event(start_gateway, api_key, fakes) -> None:
    fakes.generator.fail_after_tokens = 1
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/query", json={"question": "cat", "stream": True})
    assert r.status_code == 200
    assert "event: citations" in r.text and "event: error" in r.text
    assert "Traceback" not in r.text and "fake crash" not in r.text


async def test_info_reports_the_release(start_gateway, api_key) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.get("/v1/info")
    info = r.json()
    assert info["release"] == "test-rel" and info["release_settings"]["release"] == "test-rel"
    assert info["generator_model"] == "fake-llm" and info["generator_revision"] == "r1"
    assert info["embedder_model"] == "fake-emb" and info["embedder_revision"] == "e1"
    assert info["prompt_version"] == "rag-v1"
    assert info["services"]["api"]["version"] and info["services"]["retriever"]["engine"] == "fake"


async def test_info_shows_a_down_downstream_instead_of_failing(start_gateway, api_key, fakes) -> None:
    fakes.embedder.fault.mode = "unavailable"
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.get("/v1/info")
    assert r.status_code == 200
    assert "unavailable" in r.json()["services"]["embedder"]["error"]
    assert r.json()["generator_model"] == "fake-llm"


async def test_unknown_route_and_probes(start_gateway, api_key) -> None:
    async with start_gateway() as svc, client(svc, None) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert 'ragline_api_circuit_state{downstream="retriever"} 0.0' in metrics
        schema = (await c.get("/openapi.json")).json()
        assert {"/v1/query", "/v1/search", "/v1/chat/completions", "/v1/embeddings"} <= set(schema["paths"])
        assert "HTTPBearer" in schema["components"]["securitySchemes"]
