"""/v1/search through the api gateway against the retriever's own /v1/search, same run, 1 and 32 clients."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import platform
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ragline_common.runtime import RUNTIME_ENV

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "api_bench.json"
TARGET_ADDED_P50_MS = 1.5
TARGET_THROUGHPUT_RATIO = 0.90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sentences(n: int) -> list[str]:
    """Real English lines from files every Debian machine has (license texts), in a fixed order."""
    lines: list[str] = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
            for line in fh:
                line = " ".join(line.split())
                if 40 <= len(line) <= 200 and re.search(r"[a-z]{3}", line):
                    lines.append(line)
    unique = list(dict.fromkeys(lines)) or [f"sentence number {i} about licenses and software" for i in range(n)]
    return (unique * (n // len(unique) + 1))[:n]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Stack:
    """Embedder, retriever and api as three separate processes on loopback, as in `make up`."""

    def __init__(self, workdir: Path, embedder_threads: int) -> None:
        self.workdir = workdir
        self.key = secrets.token_hex(24)
        self.ports = {name: (free_port(), free_port()) for name in ("embedder", "retriever", "api")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.embedder_threads = embedder_threads

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name][0]}"

    def _start(self, name: str, env: dict[str, str]) -> None:
        prefix = name.upper() + "_"
        http, grpc_port = self.ports[name]
        full = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **RUNTIME_ENV,
            f"{prefix}HTTP_PORT": str(http),
            f"{prefix}GRPC_PORT": str(grpc_port),
            f"{prefix}LOG_LEVEL": "warning",
            **env,
        }
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([sys.executable, "-m", f"ragline_{name}"], env=full, stdout=log, stderr=log)

    def wait_ready(self, name: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text()[-3000:]
                raise SystemExit(f"{name} exited with {self.procs[name].returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url(name) + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise SystemExit(f"{name} not ready after {timeout:.0f}s; see {self.workdir / (name + '.log')}")

    def start(self) -> None:
        self._start("embedder", {"EMBEDDER_THREADS": str(self.embedder_threads)})
        emb_grpc = f"127.0.0.1:{self.ports['embedder'][1]}"
        self._start(
            "retriever",
            {"RETRIEVER_EMBEDDER_ADDR": emb_grpc, "RETRIEVER_DATA_DIR": str(self.workdir / "retriever")},
        )
        self._start(
            "api",
            {
                "API_RETRIEVER_ADDR": f"127.0.0.1:{self.ports['retriever'][1]}",
                "API_EMBEDDER_ADDR": emb_grpc,
                # /v1/search never calls the generator; nothing needs to listen there.
                "API_GENERATOR_ADDR": f"127.0.0.1:{free_port()}",
                "API_ENABLE_AUTH": "true",
                "API_KEYS": self.key,
                "API_RATE_LIMIT_PER_SECOND": "0",
                "API_MAX_CONCURRENCY": "256",
            },
        )
        for name in ("embedder", "retriever", "api"):
            self.wait_ready(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def seed(stack: Stack, docs: int) -> None:
    texts = sentences(docs * 3)
    async with httpx.AsyncClient(base_url=stack.url("retriever"), timeout=120) as c:
        batch = []
        for i in range(docs):
            batch.append({"id": f"doc-{i}", "text": " ".join(texts[i * 3 : i * 3 + 3]), "metadata": {"n": i}})
            if len(batch) == 32 or i == docs - 1:
                r = await c.post("/v1/documents", json={"documents": batch})
                r.raise_for_status()
                batch = []


async def load(url: str, headers: dict[str, str], queries: list[str], clients: int, seconds: float, k: int) -> dict:
    """`clients` closed-loop clients for `seconds`; each request must answer 200 with k hits."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    # TCP_NODELAY: httpx writes headers and body separately, and Nagle + delayed ACK would add ~40 ms to each
    # POST on loopback, burying the difference this benchmark is after (browsers and most clients set it).
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, transport=transport) as c:

        async def client(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop_at:
                q = queries[i % len(queries)]
                i += clients
                start = time.perf_counter()
                r = await c.post("/v1/search", json={"query": q, "k": k})
                elapsed = time.perf_counter() - start
                if r.status_code != 200 or len(r.json()["hits"]) != k:
                    errors += 1
                else:
                    latencies.append(elapsed)

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "wall": wall}


def gateway_sums(stack: Stack) -> tuple[float, float, float]:
    """(request seconds, downstream Search seconds, requests) for /v1/search, from the gateway's own metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(stack.url("api") + "/metrics", timeout=10).text
    req = down = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "ragline_request_duration_seconds_sum" and labels.get("method") == "POST /v1/search":
                req += sample.value
            elif sample.name == "ragline_request_duration_seconds_count" and labels.get("method") == "POST /v1/search":
                count += sample.value
            elif sample.name == "ragline_api_downstream_duration_seconds_sum" and labels.get("method") == "Search":
                down += sample.value
    return req, down, count


async def load_grpc(addr: str, queries: list[str], clients: int, seconds: float, k: int) -> dict:
    """The same closed loop against the retriever's gRPC Search (what the gateway itself calls)."""
    import grpc

    from ragline.retriever.v1 import retriever_pb2, retriever_pb2_grpc

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)

        async def client(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop_at:
                q = queries[i % len(queries)]
                i += clients
                start = time.perf_counter()
                try:
                    reply = await stub.Search(retriever_pb2.SearchRequest(query=q, k=k), timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                elapsed = time.perf_counter() - start
                if len(reply.hits) != k:
                    errors += 1
                else:
                    latencies.append(elapsed)

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "wall": wall}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(runs: list[dict]) -> dict[str, float]:
    lat = [x for r in runs for x in r["latencies"]]
    wall = sum(r["wall"] for r in runs)
    return {
        "requests": len(lat),
        "errors": sum(r["errors"] for r in runs),
        "throughput_rps": round(len(lat) / wall, 1),
        "p50_ms": round(pct(lat, 50) * 1000, 3),
        "p95_ms": round(pct(lat, 95) * 1000, 3),
        "p99_ms": round(pct(lat, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(lat) * 1000, 3),
    }


@contextlib.contextmanager
def running_stack(embedder_threads: int) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        stack = Stack(Path(tmp), embedder_threads)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    queries = [s[:80] for s in sentences(args.docs * 3 + 400)[-400:]]
    with running_stack(args.embedder_threads) as stack:
        await seed(stack, args.docs)
        grpc_addr = f"127.0.0.1:{stack.ports['retriever'][1]}"
        targets = {
            "direct": (stack.url("retriever"), {}),
            "gateway": (stack.url("api"), {"Authorization": f"Bearer {stack.key}"}),
        }

        async def measure(name: str, clients: int, seconds: float) -> dict:
            if name == "direct_grpc":
                return await load_grpc(grpc_addr, queries, clients, seconds, args.k)
            url, headers = targets[name]
            return await load(url, headers, queries, clients, seconds, args.k)

        names = ["direct", "gateway", "direct_grpc"]
        for name in names:  # warm up every path (connections, lazy imports, caches)
            await measure(name, 4, 2.0)
        results: dict[str, Any] = {}
        for clients in args.clients:
            runs: dict[str, list[dict]] = {name: [] for name in names}
            before = gateway_sums(stack)
            cpu = dict.fromkeys(names, 0.0)
            api_pid = stack.procs["api"].pid
            # Rounds alternate the two targets so that drift (other load on the machine) hits both alike.
            for rnd in range(args.rounds):
                for name in names if rnd % 2 == 0 else names[::-1]:
                    start_cpu = cpu_seconds(api_pid)
                    runs[name].append(await measure(name, clients, args.seconds))
                    cpu[name] += cpu_seconds(api_pid) - start_cpu
            after = gateway_sums(stack)
            direct, gateway, direct_grpc = (summarize(runs[name]) for name in names)
            n = max(1.0, after[2] - before[2])
            results[str(clients)] = {
                # Inside the gateway: its handling time minus the time spent waiting on the retriever call.
                "gateway_internal_mean_ms": round(((after[0] - before[0]) - (after[1] - before[1])) / n * 1000, 3),
                # CPU the gateway process burns per request it serves (what it takes from a shared node).
                "gateway_cpu_ms_per_request": round(cpu["gateway"] / max(1, gateway["requests"]) * 1000, 3),
                "direct": direct,
                "gateway": gateway,
                "direct_grpc": direct_grpc,
                "added_p50_ms_vs_grpc": round(gateway["p50_ms"] - direct_grpc["p50_ms"], 3),
                "throughput_ratio_vs_grpc": round(gateway["throughput_rps"] / direct_grpc["throughput_rps"], 3),
                "added_p50_ms": round(gateway["p50_ms"] - direct["p50_ms"], 3),
                "throughput_ratio": round(gateway["throughput_rps"] / direct["throughput_rps"], 3),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32], help="Concurrent clients per phase.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of one measured run.")
    parser.add_argument("--rounds", type=int, default=2, help="Runs per target and client count (alternated).")
    parser.add_argument("--docs", type=int, default=300, help="Documents in the collection.")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--embedder-threads", type=int, default=1, help="EMBEDDER_THREADS for the embedder.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    started = time.time()
    results = asyncio.run(bench(args))
    one = results.get("1", {})
    many = results.get(str(max(args.clients)), {})
    report = {
        "benchmark": "api_bench",
        "what": "POST /v1/search through the gateway (HTTP → gRPC → retriever) vs the retriever's own HTTP "
        "/v1/search (the targets) and its gRPC Search (for reference); all embed the query with the same embedder.",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": vars(args) | {"out": str(args.out)},
        "results": results,
        "targets": {"added_p50_ms_at_1": TARGET_ADDED_P50_MS, "throughput_ratio_at_max": TARGET_THROUGHPUT_RATIO},
        "met": {
            "added_p50_ms_at_1": one.get("added_p50_ms", 1e9) <= TARGET_ADDED_P50_MS,
            "throughput_ratio_at_max": many.get("throughput_ratio", 0) >= TARGET_THROUGHPUT_RATIO,
        },
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for clients, r in results.items():
        d, g = r["direct"], r["gateway"]
        print(
            f"{clients:>3} clients  direct p50 {d['p50_ms']:.2f} ms {d['throughput_rps']:.0f} rps | "
            f"gateway p50 {g['p50_ms']:.2f} ms {g['throughput_rps']:.0f} rps | "
            f"added p50 {r['added_p50_ms']:+.2f} ms, throughput {r['throughput_ratio']:.0%}, "
            f"inside gateway {r['gateway_internal_mean_ms']:.2f} ms, "
            f"cpu {r['gateway_cpu_ms_per_request']:.2f} ms/req | "
            f"direct gRPC p50 {r['direct_grpc']['p50_ms']:.2f} ms {r['direct_grpc']['throughput_rps']:.0f} rps"
        )
    print(f"targets met: {report['met']}  →  {args.out}")


if __name__ == "__main__":
    main()
