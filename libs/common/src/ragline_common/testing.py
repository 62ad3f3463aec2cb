"""Helpers for tests that run a real service in-process on free ports (port 0)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ragline_common.serve import Service, run


@contextlib.asynccontextmanager
async def running(service: Service, *, ready_timeout: float = 120.0) -> AsyncIterator[Service]:
    """Run `service` in this event loop until the block exits; wait until it is bound and ready."""
    task = asyncio.create_task(run(service, handle_signals=False))
    try:
        await asyncio.wait_for(service.bound.wait(), 30)
        deadline = asyncio.get_running_loop().time() + ready_timeout
        while not service.readiness.ready:
            if task.done():
                task.result()
                raise RuntimeError(f"{service.name} stopped before it was ready")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{service.name} not ready: {service.readiness.reasons()}")
            await asyncio.sleep(0.05)
        yield service
    finally:
        service.request_stop()
        await asyncio.wait_for(task, service.settings.shutdown_grace_seconds + 10)
