"""OpenAI compatibility kept honest, and the api's edge checks: refused parameters, models, completions,
embedding batches, bad text, limits and ids — over real HTTP against fake downstreams."""

from __future__ import annotations

import http.client
import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.unit

USER = [{"role": "user", "content": "the cat"}]


def client(svc: Any, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{svc.http_port}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"frequency_penalty": 1.0}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"some_new_option": 1}, "some_new_option"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "1"}]}]}, "messages.0.tool_calls"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages.0.role"),
    ],
)
async def test_parameters_that_cannot_be_honoured_are_refused_by_name(start_gateway, api_key, extra, param) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


async def test_off_values_clients_send_by_default_are_accepted(start_gateway, api_key) -> None:
    off = {
        "logprobs": False,
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "n": 1,
        "presence_penalty": 0,
        "user": "someone",
        "stream_options": None,
        "prompt_cache_key": "k",
    }
    replayed = {"role": "assistant", "content": "earlier", "refusal": None, "tool_calls": None, "annotations": []}
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/chat/completions", json={"messages": [*USER, replayed, *USER], **off})
    assert r.status_code == 200, r.text


async def test_unknown_model_is_404_model_not_found_and_models_are_listed(start_gateway, api_key, fakes) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})
        assert r.status_code == 404
        assert r.json()["error"] == {
            "message": r.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
        listed = {m["id"]: m["ragline_kind"] for m in (await c.get("/v1/models")).json()["data"]}
        assert listed == {"ragline": "rag", "fake-llm": "llm", "fake-emb": "embedding"}
        for model, kind in listed.items():
            one = (await c.get(f"/v1/models/{model}")).json()
            assert one["id"] == model and one["ragline_kind"] == kind and one["object"] == "model"
        missing = await c.get("/v1/models/gpt-4o")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        wrong = await c.post("/v1/chat/completions", json={"model": "fake-emb", "messages": USER})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "model"


async def test_generator_model_is_plain_llm_and_ragline_retrieves(start_gateway, api_key, fakes) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        await c.post("/v1/documents", json={"documents": [{"id": "d1", "text": "the cat sat"}]})
        plain = await c.post("/v1/chat/completions", json={"model": "fake-llm", "messages": USER})
        assert plain.status_code == 200 and plain.json()["citations"] == []
        assert fakes.retriever.last_search is None and len(fakes.generator.last.context) == 0
        assert plain.json()["model"] == "fake-llm"
        rag = await c.post("/v1/chat/completions", json={"model": "ragline", "messages": USER})
        assert rag.json()["citations"][0]["doc_id"] == "d1" and fakes.retriever.last_search is not None


async def test_completions_plain_prompt_and_rag(start_gateway, api_key, fakes) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        await c.post("/v1/documents", json={"documents": [{"id": "d1", "text": "the cat sat"}]})
        r = await c.post("/v1/completions", json={"model": "fake-llm", "prompt": "Once upon", "max_tokens": 4})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion" and body["choices"][0]["text"]
        assert fakes.generator.last.prompt == "Once upon" and not fakes.generator.last.messages
        assert "citations" not in body
        r = await c.post("/v1/completions", json={"model": "ragline", "prompt": ["the cat"]})
        assert r.json()["citations"][0]["doc_id"] == "d1" and fakes.generator.last.messages[0].content == "the cat"
        async with c.stream(
            "POST", "/v1/completions", json={"model": "fake-llm", "prompt": "Once", "stream": True}
        ) as s:
            lines = [line async for line in s.aiter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
        assert "Once" in text
        two = await c.post("/v1/completions", json={"model": "fake-llm", "prompt": ["a", "b"]})
        assert two.status_code == 400 and two.json()["error"]["param"] == "prompt"
        echo = await c.post("/v1/completions", json={"model": "fake-llm", "prompt": "a", "echo": True})
        assert echo.status_code == 400 and echo.json()["error"]["param"] == "echo"


async def test_embeddings_take_2048_texts_split_into_the_embedders_batches(start_gateway, api_key, fakes) -> None:
    fakes.embedder.max_texts_per_request = 300
    texts = [f"t{i}" + "x" * (i % 7) for i in range(2048)]
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/embeddings", json={"input": texts})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(2048))
        assert [d["embedding"][0] for d in data] == [float(len(t)) for t in texts]  # order kept across batches
        assert max(fakes.embedder.batches) <= 300 and sum(fakes.embedder.batches) == 2048
        over = await c.post("/v1/embeddings", json={"input": [*texts, "x"]})
        assert over.status_code == 400 and "1 to 2048 texts" in over.json()["error"]["message"]
        tokens = await c.post("/v1/embeddings", json={"input": [[1, 2], [3]]})
        assert tokens.status_code == 400 and "token arrays are not supported" in tokens.json()["error"]["message"]
        dims = await c.post("/v1/embeddings", json={"input": "x", "dimensions": 2})
        assert dims.status_code == 400 and dims.json()["error"]["param"] == "dimensions"
        same = await c.post("/v1/embeddings", json={"input": "x", "dimensions": 4, "model": "fake-emb"})
        assert same.status_code == 200
        unknown = await c.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


BAD_TEXT = [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a\\u0000b"}]}', "messages.0.content"),
    ("/v1/query", '{"question": "x\\udfff"}', "question"),
    ("/v1/search", '{"query": "c", "filters": {"must": [{"key": "\\ud800", "equals": 1}]}}', "filters.must.0.key"),
    (
        "/v1/documents",
        '{"documents": [{"id": "a", "text": "b", "metadata": {"k": "\\udc00"}}]}',
        "documents.0.metadata.k",
    ),
    ("/v1/embeddings", '{"input": ["ok", "\\ud83d"]}', "input.1"),
]


def test_unencodable_text_is_a_400_naming_the_field_on_a_kept_connection(threaded_stack, api_key) -> None:
    url = httpx.URL(threaded_stack.base_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=10)  # one keep-alive connection throughout
    headers = {"content-type": "application/json", "authorization": f"Bearer {api_key}"}
    for route, body, param in BAD_TEXT:
        conn.request("POST", route, body=body.encode(), headers=headers)
        reply = conn.getresponse()
        error = json.loads(reply.read())["error"]
        assert reply.status == 400 and error["param"] == param, (route, error)
        assert reply.getheader("connection", "").lower() != "close"
    conn.request("GET", "/v1/models", headers=headers)  # the same connection still serves
    assert conn.getresponse().status == 200
    conn.close()


async def test_a_valid_surrogate_pair_is_text_like_any_other(start_gateway, api_key) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post(
            "/v1/chat/completions",
            content=b'{"messages": [{"role": "user", "content": "cat \\ud83d\\ude00"}]}',
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "param", "expect"),
    [
        ({"messages": [{"role": "user", "content": "  "}]}, "messages.0.content", "must not be blank"),
        ({"messages": USER, "k": "5"}, "k", "k must be an integer from 1 to 100, got '5'"),
        ({"messages": USER, "k": True}, "k", "k must be an integer from 1 to 100, got True"),
        ({"messages": USER, "k": 101}, "k", "k must be an integer from 1 to 100, got 101"),
        ({"messages": USER, "max_tokens": "5"}, "max_tokens", "valid integer"),
        ({"messages": [{"role": "user", "content": "x" * 4001}]}, "messages.0.content", "4001 characters"),
    ],
)
async def test_chat_input_rules_match_the_query_route(start_gateway, api_key, body, param, expect) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and expect in r.json()["error"]["message"]


async def test_json_syntax_error_names_no_field(start_gateway, api_key) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/query", content=b'{"question": ', headers={"content-type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] is None
    assert error["message"].startswith("the body is not valid JSON") and "at character 13" in error["message"]


async def test_413_has_one_type_with_or_without_content_length(start_gateway, api_key) -> None:
    big = b'{"question": "' + b"x" * 2_000_000 + b'"}'

    async def chunked() -> Any:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    async with start_gateway() as svc, client(svc, api_key) as c:
        sized = await c.post("/v1/query", content=big, headers={"content-type": "application/json"})
        streamed = await c.post("/v1/query", content=chunked(), headers={"content-type": "application/json"})
    assert sized.status_code == streamed.status_code == 413
    assert sized.json()["error"]["type"] == streamed.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize("doc_id", ["a/./b", "a/../b", "a//b", "/a", "a/", ".", "..", "a\x85b"])
async def test_ids_no_http_client_can_address_are_refused(start_gateway, api_key, doc_id) -> None:
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post("/v1/documents", json={"documents": [{"id": doc_id, "text": "x"}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "documents.0.id"


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"documents": [{"id": "a", "text": "b", "metadata": {"n": 2**53 + 1}}]}, "outside ±2^53"),
        ({"query": "cat", "filters": {"must": [{"key": "n", "equals": 2**60}]}}, "outside ±2^53"),
    ],
)
async def test_integers_beyond_2_53_are_refused_not_rounded(start_gateway, api_key, body, expect) -> None:
    route = "/v1/documents" if "documents" in body else "/v1/search"
    async with start_gateway() as svc, client(svc, api_key) as c:
        r = await c.post(route, json=body)
    assert r.status_code == 400 and expect in r.json()["error"]["message"], r.text


def test_a_namespaced_model_answers_to_its_last_part_when_unambiguous() -> None:
    from ragline_api.models import lookup

    models: dict[str, Any] = {"ragline": "rag", "org/emb": "embedding", "a/llm": "llm", "b/llm": "llm"}
    assert lookup(models, "org/emb") == ("org/emb", "embedding")
    assert lookup(models, "emb") == ("org/emb", "embedding")
    assert lookup(models, "llm") is None  # two models end in "llm": no guess
    assert lookup(models, "gpt-4o") is None


def test_the_connection_stays_usable_after_every_kind_of_4xx(threaded_stack, api_key) -> None:
    url = httpx.URL(threaded_stack.base_url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=10)
    auth = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    cases = [
        ("POST", "/v1/query", b'{"question": "x"}', {"content-type": "application/json"}, 401),
        ("POST", "/v1/query", b'{"question": "' + b"x" * 1_100_000 + b'"}', auth, 413),
        ("POST", "/v1/query", b'{"question": 1}', auth, 400),
        ("POST", "/v1/query", b'{"question": ', auth, 400),
        ("GET", "/v1/nowhere", None, auth, 404),
        ("GET", "/v1/documents/absent", None, auth, 404),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}',
            auth,
            404,
        ),
    ]
    for method, route, body, headers, status in cases:
        conn.request(method, route, body=body, headers=headers)
        reply = conn.getresponse()
        reply.read()
        assert reply.status == status, (route, reply.status)
        conn.request("GET", "/v1/models", headers=auth)  # the same connection serves the next request
        after = conn.getresponse()
        after.read()
        assert after.status == 200, (route, status)
    conn.close()
