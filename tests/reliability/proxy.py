"""A TCP proxy on loopback that can add latency to every chunk it forwards (a slow network hop)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class DelayProxy:
    """Forwards 127.0.0.1:<port> → target; `delay` seconds are added to each chunk, in order, both ways."""

    def __init__(self, target_host: str, target_port: int) -> None:
        if target_host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the proxy only forwards to loopback, got {target_host!r}")
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Chunks are stamped when read and released at stamp + delay: latency without reordering.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=1024)

        async def pump() -> None:
            while data := await reader.read(65536):
                await queue.put((time.monotonic() + self.delay, data))
            await queue.put((0.0, b""))

        pump_task = asyncio.create_task(pump())
        try:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(min(wait, self.delay + 0.01))
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await pump_task
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5.0)
        except (OSError, TimeoutError):
            writer.close()
            self._conns.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._conns.discard(task)

    async def close(self) -> None:
        if self._server:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server:
            await self._server.wait_closed()


class ProxyThread:
    """A DelayProxy on its own event loop in a daemon thread, so it outlives each test's loop."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.proxy = DelayProxy(target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)

    def start(self) -> ProxyThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self

    @property
    def addr(self) -> str:
        return self.proxy.addr

    def set_delay(self, seconds: float) -> None:
        self.proxy.delay = seconds

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
