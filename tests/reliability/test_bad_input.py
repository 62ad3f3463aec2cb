"""Bad input: schemathesis on every HTTP service's OpenAPI, malformed and oversized protobuf to every gRPC method."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ragline.embedder.v1 import embedder_pb2
from ragline.generator.v1 import generator_pb2
from ragline.retriever.v1 import retriever_pb2
from ragline_cli.localstack import SERVICES, Stack
from ragline_common.grpc_client import MAX_MESSAGE_BYTES
from tests.reliability.report import record

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("RAGLINE_RELIABILITY_FUZZ_EXAMPLES", "25"))
SEED = 20261123
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
TRACE = re.compile(r"Traceback|File \"/|site-packages/")


@pytest.fixture
def api_with_default_deadlines(stack: Stack) -> Iterator[Stack]:
    """An api replica with the service's own deadlines: the suite's 5 s is for fault tests, and a fuzzed prompt of
    4,000 characters legitimately takes longer to read on 2 cores (a 504 there is no input-handling bug)."""
    stack.extra_env["api-fuzz"] = {"API_REQUEST_TIMEOUT_SECONDS": "30"}
    stack.start_replica("api", "api-fuzz")
    try:
        stack.wait_ready(("api-fuzz",), 120.0)
        yield stack
    finally:
        stack.stop("api-fuzz")


@pytest.mark.parametrize("service", SERVICES)
def test_schemathesis_finds_no_server_error(api_with_default_deadlines: Stack, service: str, tmp_path: Path) -> None:
    stack = api_with_default_deadlines
    proc = stack.procs["api-fuzz" if service == "api" else service]
    report = tmp_path / "st.json"
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{proc.url}/openapi.json",
        "--checks", "not_a_server_error,no_stack_trace",
        "--max-examples", str(EXAMPLES),
        "--seed", str(SEED),
        "--generation-deterministic",
        "--request-timeout", "40",
        "--workers", "1",
        "--no-color",
        "--report", "ndjson",
        "--report-ndjson-path", str(report),
        "--exclude-path-regex", "^/metrics$",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.reliability.st_hooks", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=290, cwd=ROOT)  # noqa: S603
    out = result.stdout + result.stderr
    summary = {
        "service": service,
        "exit_code": result.returncode,
        "examples_per_operation": EXAMPLES,
        "alive": proc.popen.poll() is None,  # type: ignore[union-attr]
        "tail": out.strip().splitlines()[-12:],
        "failures": out[out.find("FAILURES") :][:3000] if "FAILURES" in out else "",
    }
    record(f"bad_input_http[{service}]", {"summary": {k: summary[k] for k in ("exit_code", "alive")}, **summary})
    assert proc.popen.poll() is None, f"{service} died: {stack.tail(service)}"  # type: ignore[union-attr]
    assert result.returncode == 0, out[-6000:]


def _grpc_methods() -> list[tuple[str, str, str, bool, type]]:
    """(service key, full service name, method, server-streaming, request class) for every method we serve."""
    out = []
    for key, module in (("embedder", embedder_pb2), ("retriever", retriever_pb2), ("generator", generator_pb2)):
        for svc in module.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.append((key, svc.full_name, m.name, m.server_streaming, m.input_type._concrete_class))
    return out


def _length_delimited(field: int, payload: bytes) -> bytes:
    n, varint = len(payload), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        varint.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([field << 3 | 2]) + bytes(varint) + payload


def bad_payloads(request_cls: type) -> dict[str, bytes]:
    rng = random.Random(SEED)  # noqa: S311 - test data
    valid = retriever_pb2.SearchRequest(query="x" * 40, k=3).SerializeToString()
    return {
        "garbage": b"\xff\xff\xff\xff\xff",
        "random": bytes(rng.randrange(256) for _ in range(256)),
        "truncated": valid[: len(valid) // 2],
        "bad_varint": b"\x08" + b"\xff" * 11,
        "wrong_wire_type": b"\x0d\x00\x00",  # field 1 as fixed32
        "nested_garbage": _length_delimited(1, b"\xff" * 64),
        "empty": b"",
        "deep_nesting": _length_delimited(3, _length_delimited(1, _length_delimited(1, b"\x0a\x80\x80\x80\x80\x10"))),
        "large_field_2mb": _length_delimited(1, b"a" * 2_000_000),
        "other_type": generator_pb2.GenerateRequest(
            messages=[generator_pb2.ChatMessage(role="user", content="hi")]
        ).SerializeToString()
        if request_cls is not generator_pb2.GenerateRequest
        else retriever_pb2.UpsertRequest().SerializeToString(),
    }


def test_malformed_and_oversized_protobuf_never_gives_internal(stack: Stack) -> None:
    results: dict[str, dict[str, str]] = {}
    failures = []
    grpc_services = {
        "embedder": "ragline.embedder.v1.EmbedderService",
        "retriever": "ragline.retriever.v1.RetrieverService",
        "generator": "ragline.generator.v1.GeneratorService",
    }
    for key, full, method, streaming, request_cls in _grpc_methods():
        addr = stack.procs[key].grpc_addr
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        with grpc.insecure_channel(addr, options=options) as channel:
            path = f"/{full}/{method}"
            make = channel.unary_stream if streaming else channel.unary_unary
            call = make(path, request_serializer=None, response_deserializer=None)
            payloads = bad_payloads(request_cls)
            if method == next(m for k, f, m, _, _ in _grpc_methods() if f == full):
                payloads["over_max_message"] = _length_delimited(1, b"a" * (MAX_MESSAGE_BYTES + 1024))
            for name, payload in payloads.items():
                try:
                    reply = call(payload, timeout=30)
                    if streaming:
                        for _ in reply:
                            pass
                    code, details = "OK", ""
                except grpc.RpcError as exc:
                    code, details = exc.code().name, exc.details() or ""  # type: ignore[attr-defined]
                results.setdefault(f"{key}.{method}", {})[name] = code
                if grpc.StatusCode[code] in BAD_CODES or TRACE.search(details):
                    failures.append(f"{key}.{method} {name}: {code} {details[:200]}")
        assert stack.procs[key].popen.poll() is None, f"{key} died: {stack.tail(key)}"  # type: ignore[union-attr]
    # The health service every process serves, api included.
    for key in SERVICES:
        with grpc.insecure_channel(stack.procs[key].grpc_addr) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None)
            for name, payload in {"garbage": b"\xff\xff\xff", "wrong_wire_type": b"\x0d\x00\x00"}.items():
                try:
                    check(payload, timeout=10)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name  # type: ignore[attr-defined]
                results.setdefault(f"{key}.Health.Check", {})[name] = code
                if grpc.StatusCode[code] in BAD_CODES:
                    failures.append(f"{key}.Health.Check {name}: {code}")
    codes: dict[str, int] = {}
    for per_method in results.values():
        for code in per_method.values():
            codes[code] = codes.get(code, 0) + 1
    record(
        "bad_input_grpc",
        {
            "summary": {"calls": sum(codes.values()), "codes": codes, "failures": len(failures)},
            "services": list(grpc_services),
            "results": results,
            "failures": failures[:30],
        },
    )
    assert not failures, json.dumps(failures[:20], indent=1)
    for key in SERVICES:
        assert stack.procs[key].popen.poll() is None, f"{key} died"  # type: ignore[union-attr]
