"""Ingest one document through the api's published port and assert a cited answer (stdlib only; for compose-smoke)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

DOC_ID = "smoke-lighthouse"
DOC_TEXT = (
    "The Kestrel Point lighthouse stands on the northern cape of Varna Island. It was completed in 1887 by the "
    "engineer Ilse Marrow, and its light can be seen 23 nautical miles out to sea. The keepers left in 1964, "
    "when the lamp was automated; since 2011 the tower has housed a small museum about the island's shipwrecks."
)
QUESTION = "When was the Kestrel Point lighthouse completed, and by whom?"


def call(base: str, method: str, path: str, key: str | None, body: Any = None, timeout: float = 120.0) -> Any:
    """One request; returns (status, parsed JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def check(condition: bool, message: str, detail: Any = None) -> None:
    if not condition:
        raise SystemExit(f"smoke check failed: {message}" + (f": {json.dumps(detail)[:2000]}" if detail else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:18080")
    parser.add_argument("--key", required=True, help="API key (Bearer)")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")

    status, body = call(base, "POST", "/v1/query", None, {"question": QUESTION, "k": 3}, timeout=10)
    check(status == 401, f"a request without a key must get 401, got {status}", body)

    started = time.perf_counter()
    doc = {"id": DOC_ID, "text": DOC_TEXT, "metadata": {"source": "compose-smoke"}}
    status, body = call(base, "POST", "/v1/documents", args.key, {"documents": [doc]})
    ingest_seconds = time.perf_counter() - started
    check(status == 200, f"POST /v1/documents answered {status}", body)

    started = time.perf_counter()
    status, body = call(base, "POST", "/v1/query", args.key, {"question": QUESTION, "k": 3})
    query_seconds = time.perf_counter() - started
    check(status == 200, f"POST /v1/query answered {status}", body)
    citations = body.get("citations") or []
    check(bool(citations), "the answer has no citations", body)
    check(any(c.get("doc_id") == DOC_ID for c in citations), f"no citation of {DOC_ID}", body)
    check(bool((body.get("answer") or "").strip()), "the answer is empty", body)

    json.dump(
        {
            "ingest_seconds": round(ingest_seconds, 3),
            "query_seconds": round(query_seconds, 3),
            "answer": body["answer"],
            "citations": [{"index": c.get("index"), "doc_id": c.get("doc_id")} for c in citations],
            "finish_reason": body.get("finish_reason"),
            "usage": body.get("usage"),
            "release": body.get("release"),
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
