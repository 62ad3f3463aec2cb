"""The debug routes parse JSON into the gRPC request protos: one parser, errors that name the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from ragline_common.health import Readiness
from ragline_common.http import create_app
from ragline_common.metrics import RequestMetrics
from ragline_retriever.core import DocIn, RankedHits, UpsertOutcome
from ragline_retriever.routes import router
from ragline_retriever.store import FieldMatch

pytestmark = pytest.mark.unit


class FakeCore:
    def __init__(self) -> None:
        self.searches: list[tuple[Any, ...]] = []
        self.upserts: list[list[DocIn]] = []

    async def search(self, query: str, k: int, conditions: list[FieldMatch], mode: str | None) -> RankedHits:
        self.searches.append((query, k, conditions, mode))
        return RankedHits([], 0.0, 0.0, 0.0)

    async def upsert(self, docs: list[DocIn]) -> list[UpsertOutcome]:
        self.upserts.append(docs)
        return [UpsertOutcome(d.id, "created", 1, "h") for d in docs]


@pytest.fixture
def core() -> FakeCore:
    return FakeCore()


@pytest.fixture
async def http(core: FakeCore) -> Any:
    app = create_app(
        service="retriever",
        version="0",
        readiness=Readiness([]),
        metrics=RequestMetrics(CollectorRegistry(), "retriever"),
    )
    app.include_router(router)
    app.state.core = core
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://retriever") as client:
        yield client


async def test_search_json_reaches_the_core_through_the_proto(http: httpx.AsyncClient, core: FakeCore) -> None:
    body = {
        "query": "q",
        "k": 3,
        "mode": "hybrid",
        "filter": {"must": [{"key": "year", "equals": 2021}, {"key": "s", "range": {"gte": 1.5}}]},
    }
    r = await http.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    assert core.searches == [
        (
            "q",
            3,
            [FieldMatch("metadata.year", "equals", 2021), FieldMatch("metadata.s", "range", {"gte": 1.5})],
            "hybrid",
        )
    ]


async def test_upsert_json_reaches_the_core_through_the_proto(http: httpx.AsyncClient, core: FakeCore) -> None:
    r = await http.post("/v1/documents", json={"documents": [{"id": "a", "text": "t", "metadata": {"n": 2}}]})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "created"
    assert core.upserts == [[DocIn("a", "t", {"n": 2})]]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"query": "q", "filter": {"must": [{"key": "a", "near": 1}]}}, '"near"'),
        ({"query": "q", "k": -1}, "k"),
        ({"query": "q", "mode": "sparse"}, "mode"),
        ({"query": "q", "surprise": 1}, '"surprise"'),
        ({"query": "q", "filter": {"must": [{"key": "n", "equals": 2**60}]}}, "±2^53"),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_json_shapes_are_400s_naming_the_field(http: httpx.AsyncClient, body: Any, named: str) -> None:
    r = await http.post("/v1/search", json=body)
    assert r.status_code == 400, r.text
    assert named in r.json()["error"]["message"]


async def test_unparseable_json_is_a_400(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/search", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400


async def test_openapi_still_documents_the_bodies(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    schema = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "query" in schema["properties"] and "must" in schema["properties"]["filter"]["anyOf"][0]["properties"]
