"""Delete wins over ingest on the real stack: a document deleted while its ingest still runs never comes back,
not after the ingest ends and not across a retriever restart; concurrent identical ingests get one outcome."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from ragline_cli.localstack import Stack

pytestmark = pytest.mark.e2e

WORDS = (
    "harbour lantern granite meadow copper violin glacier orchard falcon cinder ribbon tundra pepper "
    "quartz saddle thistle walnut ember lagoon marble prairie"
).split()


def big_text(seed: int, words: int = 25_000) -> str:
    """About 200 KB of prose-like text: enough chunks that embedding them takes seconds on two cores."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + ("." if i % 17 == 16 else "") for i in range(words))


def _ingested(stack: Stack, status: str) -> float:
    text = httpx.get(stack.procs["retriever"].url + "/metrics", timeout=5).text
    found = re.search(rf'^ragline_retriever_ingest_documents_total\{{status="{status}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _get_status(stack: Stack, doc_id: str) -> int:
    """GET's status once the api reaches the retriever again (after a restart its circuit may still be open)."""
    status = 503
    deadline = time.monotonic() + 60
    while status == 503 and time.monotonic() < deadline:
        status = httpx.get(f"{stack.api_url}/v1/documents/{doc_id}", timeout=30).status_code
        if status == 503:
            time.sleep(0.5)
    return status


def _post_in_background(stack: Stack, doc: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST the document from a thread; the dict gets 'reply' or 'error' when the client is done."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["reply"] = httpx.post(f"{stack.api_url}/v1/documents", json={"documents": [doc]}, timeout=timeout)
        except httpx.HTTPError as exc:
            out["error"] = exc

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def _delete_while_ingesting(stack: Stack, doc_id: str) -> httpx.Response:
    """DELETE as soon as the retriever has the ingest in flight (it answers 200 with 0 chunks then)."""
    time.sleep(1.0)  # the api has parsed the body and the retriever is embedding
    return httpx.delete(f"{stack.api_url}/v1/documents/{doc_id}", timeout=30)


def test_delete_during_ingest_fences_it_even_when_the_client_gave_up(stack: Stack) -> None:
    doc = {"id": "fence/gave-up.txt", "text": big_text(1)}
    failed_before = _ingested(stack, "failed")
    post = _post_in_background(stack, doc, timeout=0.5)  # the client gives up long before the ingest ends
    deleted = _delete_while_ingesting(stack, doc["id"])
    post["thread"].join(5)
    assert isinstance(post.get("error"), httpx.TimeoutException)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted_chunks"] == 0  # nothing stored yet: the ingest was still running
    _wait_for(lambda: _ingested(stack, "failed") > failed_before, 240, "the fenced ingest to end")
    assert httpx.get(f"{stack.api_url}/v1/documents/{doc['id']}", timeout=30).status_code == 404
    time.sleep(1.0)
    assert httpx.get(f"{stack.api_url}/v1/documents/{doc['id']}", timeout=30).status_code == 404


def test_the_fenced_ingest_reports_why_and_a_later_ingest_creates_again(stack: Stack) -> None:
    doc = {"id": "fence/waited.txt", "text": big_text(2)}
    post = _post_in_background(stack, doc, timeout=300)
    deleted = _delete_while_ingesting(stack, doc["id"])
    post["thread"].join(300)
    assert deleted.status_code == 200 and deleted.json()["deleted_chunks"] == 0, deleted.text
    result = post["reply"].json()["results"][0]
    assert result["status"] == "error" and "deleted while being ingested" in result["error"]
    assert httpx.get(f"{stack.api_url}/v1/documents/{doc['id']}", timeout=30).status_code == 404
    again = httpx.post(f"{stack.api_url}/v1/documents", json={"documents": [doc]}, timeout=300)
    assert again.json()["results"][0]["status"] == "created"
    assert httpx.delete(f"{stack.api_url}/v1/documents/{doc['id']}", timeout=30).json()["deleted_chunks"] > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_nothing_resurfaces_across_a_retriever_restart(stack: Stack, sig: signal.Signals) -> None:
    doc = {"id": f"fence/restart-{sig.name}.txt", "text": big_text(3 + sig)}
    assert _get_status(stack, doc["id"]) == 404  # the api reaches the retriever (an earlier restart is over)
    post = _post_in_background(stack, doc, timeout=0.5)
    deleted = _delete_while_ingesting(stack, doc["id"])
    assert deleted.status_code == 200 and deleted.json()["deleted_chunks"] == 0, deleted.text
    # The retriever goes away with the fenced ingest still embedding (a TERM drains it; a KILL cuts it).
    if sig == signal.SIGTERM:
        stack.stop("retriever")
    else:
        stack.kill("retriever")
    post["thread"].join(5)
    stack.start("retriever")
    stack.wait_ready(("retriever",))
    assert _get_status(stack, doc["id"]) == 404
    # Nothing of it was kept, not even chunks without chunk 0: a new ingest is a creation from scratch.
    again = httpx.post(f"{stack.api_url}/v1/documents", json={"documents": [doc]}, timeout=300)
    assert again.json()["results"][0]["status"] == "created", again.text
    got = httpx.get(f"{stack.api_url}/v1/documents/{doc['id']}", timeout=30).json()
    assert got["text"] == doc["text"] and len(got["chunks"]) == again.json()["results"][0]["chunks"]


def test_concurrent_identical_ingests_have_one_creation(stack: Stack) -> None:
    doc = {"id": "fence/parallel.txt", "text": big_text(9, words=3000)}
    assert _get_status(stack, doc["id"]) == 404
    with ThreadPoolExecutor(3) as pool:
        replies = list(
            pool.map(
                lambda _: httpx.post(f"{stack.api_url}/v1/documents", json={"documents": [doc]}, timeout=300),
                range(3),
            )
        )
    statuses = sorted(r.json()["results"][0]["status"] for r in replies)
    assert statuses == ["created", "unchanged", "unchanged"], [r.text for r in replies]
