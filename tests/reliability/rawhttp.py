"""A lean HTTP/1.1 keep-alive client for load: a fraction of httpx's CPU per request, which 2 cores need."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# Well below uvicorn's 75 s keep-alive (serve.py): a pooled connection is never reused as the server closes it.
KEEPALIVE_EXPIRY = 30.0


class ConnectionFailed(Exception):
    """No complete answer: refused, reset, or closed before the response ended."""


@dataclass
class Reply:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class RawClient:
    """POST/GET JSON on keep-alive connections to one loopback host; `timeout` bounds each whole request."""

    def __init__(self, base_url: str, *, timeout: float, max_idle: int = 4000) -> None:
        parts = urlsplit(base_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.scheme != "http":
            raise ValueError(f"the load client only talks plain HTTP to loopback, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self.max_idle = max_idle
        # (reader, writer, idle since): reused newest first, dropped when stale, like any HTTP client's pool.
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = deque()
        self.opened = 0

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        while self._idle:
            _, writer, _ = self._idle.popleft()
            writer.close()

    async def post(self, path: str, json_body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        body = json.dumps(json_body).encode() if json_body is not None else b""
        return await self.request("POST", path, body, headers)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return await self.request("GET", path, b"", headers)

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> Reply:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        async with asyncio.timeout(self.timeout):  # TimeoutError: the whole request, not one read
            pooled = self._pooled()
            reused = pooled is not None
            reader, writer = pooled if pooled is not None else await self._connect()
            try:
                writer.write(head.encode("latin-1") + body)
                reply, keep = await self._read(reader)
            except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError) as exc:
                writer.close()
                raise ConnectionFailed(f"{type(exc).__name__}: {exc} (reused connection: {reused})") from None
            except BaseException:
                writer.close()
                raise
        if keep and len(self._idle) < self.max_idle:
            self._idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        return reply

    def _pooled(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """An idle connection the server has not closed and that has not sat longer than KEEPALIVE_EXPIRY.

        A paced load leaves its least-used connection idle for minutes; the server closes it after its own
        keep-alive timeout, and reusing it then fails on the client's side, not the server's."""
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if reader.at_eof() or writer.is_closing() or now - since > KEEPALIVE_EXPIRY:
                writer.close()
                continue
            return reader, writer
        return None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            conn = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise ConnectionFailed(f"connect: {exc}") from None
        self.opened += 1
        return conn

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                key, value = name.strip().lower(), value.strip()
                # A repeated field is one comma-separated list (RFC 9110 §5.3): the api sends two Server-Timing.
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            await reader.readuntil(b"\r\n")
            content = b"".join(parts)
        else:
            content = await reader.read()
            return Reply(status, headers, content), False
        return Reply(status, headers, content), headers.get("connection", "").lower() != "close"
