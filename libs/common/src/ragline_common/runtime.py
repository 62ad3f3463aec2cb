"""Process-level settings read by libraries at start-up, shared by every service and every way of running one.

They must be in the environment before `import grpc`, so they are set where processes are started: each
Dockerfile (and through the images compose and Kubernetes), and the local stack (`make up`, tests, benches).
`tests/test_drift.py` checks that every Dockerfile carries the same values as `RUNTIME_ENV`.
"""

from __future__ import annotations

# grpcio's EventEngine client and listener hand every read from an I/O thread to the completion queue that
# grpc.aio polls from yet another thread before the event loop sees it. With them off, the thread polling
# the queue reads the socket itself: one wake-up fewer per message on each side of a hop. Measured on the
# two-core bench machine: unary round trip after 10 ms idle (as between pipeline stages), p50 0.99/0.63 ms
# → 0.50 ms (asyncio loop) and 0.72/0.57 → 0.46 ms (uvloop). Drop an entry to return to grpcio's default.
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"

RUNTIME_ENV: dict[str, str] = {"GRPC_EXPERIMENTS": GRPC_EXPERIMENTS}
