"""A Qdrant server stand-in on loopback: qdrant-client's own gRPC servicers in front of its local-mode engine."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import grpc
import pydantic
from google.protobuf.message import Message
from qdrant_client import AsyncQdrantClient, models
from qdrant_client import grpc as qg
from qdrant_client.conversions.conversion import GrpcToRest, RestToGrpc

# A real server listens on 6333 (REST) and 6334 (gRPC), and qdrant-client derives the gRPC port from the REST URL
# by that convention; a random 127/8 address lets every test use the real ports without colliding.
REST_PORT = 6333
GRPC_PORT = 6334

Req = TypeVar("Req", bound=Message)
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Message]]


@dataclass
class Fault:
    code: grpc.StatusCode | None
    details: str
    delay: float
    retry_after: int | None


class _State:
    """What the servicers share: the engine, the version it reports, injected faults and the requests seen."""

    def __init__(self, engine: AsyncQdrantClient, version: str) -> None:
        self.engine = engine
        self.version = version
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.requests: dict[str, list[Message]] = defaultdict(list)
        self.rest_status: int | None = None
        self.rest_paths: list[str] = []


def _refuse_unknown(request: Message, honoured: set[str]) -> str | None:
    """Name the fields this stand-in would silently ignore: a test must not pass on a parameter nobody applied."""
    extra = sorted(f.name for f, _ in request.ListFields() if f.name not in honoured)
    return f"{type(request).__name__} fields {extra} are not implemented by this stand-in" if extra else None


def _rpc(*honoured: str) -> Callable[[Handler], Handler]:
    allowed = {"collection_name", *honoured}

    def wrap(handler: Handler) -> Handler:
        async def run(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Message:
            state: _State = self.state
            name = handler.__name__
            state.requests[name].append(request)
            if state.faults[name]:
                fault = state.faults[name].pop(0)
                await asyncio.sleep(fault.delay)
                if fault.code is not None:
                    trailing = (("retry-after", str(fault.retry_after)),) if fault.retry_after else ()
                    await context.abort(fault.code, fault.details, trailing_metadata=trailing)
            problem = _refuse_unknown(request, allowed)
            if problem:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, problem)
            try:
                return await handler(self, request, context)
            except (ValueError, pydantic.ValidationError) as exc:
                # Local mode raises ValueError where the server answers NOT_FOUND or INVALID_ARGUMENT.
                text = str(exc)
                code = grpc.StatusCode.NOT_FOUND if "not found" in text.lower() else grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, text[:500])
            raise AssertionError("unreachable: abort raises")

        run.__name__ = handler.__name__
        return run

    return wrap


def _with_payload(request: Any) -> Any:
    has = request.HasField("with_payload")
    return GrpcToRest.convert_with_payload_selector(request.with_payload) if has else False


def _with_vectors(request: Any) -> Any:
    has = request.HasField("with_vectors")
    return GrpcToRest.convert_with_vectors_selector(request.with_vectors) if has else False


def _update_reply(result: models.UpdateResult) -> qg.PointsOperationResponse:
    return qg.PointsOperationResponse(result=RestToGrpc.convert_update_result(result), time=0.0)


class _Root(qg.QdrantServicer):
    def __init__(self, state: _State) -> None:
        self.state = state

    @_rpc()
    async def HealthCheck(self, request: qg.HealthCheckRequest, context: Any) -> qg.HealthCheckReply:
        return qg.HealthCheckReply(title="qdrant - vector search engine", version=self.state.version, commit="")


class _Collections(qg.CollectionsServicer):
    def __init__(self, state: _State) -> None:
        self.state = state

    @_rpc()
    async def CollectionExists(self, request: qg.CollectionExistsRequest, context: Any) -> Message:
        exists = await self.state.engine.collection_exists(request.collection_name)
        return qg.CollectionExistsResponse(result=qg.CollectionExists(exists=exists), time=0.0)

    @_rpc()
    async def Get(self, request: qg.GetCollectionInfoRequest, context: Any) -> Message:
        info = await self.state.engine.get_collection(request.collection_name)
        return qg.GetCollectionInfoResponse(result=RestToGrpc.convert_collection_info(info), time=0.0)

    @_rpc("vectors_config", "sparse_vectors_config", "metadata")
    async def Create(self, request: qg.CreateCollection, context: Any) -> Message:
        if await self.state.engine.collection_exists(request.collection_name):
            # The server's words and code for a second create of the same name.
            raise ValueError(f"Wrong input: Collection `{request.collection_name}` already exists!")
        ok = await self.state.engine.create_collection(
            request.collection_name,
            vectors_config=GrpcToRest.convert_vectors_config(request.vectors_config),
            sparse_vectors_config=GrpcToRest.convert_sparse_vector_config(request.sparse_vectors_config),
            metadata=GrpcToRest.convert_payload(request.metadata) if request.metadata else None,
        )
        return qg.CollectionOperationResponse(result=ok, time=0.0)


class _Points(qg.PointsServicer):
    def __init__(self, state: _State) -> None:
        self.state = state
        self.field_indexes: dict[str, dict[str, models.PayloadSchemaType]] = defaultdict(dict)

    @_rpc("wait", "field_name", "field_type")
    async def CreateFieldIndex(self, request: qg.CreateFieldIndexCollection, context: Any) -> Message:
        if not await self.state.engine.collection_exists(request.collection_name):
            raise ValueError(f"Collection {request.collection_name} not found")
        # Local mode keeps no payload index; record it so a test can read back what the server would build.
        schema = models.PayloadSchemaType(qg.FieldType.Name(request.field_type).removeprefix("FieldType").lower())
        self.field_indexes[request.collection_name][request.field_name] = schema
        return _update_reply(models.UpdateResult(operation_id=0, status=models.UpdateStatus.COMPLETED))

    @_rpc("wait", "points")
    async def Upsert(self, request: qg.UpsertPoints, context: Any) -> Message:
        points = [GrpcToRest.convert_point_struct(p) for p in request.points]
        return _update_reply(await self.state.engine.upsert(request.collection_name, points, wait=request.wait))

    @_rpc("wait", "points")
    async def Delete(self, request: qg.DeletePoints, context: Any) -> Message:
        selector = GrpcToRest.convert_points_selector(request.points)
        return _update_reply(await self.state.engine.delete(request.collection_name, selector, wait=request.wait))

    @_rpc("filter", "exact")
    async def Count(self, request: qg.CountPoints, context: Any) -> Message:
        flt = GrpcToRest.convert_filter(request.filter) if request.HasField("filter") else None
        result = await self.state.engine.count(request.collection_name, count_filter=flt, exact=request.exact)
        return qg.CountResponse(result=RestToGrpc.convert_count_result(result), time=0.0)

    @_rpc("ids", "with_payload", "with_vectors")
    async def Get(self, request: qg.GetPoints, context: Any) -> Message:
        records = await self.state.engine.retrieve(
            request.collection_name,
            [GrpcToRest.convert_point_id(i) for i in request.ids],
            with_payload=_with_payload(request),
            with_vectors=_with_vectors(request),
        )
        return qg.GetResponse(result=[RestToGrpc.convert_retrieved_point(r) for r in records], time=0.0)

    @_rpc("filter", "offset", "limit", "with_payload", "with_vectors")
    async def Scroll(self, request: qg.ScrollPoints, context: Any) -> Message:
        records, next_offset = await self.state.engine.scroll(
            request.collection_name,
            scroll_filter=GrpcToRest.convert_filter(request.filter) if request.HasField("filter") else None,
            limit=request.limit if request.HasField("limit") else 10,
            offset=GrpcToRest.convert_point_id(request.offset) if request.HasField("offset") else None,
            with_payload=_with_payload(request),
            with_vectors=_with_vectors(request),
        )
        reply = qg.ScrollResponse(result=[RestToGrpc.convert_retrieved_point(r) for r in records], time=0.0)
        if next_offset is not None:
            reply.next_page_offset.CopyFrom(RestToGrpc.convert_extended_point_id(next_offset))
        return reply

    @_rpc("prefetch", "query", "using", "filter", "limit", "with_payload", "with_vectors")
    async def Query(self, request: qg.QueryPoints, context: Any) -> Message:
        q = GrpcToRest.convert_query_points(request)
        result = await self.state.engine.query_points(
            request.collection_name,
            query=q.query,
            using=q.using,
            prefetch=q.prefetch,
            query_filter=q.filter,
            limit=q.limit or 10,
            with_payload=q.with_payload if q.with_payload is not None else False,  # the server's default
            with_vectors=q.with_vector or False,
        )
        return qg.QueryResponse(result=[RestToGrpc.convert_scored_point(p) for p in result.points], time=0.0)


def _rest_handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class RestRoot(BaseHTTPRequestHandler):
        """GET / answers as the server's root does (qdrant-client's version check reads it); the rest of REST
        answers the injected status with the server's error body, or 404."""

        def _answer(self) -> None:
            state.rest_paths.append(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body: dict[str, Any]
            if self.path == "/" and state.rest_status is None:
                status, body = 200, {"title": "qdrant - vector search engine", "version": state.version}
            else:
                status = state.rest_status or 404
                body = {"status": {"error": f"injected status {status} for {self.path}"}, "time": 0.0}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "3")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return None

    return RestRoot


class QdrantStandIn:
    """gRPC on <addr>:6334 and the REST root on <addr>:6333, where <addr> is a free 127/8 address."""

    def __init__(self, version: str) -> None:
        # In memory: local mode on disk commits each point to sqlite (3.6 s for 300 points here), past the deadline.
        self.state = _State(AsyncQdrantClient(location=":memory:"), version)
        self.host = ""
        self._grpc: grpc.aio.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._points: _Points | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{REST_PORT}"

    @property
    def field_indexes(self) -> dict[str, dict[str, models.PayloadSchemaType]]:
        assert self._points is not None
        return self._points.field_indexes

    def requests(self, rpc: str) -> list[Message]:
        return self.state.requests[rpc]

    def fail(
        self,
        rpc: str,
        code: grpc.StatusCode | None,
        details: str = "injected",
        *,
        delay: float = 0.0,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next call of `rpc` with `code` (None = only the delay, then the real answer)."""
        self.state.faults[rpc].append(Fault(code, details, delay, retry_after))

    def set_version(self, version: str) -> None:
        self.state.version = version

    def set_rest_status(self, status: int | None) -> None:
        self.state.rest_status = status

    async def start(self) -> None:
        for _ in range(20):
            host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"  # noqa: S311
            server = grpc.aio.server()
            try:
                server.add_insecure_port(f"{host}:{GRPC_PORT}")
                http = ThreadingHTTPServer((host, REST_PORT), _rest_handler(self.state))
            except (RuntimeError, OSError):
                await server.stop(None)
                continue
            self._points = _Points(self.state)
            qg.add_QdrantServicer_to_server(_Root(self.state), server)
            qg.add_CollectionsServicer_to_server(_Collections(self.state), server)
            qg.add_PointsServicer_to_server(self._points, server)
            await server.start()
            http.daemon_threads = True
            # shutdown() waits for the loop's next poll: 50 ms, not the default 500 ms, per stand-in stopped.
            threading.Thread(target=http.serve_forever, args=(0.05,), name="qdrant-rest", daemon=True).start()
            self.host, self._grpc, self._http = host, server, http
            return
        raise RuntimeError("no free 127/8 address with ports 6333 and 6334 after 20 tries")

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        await self.state.engine.close()
