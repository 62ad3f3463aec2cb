"""`ragline`: ingest files, ask questions and search, against the public REST API at RAGLINE_URL."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from tqdm import tqdm

from ragline_cli import __version__
from ragline_cli.documents import SourceFile, discover, read_text
from ragline_cli.sources import format_sources

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


# Worth waiting for: the stack is starting or restarting a service (503), or is busy (429).
RETRYABLE = {429, 503}
MAX_PAUSE = 10.0


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class Client:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        headers = {"user-agent": f"ragline-cli/{__version__}"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self._sleep = sleep
        self._clock = clock

    def _post_once(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = self.http.post(path, json=body)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach {self.http.base_url}: {exc}", retry_after=1.0) from None
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.http.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise ApiError(
                f"{response.status_code}: {message}", status=response.status_code, retry_after=_retry_after(response)
            )
        return response.json()

    def post(self, path: str, body: dict[str, Any], *, wait: float = 0.0) -> Any:
        """POST and return the JSON answer. With `wait`, a 503 or 429 (or no answer at all) is retried after its
        Retry-After, saying so on stderr, for up to `wait` s in all: an upsert is safe to repeat."""
        give_up_at = self._clock() + wait
        attempt = 1
        while True:
            try:
                return self._post_once(path, body)
            except ApiError as exc:
                retryable = exc.status in RETRYABLE or (exc.status is None and exc.retry_after is not None)
                pause = min(MAX_PAUSE, max(0.5, exc.retry_after or 1.0))
                if not retryable or self._clock() + pause > give_up_at:
                    raise
                print(f"{exc}; retrying in {pause:g}s (attempt {attempt + 1})", file=sys.stderr, flush=True)
                self._sleep(pause)
                attempt += 1


def cmd_ingest(client: Client, args: argparse.Namespace) -> int:
    try:
        files = list(discover(args.paths))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("nothing to ingest (no .txt, .md, .rst or .html files found)", file=sys.stderr)
        return 2
    failed = 0
    counts: dict[str, int] = {}
    batch: list[tuple[SourceFile, str]] = []
    results: list[str] = []

    def flush() -> None:
        nonlocal failed
        if not batch:
            return
        docs = [
            {"id": args.id_prefix + f.doc_id, "text": text, "metadata": {"source": str(f.path)}} for f, text in batch
        ]
        try:
            reply = client.post("/v1/documents", {"documents": docs}, wait=args.wait)
            statuses = reply.get("results") or reply.get("documents") or []
        except ApiError as exc:
            statuses = [{"id": d["id"], "status": "error", "error": str(exc)} for d in docs]
        for item in statuses:
            status = item.get("status", "?")
            counts[status] = counts.get(status, 0) + 1
            if status in ("error", "failed"):
                failed += 1
            detail = item.get("error") or (f"{item['chunks']} chunks" if item.get("chunks") is not None else "")
            results.append(f"{status:>9}  {item.get('id')}  {detail}".rstrip())
        batch.clear()

    for f in tqdm(files, desc="ingesting", unit="file", disable=args.quiet or not sys.stderr.isatty()):
        try:
            batch.append((f, read_text(f.path)))
        except (OSError, ValueError) as exc:
            failed += 1
            counts["skipped"] = counts.get("skipped", 0) + 1
            results.append(f"{'skipped':>9}  {f.doc_id}  {exc}")
            continue
        # Bounded requests: a few documents or about 512 KiB, whichever comes first.
        if len(batch) >= args.batch_size or sum(len(t) for _, t in batch) >= 512 * 1024:
            flush()
    flush()
    if not args.quiet:
        print("\n".join(results))
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 1 if failed else 0


def cmd_ask(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"question": args.question, "k": args.k}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    reply = client.post("/v1/query", body)
    answer = reply.get("answer", "").strip()
    print(answer)
    sources = format_sources(reply.get("citations") or [], answer, reply.get("context_used"))
    if sources:
        print("\nSources:", *sources, sep="\n")
    return 0


def cmd_search(client: Client, args: argparse.Namespace) -> int:
    reply = client.post("/v1/search", {"query": args.query, "k": args.k})
    hits = reply.get("hits") or []
    if not hits:
        print("no hits")
    for i, h in enumerate(hits, 1):
        snippet = " ".join(str(h.get("text", "")).split())[:100]
        print(f"{i:>3}. {h.get('score', 0):.3f}  {h.get('doc_id')}  {snippet}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ragline", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("RAGLINE_URL", DEFAULT_URL), help="API base URL (RAGLINE_URL)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ingest", help="ingest files or folders of text, Markdown or HTML")
    p.add_argument("paths", nargs="+")
    p.add_argument("--id-prefix", default="", help="prepended to every document id")
    p.add_argument("--batch-size", type=int, default=8, help="documents per request (at most ~512 KiB)")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary line")
    p.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to keep retrying a batch the API refuses for now (503 starting/restarting, 429 busy), "
        "after its Retry-After; 0 = no retry",
    )
    p = sub.add_parser("ask", help="answer a question with citations")
    p.add_argument("question")
    p.add_argument("-k", type=int, default=4, help="passages to retrieve")
    p.add_argument("--max-tokens", type=int, default=0)
    p = sub.add_parser("search", help="retrieval only: ranked passages")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5)
    args = parser.parse_args(argv)
    client = Client(args.url, os.environ.get("RAGLINE_API_KEY"), args.timeout)
    handlers = {"ingest": cmd_ingest, "ask": cmd_ask, "search": cmd_search}
    try:
        code = handlers[args.command](client, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
