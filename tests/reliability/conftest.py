"""The real four-service stack for the reliability suite, shared by its tests and whole before each one."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from ragline.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from ragline_cli.localstack import SERVICES, Stack
from tests.reliability.report import REPORT, SESSION

CORPUS = Path(__file__).resolve().parents[1] / "e2e" / "corpus"

# The stack the suite measures; every value that differs from a service default is here, with its reason.
RELIABILITY_ENV: dict[str, dict[str, str]] = {
    "api": {
        # Admission and the rate limit are the defaults a user gets: with auth off (as `make up` runs) there is no
        # rate limit, and the gateway's adaptive admission limit is what the overload test measures.
        # Deadlines short enough that "completes within its deadline" means something within a test. Each hop
        # gets what is left of the request's 5 s (its own cap, 10 s, is longer). Ingest keeps its own deadline
        # (API_INGEST_TIMEOUT_SECONDS): an upsert takes far longer than a search.
        "API_REQUEST_TIMEOUT_SECONDS": "5",
        "API_STREAM_TIMEOUT_SECONDS": "60",
        # A rolling restart: keep serving this long after SIGTERM while not ready, so the balancer sees it first.
        "API_DRAIN_SECONDS": "1",
    },
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-soak", action="store_true", default=False, help="run the 10-minute soak test")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The fuzzers write random documents into the shared collection: run them after the tests that search it.
    items.sort(key=lambda item: "reliability/test_bad_input" in str(item.path))
    # getoption with a default: this conftest is not an initial one when pytest starts from the repo root.
    if config.getoption("--run-soak", default=False):
        return
    skip = pytest.mark.skip(reason="the soak test runs 10 minutes: pass --run-soak (make soak)")
    for item in items:
        if item.path.name == "test_soak.py":
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SESSION:
        return
    terminalreporter.section("reliability figures")
    for test, figures in SESSION.items():
        checks = figures.get("summary") or {k: v for k, v in figures.items() if not isinstance(v, (dict, list))}
        terminalreporter.write_line(f"{test}: {checks}")
    terminalreporter.write_line(f"full figures: {REPORT}")


def ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/readyz", timeout=2.0).status_code == 200
    return False


def wait_all_ready(stack: Stack, timeout: float) -> float:
    """Seconds until every running process of the stack answers /readyz 200; raises after `timeout`."""
    start = time.monotonic()
    while True:
        if all(ready(p.url) for p in stack.procs.values() if p.popen and p.popen.poll() is None):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            states = {n: ready(p.url) for n, p in stack.procs.items()}
            raise TimeoutError(f"stack not ready after {timeout:.0f}s: {states}")
        time.sleep(0.05)


def ingest_corpus(retriever_grpc: str) -> int:
    """Straight to the retriever, one document a call, with a long deadline: setup, not what is measured."""
    docs = [
        retriever_pb2.Document(id=doc_id(p), text=p.read_text(errors="replace"))
        for p in sorted(CORPUS.rglob("*"))
        if p.is_file()
    ]
    with grpc.insecure_channel(retriever_grpc) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        for doc in docs:
            for _ in range(3):  # setup on a busy machine: an embed deadline may pass; the upsert is idempotent
                reply = stub.Upsert(retriever_pb2.UpsertRequest(documents=[doc]), timeout=120)
                if reply.results[0].status != retriever_pb2.UPSERT_STATUS_FAILED:
                    break
            else:
                raise AssertionError(f"could not ingest {doc.id}: {reply.results[0].error}")
    return len(docs)


def doc_id(path: Path) -> str:
    return str(path.relative_to(CORPUS)).replace("/", ":")


@contextlib.contextmanager
def private_dir(prefix: str) -> Iterator[Path]:
    """A data dir of our own: pytest's numbered tmp dirs are pruned when other pytest sessions start, and this
    suite's services keep writing to theirs for minutes."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_stack() -> Iterator[Stack]:
    with private_dir("ragline-reliability-") as data_dir:
        stack = Stack.on_free_ports(data_dir)
        stack.extra_env = {name: dict(env) for name, env in RELIABILITY_ENV.items()}
        try:
            stack.start_all()
            stack.wait_ready()
            ingest_corpus(stack.procs["retriever"].grpc_addr)
            yield stack
        finally:
            stack.stop_all()


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """The shared stack, whole and ready before each test (a test that kills a service restarts it)."""
    for name in SERVICES:
        popen = shared_stack.procs[name].popen
        if popen is None or popen.poll() is not None:
            shared_stack.start(name)
    wait_all_ready(shared_stack, 120)
    return shared_stack
