"""The real embedder over real HTTP: the OpenAI embeddings shape, /v1/models, metrics and clear 400s."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from ragline_common.serve import Service

from .conftest import MAX_TEXTS

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

GOLDEN = json.loads((Path(__file__).parent / "golden_vectors.json").read_text())
FOX = GOLDEN["items"][0]
LONG_TEXT = "retrieval augmented generation " * 200


async def post(http: httpx.AsyncClient, body: object) -> httpx.Response:
    return await http.post("/v1/embeddings", json=body)


async def test_string_input_in_openai_shape(http: httpx.AsyncClient) -> None:
    r = await post(http, {"input": FOX["text"], "model": "all-MiniLM-L6-v2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == GOLDEN["model"]
    assert body["usage"] == {"prompt_tokens": FOX["tokens"], "total_tokens": FOX["tokens"]}
    [item] = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0 and item["truncated"] is False
    assert np.max(np.abs(np.array(item["embedding"]) - np.array(FOX["vector"]))) < GOLDEN["tolerance"]
    assert "queue;dur=" in r.headers["server-timing"]


async def test_list_input_and_base64_decode_to_the_same_floats(http: httpx.AsyncClient) -> None:
    texts = [item["text"] for item in GOLDEN["items"]]
    floats = (await post(http, {"input": texts})).json()
    b64 = (await post(http, {"input": texts, "encoding_format": "base64"})).json()
    assert [d["index"] for d in floats["data"]] == list(range(len(texts)))
    for f, b in zip(floats["data"], b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.shape == (384,)
        # JSON floats are the float32 values written as doubles: they round-trip exactly.
        assert np.array_equal(decoded, np.array(f["embedding"], dtype=np.float32))
    assert floats["usage"]["prompt_tokens"] == sum(item["tokens"] for item in GOLDEN["items"])


async def test_openai_client_reads_it(service: Service) -> None:
    # The official client asks for base64 by default and decodes it itself.
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{service.http_port}/v1", api_key="unused", max_retries=0, timeout=30
    ) as client:
        resp = await client.embeddings.create(input=[FOX["text"]], model="sentence-transformers/all-MiniLM-L6-v2")
    assert len(resp.data) == 1 and len(resp.data[0].embedding) == 384
    assert np.max(np.abs(np.array(resp.data[0].embedding) - np.array(FOX["vector"]))) < GOLDEN["tolerance"]
    assert resp.usage.prompt_tokens == FOX["tokens"]


async def test_models(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/models")
    assert r.status_code == 200
    [card] = r.json()["data"]
    assert card["id"] == GOLDEN["model"] and card["object"] == "model"
    assert card["dimension"] == 384 and card["max_seq_length"] == 256
    assert card["revision"].startswith("sha256:")


async def test_truncation_is_flagged(http: httpx.AsyncClient) -> None:
    r = await post(http, {"input": [LONG_TEXT, "short"]})
    assert r.status_code == 200
    assert [d["truncated"] for d in r.json()["data"]] == [True, False]
    assert r.headers["x-ragline-truncated"] == "1"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": []}, "at least one text"),
        ({"input": ""}, r"input\[0\] is empty"),
        ({"input": ["ok", " "]}, r"input\[1\] is empty"),
        ({"input": ["t"] * (MAX_TEXTS + 1)}, f"at most {MAX_TEXTS}"),
        ({"input": [101, 2023, 102]}, "token arrays"),
        ({"input": [[101, 2023], [102]]}, "token arrays"),
        ({"input": ["text", 7]}, r"input\[1\] is int"),
        ({"input": {"text": "x"}}, "string or a list of strings, got dict"),
        ({}, "input: Field required"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "model": "text-embedding-3-small"}, "not served here"),
        ({"input": "x", "dimensions": 128}, "dimensions=128"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
    ids=[
        "empty-list", "empty-string", "blank", "too-many", "token-array", "token-arrays", "mixed", "dict",
        "missing", "bad-format", "wrong-model", "dimensions", "not-object",
    ],
)  # fmt: skip
async def test_bad_input_is_a_clear_400(http: httpx.AsyncClient, body: object, message: str) -> None:
    r = await post(http, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert re.search(message, error["message"]), error["message"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"input": "caf\xe9"}', "not valid UTF-8"),
        (b'{"input": "x"', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"input": "\\ud800"}', "unpaired UTF-16 surrogate (U+D800)"),  # valid JSON escape, but no UTF-8 text
    ],
    ids=["latin-1", "truncated-json", "empty-body", "surrogate"],
)
async def test_bad_body_is_a_clear_400(http: httpx.AsyncClient, raw: bytes, message: str) -> None:
    r = await http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


async def test_metrics_count_batches_texts_and_tokens(http: httpx.AsyncClient) -> None:
    await post(http, {"input": ["count me", "and me"]})
    text = (await http.get("/metrics")).text
    for name in (
        "ragline_embedder_batch_size_count",
        "ragline_embedder_inference_seconds_count",
        "ragline_embedder_queue_seconds_count",
        "ragline_embedder_queue_depth",
        "ragline_embedder_texts_total",
        "ragline_embedder_tokens_total",
        "ragline_embedder_truncated_texts_total",
    ):
        assert f"\n{name} " in text, name
    assert 'ragline_request_duration_seconds_count{code="200",method="POST /v1/embeddings"' in text
    texts = float(text.split("\nragline_embedder_texts_total ")[1].split()[0])
    assert texts >= 2


async def test_openapi_documents_the_request_and_response(http: httpx.AsyncClient) -> None:
    post_op = (await http.get("/openapi.json")).json()["paths"]["/v1/embeddings"]["post"]
    schema = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["input"]
    assert set(schema["properties"]) >= {"input", "model", "encoding_format", "dimensions"}
    assert post_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("EmbeddingsResponse")
