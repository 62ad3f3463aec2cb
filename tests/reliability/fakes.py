"""A faulty gRPC peer for the retry tests: the retriever and generator APIs answering UNAVAILABLE on a pattern."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ragline.generator.v1 import generator_pb2
from ragline.retriever.v1 import retriever_pb2

RETRIEVER = "ragline.retriever.v1.RetrieverService"
GENERATOR = "ragline.generator.v1.GeneratorService"


class FaultyPeer:
    """Stands in for a faulty retriever + generator. `fail_every`: 1 = every attempt fails, 10 = every 10th, 0 = none.

    "Every 10th attempt" makes 10 % transient failures exact and reproducible: a retried attempt lands on
    another counter value, so a retry is what a transient failure needs, and no run is luckier than another.
    """

    def __init__(self, fail_every: int = 1, fail_methods: set[str] | None = None) -> None:
        self.fail_every = fail_every
        self.fail_methods = fail_methods  # None: every method
        self.attempts: Counter[str] = Counter()
        self._seq = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((self._handlers(),))
        health_servicer = health.HealthServicer()
        for name in ("", RETRIEVER, GENERATOR):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultyPeer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None).wait(10)

    def reset(self, fail_every: int, fail_methods: set[str] | None = None) -> None:
        with self._lock:
            self.fail_every = fail_every
            self.fail_methods = fail_methods
            self.attempts.clear()
            self._seq = 0

    def _fails(self, method: str) -> bool:
        with self._lock:
            self.attempts[method] += 1
            if self.fail_methods is not None and method not in self.fail_methods:
                return False
            self._seq += 1
            return self.fail_every > 0 and self._seq % self.fail_every == 0

    def _unary(self, method: str, reply: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            if self._fails(method):
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected transient failure")
            return reply(request)

        return handle

    def _stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if self._fails("GenerateStream"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected transient failure")
        yield generator_pb2.GenerateChunk(delta="fake")
        yield generator_pb2.GenerateChunk(
            finish_reason=generator_pb2.FINISH_REASON_STOP,
            usage=generator_pb2.Usage(prompt_tokens=1, completion_tokens=1),
            model="fake",
            prompt_version="fake",
        )

    def _handlers(self) -> grpc.GenericRpcHandler:
        r, g = retriever_pb2, generator_pb2

        def unary(method: str, req: Any, resp: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, resp), req.FromString, lambda m: m.SerializeToString()
            )

        hit = r.Hit(doc_id="fake", chunk_id="00000000-0000-0000-0000-000000000000", text="fake", score=1.0, end=4)
        retriever = {
            "Search": unary("Search", r.SearchRequest, lambda q: r.SearchResponse(hits=[hit])),
            "Upsert": unary(
                "Upsert",
                r.UpsertRequest,
                lambda q: r.UpsertResponse(
                    results=[r.UpsertResult(id=d.id, status=r.UPSERT_STATUS_CREATED, chunks=1) for d in q.documents]
                ),
            ),
            "Delete": unary("Delete", r.DeleteRequest, lambda q: r.DeleteResponse(deleted_chunks=1)),
            "Get": unary("Get", r.GetRequest, lambda q: r.GetResponse(document=r.Document(id=q.id, text="fake"))),
            "Info": unary("RetrieverInfo", r.InfoRequest, lambda q: r.InfoResponse(collection="fake", dimension=384)),
        }
        generator = {
            "Generate": unary(
                "Generate",
                g.GenerateRequest,
                lambda q: g.GenerateResponse(
                    text="fake",
                    finish_reason=g.FINISH_REASON_STOP,
                    usage=g.Usage(prompt_tokens=1, completion_tokens=1),
                    model="fake",
                    prompt_version="fake",
                ),
            ),
            "GenerateStream": grpc.unary_stream_rpc_method_handler(
                self._stream, g.GenerateRequest.FromString, lambda m: m.SerializeToString()
            ),
            "Info": unary("GeneratorInfo", g.InfoRequest, lambda q: g.InfoResponse(engine="fake", model="fake")),
        }
        handlers = {f"/{RETRIEVER}/{name}": h for name, h in retriever.items()}
        handlers |= {f"/{GENERATOR}/{name}": h for name, h in generator.items()}

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                return handlers.get(details.method)

        return Handler()
