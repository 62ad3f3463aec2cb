"""No 500 from any input: a lone UTF-16 surrogate or NUL in every string field of every route's OpenAPI schema,
for all four services' HTTP apps, is a 400 naming the field on a connection that stays usable; every gRPC string
field holding bytes that are not UTF-8 is INVALID_ARGUMENT."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from ragline.embedder.v1 import embedder_pb2
from ragline.generator.v1 import generator_pb2
from ragline.retriever.v1 import retriever_pb2
from ragline_cli.localstack import Stack

pytestmark = pytest.mark.e2e

SERVICES = ("api", "embedder", "retriever", "generator")
BAD = {"surrogate": "\\ud800", "nul": "a\\u0000b"}  # as written in the JSON text


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def string_paths(schema: dict[str, Any], spec: dict[str, Any], depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Every place a string can go, as a path of property names and list indexes."""
    schema = _resolve(schema, spec)
    if depth > 6:
        return
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        yield from string_paths(alt, spec, depth + 1)
    kind = schema.get("type")
    if kind == "string":
        yield ()
    elif kind == "array" and "items" in schema:
        for sub in string_paths(schema["items"], spec, depth + 1):
            yield (0, *sub)
    elif kind == "object" or "properties" in schema:
        for name, prop in schema.get("properties", {}).items():
            for sub in string_paths(prop, spec, depth + 1):
                yield (name, *sub)
        if isinstance(schema.get("additionalProperties"), dict) or schema.get("additionalProperties") is True:
            yield ("free_key",)  # a value under any key of a free-form object (metadata)


def body_with(path: tuple[Any, ...], raw: str) -> str:
    """The JSON text of a body whose only leaf, at `path`, is the raw JSON string `raw`."""
    text = f'"{raw}"'
    for step in reversed(path):
        text = f"[{text}]" if isinstance(step, int) else f'{{"{step}": {text}}}'
    return text


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for route, methods in spec["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                yield method.upper(), route, body["schema"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_string_field_of_every_route_refuses_unencodable_text(stack: Stack, service: str) -> None:
    url = urlsplit(stack.procs[service].url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)  # one keep-alive connection throughout
    conn.request("GET", "/openapi.json")
    spec = json.loads(conn.getresponse().read())
    checked = 0
    for method, route, schema in operations(spec):
        for path in sorted(set(string_paths(schema, spec)), key=str):
            for what, raw in BAD.items():
                body = body_with(path, raw)
                conn.request(method, route, body=body.encode(), headers={"content-type": "application/json"})
                reply = conn.getresponse()
                data = reply.read()
                where = f"{service} {method} {route} {'.'.join(map(str, path))} ({what})"
                assert reply.status == 400, f"{where}: {reply.status} {data[:300]!r}"
                assert reply.getheader("connection", "").lower() != "close", where
                error = json.loads(data)["error"]
                assert error["param"] == ".".join(map(str, path)), f"{where}: {error}"
                checked += 1
    assert checked >= 2
    conn.request("GET", "/healthz")  # the same connection still serves
    assert conn.getresponse().status == 200
    conn.close()


def test_unencodable_path_segments_are_not_a_500(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.ports["api"][0], timeout=60)
    for raw in ("%ED%A0%80", "a%00b", "%FF"):
        for method in ("GET", "DELETE"):
            conn.request(method, f"/v1/documents/{raw}")
            reply = conn.getresponse()
            reply.read()
            assert reply.status in (400, 404), (method, raw, reply.status)
    conn.close()


# gRPC ------------------------------------------------------------------------------------------------------------

PLACEHOLDER = "ZQXZ"
NOT_UTF8 = b"\xed\xa0\x80Z"  # a UTF-16 surrogate encoded as if it were UTF-8: the same length, invalid UTF-8


def grpc_string_fields(descriptor: Any, depth: int = 0) -> Iterator[tuple[FieldDescriptor, ...]]:
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield (field,)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            if field.message_type.full_name.startswith("google.protobuf."):
                continue
            for sub in grpc_string_fields(field.message_type, depth + 1):
                yield (field, *sub)


def request_with(cls: Any, path: tuple[FieldDescriptor, ...]) -> bytes:
    msg = cls()
    node = msg
    for field in path[:-1]:
        child = getattr(node, field.name)
        node = child.add() if field.is_repeated else child
    last = path[-1]
    if last.is_repeated:
        getattr(node, last.name).append(PLACEHOLDER)
    else:
        setattr(node, last.name, PLACEHOLDER)
    data = msg.SerializeToString()
    assert data.count(PLACEHOLDER.encode()) == 1
    return data.replace(PLACEHOLDER.encode(), NOT_UTF8)


@pytest.mark.parametrize(
    ("service", "module"),
    [("embedder", embedder_pb2), ("retriever", retriever_pb2), ("generator", generator_pb2)],
)
def test_every_grpc_string_field_refuses_bytes_that_are_not_utf8(stack: Stack, service: str, module: Any) -> None:
    (svc,) = module.DESCRIPTOR.services_by_name.values()
    checked = 0
    with grpc.insecure_channel(stack.procs[service].grpc_addr) as channel:
        for method in svc.methods:
            cls = getattr(module, method.input_type.name)
            for path in grpc_string_fields(method.input_type):
                name = f"/{svc.full_name}/{method.name}"
                data = request_with(cls, path)
                where = f"{name} {'.'.join(f.name for f in path)}"
                with pytest.raises(grpc.RpcError) as err:
                    if method.server_streaming:
                        list(channel.unary_stream(name)(data, timeout=30))
                    else:
                        channel.unary_unary(name)(data, timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {err.value}"
                checked += 1
    assert checked >= 1  # the embedder has one string field (Embed.texts)
