"""The clients people already use, unchanged, against the four real services: the official openai SDK,
langchain-openai and LlamaIndex (OpenAILike, OpenAIEmbedding), streaming, citations and the plain-LLM model.

Offline notes: tiktoken fetches its encodings from the internet on first use, so LangChain's OpenAIEmbeddings runs
with check_embedding_ctx_length=False (it then sends the texts as strings, which is also what ragline wants) and
LlamaIndex gets a whitespace tokenizer for its splitter. Everything else is each library's default."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from ragline_cli.localstack import Stack

pytestmark = pytest.mark.e2e

DOCS = [
    {
        "id": "clients/lighthouse.md",
        "text": "The Fastnet lighthouse stands on Fastnet Rock off the south coast of Ireland. Its light, first lit "
        "in 1904, is visible for 27 nautical miles, and it is known as Ireland's Teardrop.",
    },
    {
        "id": "clients/sourdough.md",
        "text": "A sourdough starter is a culture of wild yeast and lactic acid bacteria kept in flour and water. "
        "Bakers feed it every day and use it instead of commercial yeast to leaven bread.",
    },
    {
        "id": "clients/kelvin.md",
        "text": "The kelvin is the SI unit of thermodynamic temperature. Absolute zero is 0 kelvin, which is "
        "minus 273.15 degrees Celsius; water freezes at 273.15 kelvin.",
    },
]
QUESTION = "How far away can the light of the Fastnet lighthouse be seen?"
KEY = "unused-auth-is-off"
SMALL = 8  # tokens: CPU generation is slow, and the model's wording is not what these tests check


@pytest.fixture(scope="module")
def api(stack: Stack) -> str:
    reply = httpx.post(f"{stack.api_url}/v1/documents", json={"documents": DOCS}, timeout=120)
    assert reply.status_code == 200, reply.text
    return f"{stack.api_url}/v1"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One HTTP client for the frameworks' OpenAI clients, closed at the end (they would leak their own)."""
    with httpx.Client(timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(api: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=api, api_key=KEY, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def kinds(sdk: openai.OpenAI) -> dict[str, str]:
    """Model kind -> id, from /v1/models."""
    return {m.model_extra["ragline_kind"]: m.id for m in sdk.models.list().data}  # type: ignore[index]


def _searches(stack: Stack) -> float:
    """Search calls the retriever has served (its own RED metric)."""
    text = httpx.get(stack.procs["retriever"].url + "/metrics", timeout=5).text
    pattern = r'^ragline_request_duration_seconds_count\{[^}]*method="[^"]*Search[^"]*"[^}]*\} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, flags=re.M))


# The official openai SDK -----------------------------------------------------------------------------------------


def test_models_list_and_retrieve_say_which_is_which(sdk: openai.OpenAI, kinds: dict[str, str]) -> None:
    assert kinds["rag"] == "ragline" and kinds["llm"] and kinds["embedding"]
    for kind, model in kinds.items():
        one = sdk.models.retrieve(model)
        assert one.id == model and one.model_extra["ragline_kind"] == kind  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as err:
        sdk.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"


def test_unknown_model_is_404_model_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=SMALL)
    assert err.value.code == "model_not_found" and err.value.param == "model"


def test_rag_chat_cites_the_document(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="ragline", messages=[{"role": "user", "content": QUESTION}], max_tokens=SMALL
    )
    assert reply.choices[0].message.content
    citations = reply.model_extra["citations"]  # type: ignore[index]
    assert citations[0]["doc_id"] == "clients/lighthouse.md"
    assert reply.usage is not None and reply.usage.completion_tokens <= SMALL


def test_rag_chat_streams_with_citations_and_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="ragline",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=SMALL,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].model_extra["citations"][0]["doc_id"] == "clients/lighthouse.md"  # type: ignore[index]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and "\ufffd" not in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_generator_model_is_a_plain_llm_without_retrieval(
    sdk: openai.OpenAI, kinds: dict[str, str], stack: Stack
) -> None:
    before = _searches(stack)
    reply = sdk.chat.completions.create(
        model=kinds["llm"], messages=[{"role": "user", "content": QUESTION}], max_tokens=SMALL
    )
    assert reply.choices[0].message.content and reply.model == kinds["llm"]
    assert reply.model_extra["citations"] == []  # type: ignore[index]
    assert _searches(stack) == before


def test_text_completions_plain_and_streamed(sdk: openai.OpenAI, kinds: dict[str, str]) -> None:
    plain = sdk.completions.create(model=kinds["llm"], prompt="The capital of France is", max_tokens=SMALL)
    assert plain.object == "text_completion" and plain.choices[0].text
    streamed = list(sdk.completions.create(model=kinds["llm"], prompt="One, two,", max_tokens=SMALL, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices)
    rag = sdk.completions.create(model="ragline", prompt=QUESTION, max_tokens=SMALL)
    assert rag.model_extra["citations"][0]["doc_id"] == "clients/lighthouse.md"  # type: ignore[index]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ],
)
def test_parameters_ragline_cannot_honour_are_refused_by_name(
    sdk: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(
            model="ragline", messages=[{"role": "user", "content": "hi"}], max_tokens=SMALL, **extra
        )
    assert err.value.param == param and err.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_streamed_max_tokens_over_the_cap_is_a_400_not_a_broken_stream(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(
            model="ragline", messages=[{"role": "user", "content": "hi"}], max_tokens=4096, stream=True
        )
    assert err.value.param == "max_tokens"


def test_embeddings_take_2048_inputs_and_refuse_other_dimensions(sdk: openai.OpenAI, kinds: dict[str, str]) -> None:
    texts = [f"text number {i}" for i in range(2048)]
    reply = sdk.embeddings.create(model=kinds["embedding"], input=texts)
    assert [d.index for d in reply.data] == list(range(2048))
    one = sdk.embeddings.create(model=kinds["embedding"], input=texts[7]).data[0].embedding
    assert reply.data[7].embedding == pytest.approx(one, abs=1e-4)  # batching kept each text in its place
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model=kinds["embedding"], input=[*texts, "one more"])
    with pytest.raises(openai.BadRequestError) as err:
        sdk.embeddings.create(model=kinds["embedding"], input="x", dimensions=len(one) // 2)
    assert err.value.param == "dimensions"


# langchain-openai ------------------------------------------------------------------------------------------------


def test_langchain_chat_invoke_stream_and_structured_output_refused(api: str, http: httpx.Client) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    llm = ChatOpenAI(
        base_url=api,
        api_key=KEY,  # type: ignore[arg-type]
        model="ragline",
        max_tokens=SMALL,  # type: ignore[call-arg]
        max_retries=0,
        http_client=http,
    )
    answer = llm.invoke(QUESTION)
    assert answer.content
    assert "".join(str(c.content) for c in llm.stream(QUESTION))

    class Fact(BaseModel):
        distance_miles: int

    # Structured output needs tools or a JSON schema response format: refused, never an unchecked None.
    with pytest.raises(openai.BadRequestError):
        llm.with_structured_output(Fact).invoke(QUESTION)
    with pytest.raises(openai.BadRequestError):
        llm.with_structured_output(Fact, method="json_mode").invoke(QUESTION)


def test_langchain_embeddings_with_the_default_batch_of_1000(
    api: str, kinds: dict[str, str], http: httpx.Client
) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        base_url=api,
        api_key=KEY,  # type: ignore[arg-type]
        model=kinds["embedding"],
        check_embedding_ctx_length=False,  # tiktoken would download its encoding; see the module docstring
        max_retries=0,
        http_client=http,
    )
    assert emb.chunk_size == 1000  # LangChain's default: 1,000 texts per call
    vectors = emb.embed_documents([f"passage {i}" for i in range(1100)])
    assert len(vectors) == 1100 and len({len(v) for v in vectors}) == 1
    assert len(emb.embed_query("a question")) == len(vectors[0])


# LlamaIndex ------------------------------------------------------------------------------------------------------


def _llama_llm(api: str, model: str, http: httpx.Client, *, chat: bool) -> Any:
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike(
        model=model,
        api_base=api,
        api_key=KEY,
        is_chat_model=chat,
        max_tokens=SMALL,
        max_retries=0,
        timeout=120,
        http_client=http,
    )


def test_llamaindex_openailike_chat_and_completion(api: str, kinds: dict[str, str], http: httpx.Client) -> None:
    from llama_index.core.llms import ChatMessage

    chat = _llama_llm(api, "ragline", http, chat=True)
    assert chat.chat([ChatMessage(role="user", content=QUESTION)]).message.content
    assert "".join(r.delta or "" for r in chat.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    completion = _llama_llm(api, kinds["llm"], http, chat=False)  # /v1/completions
    assert completion.complete("The capital of France is").text
    assert "".join(r.delta or "" for r in completion.stream_complete("One, two,"))


def test_llamaindex_pipeline_with_ragline_as_embedder_and_llm(
    api: str, kinds: dict[str, str], stack: Stack, http: httpx.Client
) -> None:
    """LlamaIndex retrieves with ragline's embeddings, then asks ragline's plain LLM with its own prompt: ragline
    must not retrieve again on that prompt (the failure was an answer about an unrelated document)."""
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.openai import OpenAIEmbedding

    embed = OpenAIEmbedding(model_name=kinds["embedding"], api_base=api, api_key=KEY, max_retries=0, http_client=http)
    splitter = SentenceSplitter(chunk_size=64, chunk_overlap=0, tokenizer=str.split)
    docs = [Document(text=d["text"], doc_id=d["id"]) for d in DOCS]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed, transformations=[splitter])
    for chat in (True, False):
        before = _searches(stack)
        engine = index.as_query_engine(llm=_llama_llm(api, kinds["llm"], http, chat=chat), similarity_top_k=1)
        response = engine.query(QUESTION)
        assert str(response).strip()
        assert response.source_nodes[0].node.ref_doc_id == "clients/lighthouse.md"
        assert _searches(stack) == before  # LlamaIndex retrieved; ragline only generated


def test_max_tokens_cutting_a_multibyte_character_sends_no_replacement_character(
    sdk: openai.OpenAI, kinds: dict[str, str]
) -> None:
    """SmolLM2's byte-level tokens split 東 (3 UTF-8 bytes) across tokens: one token is half a character."""
    prompt = "Tokyo in Japanese: 東京. Tokyo in Japanese: 東京. Tokyo in Japanese:"
    whole = sdk.completions.create(model=kinds["llm"], prompt=prompt, max_tokens=4, temperature=0)
    assert "東" in whole.choices[0].text  # the model does write the character here
    for max_tokens in (1, 2):
        cut = sdk.completions.create(model=kinds["llm"], prompt=prompt, max_tokens=max_tokens, temperature=0)
        assert "\ufffd" not in cut.choices[0].text
        stream = sdk.completions.create(
            model=kinds["llm"], prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
        )
        assert "\ufffd" not in "".join(c.choices[0].text for c in stream if c.choices)
