"""End-to-end benchmark: the pipeline in one process vs the four services over gRPC, same machine, same data."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from ragline_cli.documents import discover, read_text
from ragline_cli.localstack import Stack, free_port
from ragline_common.runtime import RUNTIME_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_load import System, closed_loop, measure_round, summary  # noqa: E402
from e2e_report import targets, write_markdown, write_plot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
E2E_CORPUS = ROOT / "tests" / "e2e" / "corpus"
EXTRA_CORPUS = Path("/usr/share/doc/nodejs/api")
# Two cores: one compute pool per model, sized on purpose and the same in both cases. The embedder and the
# vector store get one thread each (they run side by side under search load); llama.cpp gets both cores
# (nothing else runs while it generates). The api has no model; its value is recorded but unused.
THREADS = {"embedder": 1, "retriever": 1, "generator": 2, "api": 1}
# Rate limiting is per caller and every benchmark client is one caller (127.0.0.1): off in both cases.
# Four queued answers on two cores take longer than the api's default 30 s deadline: 120 s in both cases.
# The api's adaptive admission limit follows latency, which other work on a shared machine moves: held at its
# ceiling, as the one process's fixed limiter is, so that neither system refuses what the other admits.
COMMON_ENV = {
    "API_RATE_LIMIT_PER_SECOND": "0",
    "API_ENABLE_AUTH": "false",
    "API_REQUEST_TIMEOUT_SECONDS": "120",
    "API_MIN_CONCURRENCY": "64",
    "API_MAX_CONCURRENCY": "64",
}
# Given to every process of both systems. OpenMP threads that spin at barriers wreck llama.cpp as soon as anything
# else wants a core (the generator sets this itself; the single process loads libgomp with torch, before that).
# RUNTIME_ENV (grpcio's settings) is what every ragline process gets, in images and in the local stack alike.
MODEL_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **RUNTIME_ENV}
QUESTIONS = [
    "How do I read a file line by line?",
    "What does fs.watch do?",
    "How do I create an HTTP/2 server?",
    "What is a Buffer and how is it allocated?",
    "How are uncaught exceptions handled?",
    "How do I spawn a child process and read its output?",
    "What is the difference between setImmediate and setTimeout?",
    "How do streams handle backpressure?",
    "How do I verify a signature with the crypto module?",
    "What does the cluster module do?",
    "How do I resolve a hostname to an IP address?",
    "What is a dpkg trigger?",
    "How do I compress data with zlib?",
    "How are worker threads started?",
    "What does process.nextTick do?",
    "How can I measure performance with timers?",
    "What is an AbortSignal?",
    "How do I create a TCP server?",
    "What is the REPL?",
    "How do ES modules differ from CommonJS?",
    "How do I parse a URL?",
    "What does util.promisify do?",
    "How does the event emitter remove listeners?",
    "How do I create a readline interface?",
    "What is N-API used for?",
    "How do I run code in a V8 context?",
    "How do I set file permissions?",
    "What is a diagnostics channel?",
    "How do I use the test runner?",
    "What does zstd do with a dictionary?",
    "How is the password file managed on Debian?",
    "How do I check an ext4 file system?",
]


# ---- corpus --------------------------------------------------------------------------------------------------


def _split(text: str, limit: int) -> list[str]:
    """Cut long texts at blank lines into parts of at most ~limit characters (one upsert stays small)."""
    parts: list[str] = []
    current = ""
    for para in text.split("\n\n"):
        if current and len(current) + len(para) + 2 > limit:
            parts.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current.strip():
        parts.append(current)
    return [p[i : i + limit] for p in parts for i in range(0, len(p), limit)]


def build_corpus(max_chars: int, part_chars: int = 24_000) -> list[dict[str, str]]:
    docs: list[dict[str, str]] = []
    total = 0
    roots = [(E2E_CORPUS, "e2e")] + ([(EXTRA_CORPUS, "nodejs")] if EXTRA_CORPUS.is_dir() else [])
    for root, prefix in roots:
        for src in discover([str(root)]):
            if src.path.suffix not in {".md", ".txt", ""} or src.path.name == "SOURCES.md":
                continue
            try:
                text = read_text(src.path)
            except ValueError:
                continue
            for i, part in enumerate(_split(text, part_chars)):
                if total >= max_chars:
                    return docs
                docs.append({"id": f"{prefix}:{src.doc_id.replace('/', ':')}:{i}", "text": part})
                total += len(part)
    return docs


def prepare_collection(work: Path, docs: list[dict[str, str]]) -> dict[str, Any]:
    """Ingest the corpus once (cached by content) and give each system its own copy of the same collection."""
    blob = json.dumps(docs, sort_keys=True).encode()
    stamp = hashlib.sha256(blob).hexdigest()[:16]
    collection = work / "collection"
    info_path = collection / "ingest.json"
    info: dict[str, Any] | None = None
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("corpus") != stamp:
            info = None
    if info is None:
        shutil.rmtree(collection, ignore_errors=True)
        collection.mkdir(parents=True)
        (work / "corpus.json").write_bytes(blob)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "RETRIEVER_DATA_DIR": str(collection / "retriever"),
            "RETRIEVER_EMBEDDER_ADDR": "127.0.0.1:9",
        }
        threads = os.cpu_count() or 1
        print(f"ingesting the corpus once with {threads} threads (cached in {collection}) …", flush=True)
        out = subprocess.run(  # noqa: S603 - our own interpreter and script
            [
                sys.executable,
                str(Path(__file__).resolve().parent / "e2e_ingest.py"),
                str(work / "corpus.json"),
                str(threads),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ingest failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        info = {"corpus": stamp, "threads": threads, **json.loads(out.stdout.strip().splitlines()[-1])}
        info_path.write_text(json.dumps(info))
    for target in (work / "inprocess" / "retriever", work / "services" / "retriever"):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(collection / "retriever", target)
    return info


# ---- the two systems under test ------------------------------------------------------------------------------


def start_inprocess(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        **COMMON_ENV,
        **MODEL_ENV,
        "API_HOST": "127.0.0.1",
        "API_HTTP_PORT": str(port),
        "API_GRPC_PORT": "0",
        # Required by the settings classes; nothing connects to them in one process.
        "API_RETRIEVER_ADDR": "127.0.0.1:9",
        "API_GENERATOR_ADDR": "127.0.0.1:9",
        "API_EMBEDDER_ADDR": "127.0.0.1:9",
        "RETRIEVER_EMBEDDER_ADDR": "127.0.0.1:9",
        "RETRIEVER_DATA_DIR": str(work / "retriever"),
        **{f"{name.upper()}_THREADS": str(n) for name, n in THREADS.items()},
    }
    work.mkdir(parents=True, exist_ok=True)
    with (work / "inprocess.log").open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, str(Path(__file__).resolve().parent / "e2e_inprocess.py")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"the single-process server exited ({proc.returncode}):\n{tail}")
            with suppress(httpx.HTTPError):
                if client.get(url + "/readyz").status_code == 200:
                    return
            time.sleep(0.25)
    raise TimeoutError(f"the single-process server was not ready after {timeout:.0f}s")


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---- cases ---------------------------------------------------------------------------------------------------


def bodies(route: str, args: Any) -> list[bytes]:
    if route == "/v1/search":
        return [json.dumps({"query": q, "k": args.k}).encode() for q in QUESTIONS]
    k, max_tokens = args.query_k, args.max_tokens
    # temperature 0: greedy decoding, so both systems generate the same tokens for the same prompt.
    return [json.dumps({"question": q, "k": k, "max_tokens": max_tokens, "temperature": 0}).encode() for q in QUESTIONS]


CASES = [("/v1/search", 1), ("/v1/search", 8), ("/v1/search", 32), ("/v1/query", 1), ("/v1/query", 4)]


async def warm_up(session: aiohttp.ClientSession, system: System, route: str, clients: int, args: Any) -> None:
    """Not measured: connections open, batch sizes and caches settle at this concurrency."""
    search = route == "/v1/search"
    await closed_loop(
        session,
        system.base + route,
        bodies(route, args),
        clients=clients,
        max_requests=args.warmup_requests * clients if search else clients,
        max_seconds=args.warmup_seconds,
    )


async def measure(
    single: str, single_pid: int, stack: Stack, args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    timeout = aiohttp.ClientTimeout(total=300)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        same = await same_answers(session, single, stack.api_url, args.k)
        # The load generator's own CPU is counted too: it shares the cores with the system under test.
        me = {"load_generator": os.getpid()}
        systems = {
            "single_process": System(single, [single], {"single_process": single_pid, **me}),
            "services": System(stack.api_url, [p.url for p in stack.procs.values()], {**stack.pids(), **me}),
        }
        cases = []
        for route, clients in CASES:
            if (route, clients) not in args.cases:
                continue
            case: dict[str, Any] = {"route": route, "clients": clients}
            for system in systems.values():
                system.reset()
                await warm_up(session, system, route, clients, args)
            # Rounds alternate between the systems (a b, b a, …) so that drift on a shared machine hits both alike.
            for r in range(args.rounds):
                search = route == "/v1/search"
                for name in list(systems) if r % 2 == 0 else list(reversed(systems)):
                    await measure_round(
                        session,
                        systems[name],
                        route,
                        bodies(route, args),
                        clients=clients,
                        max_requests=(args.search_requests if search else args.query_requests) // args.rounds,
                        max_seconds=(args.search_seconds if search else args.query_seconds) / args.rounds,
                    )
            for name, system in systems.items():
                case[name] = summary(system, route)
                print(
                    f"{route} c={clients} {name}: {case[name]['rps']:.1f} req/s p50 "
                    f"{case[name].get('p50_ms', 0):.1f} ms p99 {case[name].get('p99_ms', 0):.1f} ms "
                    f"CPU {case[name]['cpu_ms_per_request'].get('total', 0):.1f} ms/req "
                    f"errors {case[name]['error_count']}",
                    flush=True,
                )
            a, b = case["single_process"], case["services"]
            case["rps_ratio"] = round(b["rps"] / a["rps"], 3) if a["rps"] else None
            if "p50_ms" in a and "p50_ms" in b:
                case["added_p50_ms"] = round(b["p50_ms"] - a["p50_ms"], 3)
                case["added_p99_ms"] = round(b["p99_ms"] - a["p99_ms"], 3)
            cases.append(case)
    return {"same_hits": same}, cases


async def same_answers(session: aiohttp.ClientSession, a: str, b: str, k: int) -> bool:
    """Both systems hold the same collection: the same query must give the same chunks in the same order."""
    for q in QUESTIONS[:4]:
        ids = []
        for base in (a, b):
            async with session.post(base + "/v1/search", json={"query": q, "k": k}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"{base}/v1/search answered {resp.status}: {await resp.text()}")
                ids.append([h["chunk_id"] for h in (await resp.json())["hits"]])
        if ids[0] != ids[1]:
            print(f"warning: different hits for {q!r}: {ids}", flush=True)
            return False
    return True


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--work-dir",
        default=str(ROOT / "var" / "bench" / "e2e"),
        help="data and logs (reused: a second run finds the corpus already ingested)",
    )
    p.add_argument("--corpus-chars", type=int, default=1_500_000, help="text to ingest (a few thousand chunks)")
    p.add_argument("--k", type=int, default=5, help="passages per /v1/search")
    p.add_argument("--query-k", type=int, default=3, help="passages per /v1/query (each adds ~200 prompt tokens)")
    p.add_argument("--max-tokens", type=int, default=32, help="answer length of /v1/query")
    p.add_argument("--search-seconds", type=float, default=8.0, help="time bound of a measured /v1/search run")
    p.add_argument("--search-requests", type=int, default=5000, help="request bound of a measured /v1/search run")
    p.add_argument("--query-seconds", type=float, default=30.0, help="time bound of a measured /v1/query run")
    p.add_argument("--query-requests", type=int, default=24, help="request bound of a measured /v1/query run")
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="time bound of each warm-up")
    p.add_argument("--warmup-requests", type=int, default=20, help="warm-up requests per client (search)")
    p.add_argument("--rounds", type=int, default=2, help="measured slices per system and case, alternating a/b")
    p.add_argument("--case", action="append", default=[], help="only this case, e.g. search:32 (repeatable)")
    p.add_argument("--out", default=str(RESULTS / "e2e_bench"), help="results path without suffix")
    args = p.parse_args()
    wanted = {(f"/v1/{c.split(':')[0]}", int(c.split(":")[1])) for c in args.case}
    args.cases = wanted or set(CASES)
    return args


def main() -> None:
    args = parse_args()
    work = Path(args.work_dir).resolve()
    docs = build_corpus(args.corpus_chars)
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    print(f"corpus: {len(docs)} documents, {sum(len(d['text']) for d in docs)} characters", flush=True)
    ingested = prepare_collection(work, docs)
    print(f"collection: {ingested['points']} chunks", flush=True)
    single_proc, single_url = start_inprocess(work / "inprocess")
    stack = Stack.on_free_ports(
        work / "services",
        threads=dict(THREADS),
        nice={},  # the same CPU priority as the single process (make up lowers the generator's)
        extra_env={name: {**MODEL_ENV, **(COMMON_ENV if name == "api" else {})} for name in THREADS},
    )
    try:
        stack.start_all()
        stack.wait_ready(timeout=300)
        wait_ready(single_proc, single_url, work / "inprocess" / "inprocess.log")
        print("both systems ready", flush=True)
        checks, cases = asyncio.run(measure(single_url, single_proc.pid, stack, args))
    finally:
        stop_proc(single_proc)
        stack.stop_all()
    result = {
        "benchmark": "e2e_bench",
        "taken_at": started.isoformat(timespec="seconds"),
        "command": " ".join(["python bench/e2e_bench.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # Other work on the machine moves every figure here; the load average says how much there was.
            "load_average_1m": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        },
        "threads": THREADS,
        "env": {**MODEL_ENV, **COMMON_ENV},
        "systems": {
            "single_process": "one uvicorn process: the api's routes and edge middleware over the embedder, "
            "retriever and generator cores called directly (bench/e2e_inprocess.py)",
            "services": "api, retriever, embedder, generator as four processes on 127.0.0.1, gRPC between them "
            "(cli/src/ragline_cli/localstack.py), auth off",
        },
        "corpus": {
            "documents": len(docs),
            "characters": sum(len(d["text"]) for d in docs),
            "ingest": ingested,
            **checks,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in {"cases", "case"}},
        "cases": cases,
    }
    result["targets"] = targets(cases)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out.with_suffix(".md"))
    write_plot(result, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
