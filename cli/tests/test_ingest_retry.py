"""Unit tests for `ragline ingest` waiting out a starting stack: 503/429 retried after Retry-After, others not."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ragline_cli.main import ApiError, Client, main

pytestmark = pytest.mark.unit


class Api:
    """A scripted /v1/documents: answers in order, then 200."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        self.answers = answers
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.answers:
            status, headers = self.answers.pop(0)
            message = {503: "retriever is starting: waiting for the embedder's model info"}.get(status, "nope")
            return httpx.Response(status, headers=headers, json={"error": {"message": message}})
        return httpx.Response(200, json={"results": [{"id": "a.txt", "status": "created", "chunks": 1}]})


def client(api: Api, slept: list[float], clock: list[float]) -> Client:
    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    c = Client("http://ragline.test", None, 5.0, sleep=sleep, clock=lambda: clock[0])
    c.http = httpx.Client(base_url="http://ragline.test", transport=httpx.MockTransport(api))
    return c


def test_503_and_429_are_retried_after_their_retry_after(capsys: pytest.CaptureFixture[str]) -> None:
    api = Api([(503, {"retry-after": "2"}), (429, {"retry-after": "1"}), (503, {})])
    slept: list[float] = []
    reply = client(api, slept, [0.0]).post("/v1/documents", {"documents": []}, wait=60)
    assert reply["results"][0]["status"] == "created"
    assert api.calls == 4 and slept == [2.0, 1.0, 1.0]
    err = capsys.readouterr().err
    assert "503: retriever is starting" in err and "retrying in 2s (attempt 2)" in err


def test_gives_up_after_wait_with_the_last_error() -> None:
    api = Api([(503, {"retry-after": "5"})] * 10)
    slept: list[float] = []
    with pytest.raises(ApiError, match="503: retriever is starting") as info:
        client(api, slept, [0.0]).post("/v1/documents", {"documents": []}, wait=12)
    assert info.value.status == 503 and slept == [5.0, 5.0]


@pytest.mark.parametrize("status", [400, 401, 413, 500])
def test_other_errors_are_not_retried(status: int) -> None:
    api = Api([(status, {"retry-after": "1"})])
    with pytest.raises(ApiError):
        client(api, [], [0.0]).post("/v1/documents", {"documents": []}, wait=60)
    assert api.calls == 1


def test_no_wait_means_no_retry() -> None:
    api = Api([(503, {"retry-after": "1"})])
    with pytest.raises(ApiError):
        client(api, [], [0.0]).post("/v1/documents", {"documents": []})
    assert api.calls == 1


def test_wait_option_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, float] = {}

    def fake_post(self: Client, path: str, body: dict, *, wait: float = 0.0) -> dict:
        seen["wait"] = wait
        return {"results": [{"id": d["id"], "status": "created", "chunks": 1} for d in body["documents"]]}

    monkeypatch.setattr(Client, "post", fake_post)
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(SystemExit) as code:
        main(["ingest", str(tmp_path), "--wait", "7", "-q"])
    assert code.value.code == 0 and seen["wait"] == 7.0
