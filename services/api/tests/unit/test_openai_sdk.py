"""The official openai SDK, unchanged, against the running gateway: chat (plain and streamed), embeddings, models."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.unit

DOCS = [
    {"id": "d1", "text": "the cat sat on the mat", "metadata": {"lang": "en"}},
    {"id": "d2", "text": "dogs bark at night", "metadata": {"lang": "en"}},
]


@pytest.fixture
async def sdk(start_gateway, api_key, fakes):
    for d in DOCS:
        from google.protobuf import struct_pb2

        from ragline.retriever.v1 import retriever_pb2 as rpb

        md = struct_pb2.Struct()
        md.update(d["metadata"])
        fakes.retriever.docs[d["id"]] = rpb.Document(id=d["id"], text=d["text"], metadata=md)
    async with start_gateway() as svc:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{svc.http_port}/v1", api_key=api_key, max_retries=0)
        yield client
        await client.close()


async def test_chat_completion_carries_citations(sdk, fakes) -> None:
    completion = await sdk.chat.completions.create(
        model="ragline",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is the cat"}],
        max_tokens=32,
        temperature=0,
    )
    assert completion.choices[0].message.content == "From 1 passages [1]: where is the cat"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0
    citations = completion.model_extra["citations"]
    assert citations[0]["doc_id"] == "d1" and citations[0]["index"] == 1 and citations[0]["metadata"] == {"lang": "en"}
    sent = fakes.generator.last
    assert [m.role for m in sent.messages] == ["system", "user"] and sent.context[0].doc_id == "d1"


async def test_streamed_chat_carries_citations_on_the_first_chunk(sdk) -> None:
    stream = await sdk.chat.completions.create(
        model="ragline",
        messages=[{"role": "user", "content": "dogs at night"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].model_extra["citations"][0]["doc_id"] == "d2"
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "From 1 passages [1]: dogs at night"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_extensions_via_extra_body(sdk, fakes) -> None:
    completion = await sdk.chat.completions.create(
        model="ragline",
        messages=[{"role": "user", "content": "the cat"}],
        extra_body={"k": 1, "filters": {"must": [{"key": "lang", "equals": "en"}]}},
    )
    assert len(completion.model_extra["citations"]) == 1
    assert fakes.retriever.last_search.k == 1 and fakes.retriever.last_search.filter.must[0].key == "lang"
    plain = await sdk.chat.completions.create(
        model="ragline", messages=[{"role": "user", "content": "hi"}], extra_body={"retrieval": False}
    )
    assert plain.model_extra["citations"] == [] and len(fakes.generator.last.context) == 0


async def test_errors_surface_as_sdk_exceptions(sdk, fakes) -> None:
    with pytest.raises(openai.BadRequestError, match="at least one user message"):
        await sdk.chat.completions.create(model="ragline", messages=[{"role": "system", "content": "x"}])
    fakes.generator.fault.mode = "unavailable"
    with pytest.raises(openai.InternalServerError) as exc:
        await sdk.chat.completions.create(model="ragline", messages=[{"role": "user", "content": "cat"}])
    assert exc.value.status_code == 503


async def test_embeddings_and_models(sdk) -> None:
    emb = await sdk.embeddings.create(model="fake-emb", input=["one", "three"])
    assert [len(d.embedding) for d in emb.data] == [4, 4] and emb.data[1].embedding[0] == 5.0
    b64 = await sdk.embeddings.create(model="fake-emb", input="one", encoding_format="base64")
    assert isinstance(b64.data[0].embedding, str)
    models = [m.id async for m in sdk.models.list()]
    assert models == ["ragline", "fake-llm", "fake-emb"]


async def test_wrong_key_is_an_authentication_error(sdk) -> None:
    bad = sdk.with_options(api_key="nope-0123456789abcdefgh")
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
