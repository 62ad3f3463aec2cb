"""Embedder service (separate process, gRPC and HTTP) against its own encoder called directly, in the same run."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import glob
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from ragline.embedder.v1 import embedder_pb2 as pb
from ragline.embedder.v1 import embedder_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "embedder_bench.json"


def corpus(n: int) -> list[str]:
    """Real English sentences from files every Debian machine has (license texts), in a fixed order."""
    lines: list[str] = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")):
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
            for line in fh:
                line = " ".join(line.split())
                if 40 <= len(line) <= 200 and re.search(r"[a-z]{3}", line):
                    lines.append(line)
    seen: dict[str, None] = dict.fromkeys(lines)  # unique, order kept
    unique = list(seen)
    if len(unique) < n:
        unique = (unique * (n // max(1, len(unique)) + 1))[:n]
    return unique[:n]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(latencies: list[float], wall: float, texts: int) -> dict[str, float]:
    return {
        "texts": texts,
        "wall_seconds": round(wall, 3),
        "throughput_texts_per_s": round(texts / wall, 2),
        "latency_mean_ms": round(statistics.fmean(latencies) * 1000, 2),
        "latency_p50_ms": round(pct(latencies, 50) * 1000, 2),
        "latency_p99_ms": round(pct(latencies, 99) * 1000, 2),
        "latency_max_ms": round(max(latencies) * 1000, 2),
    }


# ---------------------------------------------------------------- raw model, in this process


class Raw:
    """The encoder the service runs (its backend, threads and settings, built by its own load()), called directly."""

    def __init__(self, threads: int, backend: str) -> None:
        from prometheus_client import CollectorRegistry

        from ragline_embedder.core import Embedder
        from ragline_embedder.metrics import EmbedderMetrics
        from ragline_embedder.settings import EmbedderSettings

        self.embedder = Embedder(EmbedderSettings(backend=backend), EmbedderMetrics(CollectorRegistry()), threads)
        self.info = self.embedder.load()
        assert self.embedder.encoder is not None
        self.encode = self.embedder.encoder


# ---------------------------------------------------------------- the service, as a child process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        full = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "EMBEDDER_HOST": "127.0.0.1",
            "EMBEDDER_HTTP_PORT": str(self.http_port),
            "EMBEDDER_GRPC_PORT": str(self.grpc_port),
            "EMBEDDER_LOG_LEVEL": "warning",
            **env,
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "ragline_embedder"], env=full)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedder exited with {self.proc.returncode} before it was ready")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.2)
        raise TimeoutError(f"embedder not ready after {timeout}s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for name in ("ragline_embedder_batch_size_sum", "ragline_embedder_batch_size_count",
                     "ragline_embedder_inference_seconds_sum"):  # fmt: skip
            m = re.search(rf"^{name} (\S+)$", text, re.M)
            out[name] = float(m.group(1)) if m else 0.0
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- clients


class HttpConnections:
    """A minimal HTTP/1.1 keep-alive client, one connection per concurrent caller.

    httpx costs about 2.6 ms of CPU per request on these cores; with 32 callers that is CPU taken from the
    2 cores the service under test runs on. Real callers run elsewhere, so the load generator is kept cheap.
    """

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.clients = clients

    async def open(self) -> None:
        for _ in range(self.clients):
            self.free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def close(self) -> None:
        while not self.free.empty():
            _, writer = self.free.get_nowait()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def post(self, path: str, body: dict[str, Any]) -> bytes:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        reader, writer = await self.free.get()
        try:
            writer.write(head + data)
            headers = await reader.readuntil(b"\r\n\r\n")
            status = int(headers[9:12])
            m = re.search(rb"(?i)content-length: *(\d+)", headers)
            if m is None:
                raise RuntimeError(f"no content-length in {headers!r}")
            payload = await reader.readexactly(int(m.group(1)))
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")
            return payload
        finally:
            self.free.put_nowait((reader, writer))


async def closed_loop(
    call: Callable[[str], Awaitable[None]], texts: list[str], clients: int
) -> tuple[list[float], float]:
    """`clients` callers, each sending one text per request and the next as soon as the answer comes."""
    latencies: list[float] = []
    it = iter(texts)

    async def client() -> None:
        for text in it:
            t = time.perf_counter()
            await call(text)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


class Phase:
    """One way of embedding, measured over several rounds; sums what the service reports about itself."""

    def __init__(self, name: str, clients: int) -> None:
        self.name = name
        self.clients = clients
        self.latencies: list[float] = []
        self.wall = 0.0
        self.texts = 0
        self.rounds: list[float] = []  # throughput per round
        self.totals: dict[str, float] = collections.defaultdict(float)

    def add(self, latencies: list[float], wall: float, texts: int) -> None:
        self.latencies += latencies
        self.wall += wall
        self.texts += texts
        self.rounds.append(texts / wall)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = summary(self.latencies, self.wall, self.texts)
        out["clients"] = self.clients
        out["throughput_per_round"] = [round(r, 2) for r in self.rounds]
        t = self.totals
        if "raw_cpu" in t:
            out["cpu_seconds"] = round(t["raw_cpu"], 3)
            out["texts_per_cpu_second"] = round(self.texts / t["raw_cpu"], 2)
        if "service_cpu" in t:
            out["mean_batch_size"] = round(t["batch_size_sum"] / max(1.0, t["batches"]), 2)
            out["batches"] = int(t["batches"])
            # Where the time goes: model seconds inside the service, the service's CPU, the client's CPU.
            out["service_inference_seconds"] = round(t["inference_seconds"], 3)
            out["service_cpu_seconds"] = round(t["service_cpu"], 3)
            out["client_cpu_seconds"] = round(t["client_cpu"], 3)
            # Load-independent: what one CPU-second of the service buys, against the raw model's.
            out["texts_per_cpu_second"] = round(self.texts / t["service_cpu"], 2)
            out["cores_used"] = round(t["service_cpu"] / self.wall, 2)
        return out


async def measure(phase: Phase, svc: ServiceProcess, call: Callable[[str], Awaitable[None]], texts: list[str]) -> None:
    before_m, before_cpu, before_self = svc.metrics(), svc.cpu_seconds(), time.process_time()
    latencies, wall = await closed_loop(call, texts, phase.clients)
    after_m, after_cpu, after_self = svc.metrics(), svc.cpu_seconds(), time.process_time()
    phase.add(latencies, wall, len(texts))
    t = phase.totals
    t["batches"] += after_m["ragline_embedder_batch_size_count"] - before_m["ragline_embedder_batch_size_count"]
    t["batch_size_sum"] += after_m["ragline_embedder_batch_size_sum"] - before_m["ragline_embedder_batch_size_sum"]
    t["inference_seconds"] += (
        after_m["ragline_embedder_inference_seconds_sum"] - before_m["ragline_embedder_inference_seconds_sum"]
    )
    t["service_cpu"] += after_cpu - before_cpu
    t["client_cpu"] += after_self - before_self


def raw_round(phase: Phase, raw: Raw, texts: list[str], size: int) -> None:
    per_batch: list[float] = []
    cpu = time.process_time()
    started = time.perf_counter()
    for i in range(0, len(texts), size):
        t = time.perf_counter()
        raw.encode(texts[i : i + size])
        per_batch.append(time.perf_counter() - t)
    phase.add(per_batch, time.perf_counter() - started, len(texts))
    phase.totals["raw_cpu"] += time.process_time() - cpu


async def run_all(
    raw: Raw, torch_raw: Raw, svc: ServiceProcess, texts: list[str], seq_texts: list[str], clients: int, rounds: int
) -> dict[str, Phase]:
    """Rounds that interleave the raw model and the service, so that load from neighbours hits both alike."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}")
    embed = channel.unary_unary(
        "/ragline.embedder.v1.EmbedderService/Embed",
        request_serializer=pb.EmbedRequest.SerializeToString,
        response_deserializer=pb.EmbedResponse.FromString,
    )
    info = await pb_grpc.EmbedderServiceStub(channel).Info(pb.InfoRequest(), timeout=10)

    async def grpc_call(text: str) -> None:
        resp = await embed(pb.EmbedRequest(texts=[text]), timeout=60)
        assert len(resp.embeddings[0].values) == info.dimension

    phases = {
        "raw_batch32": Phase("raw batch 32", 1),
        "grpc_concurrent": Phase("grpc x32", clients),
        "http_concurrent": Phase("http x32", clients),
        "http_concurrent_base64": Phase("http x32 base64", clients),
        "raw_batch1": Phase("raw batch 1", 1),
        "torch_batch32": Phase("torch batch 32", 1),
        "torch_batch1": Phase("torch batch 1", 1),
        "grpc_sequential": Phase("grpc x1", 1),
        "http_sequential": Phase("http x1", 1),
    }
    http = HttpConnections(svc.http_port, clients)
    await http.open()
    try:

        async def http_call(text: str) -> None:
            body = await http.post("/v1/embeddings", {"input": text})
            assert body.startswith(b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[')

        async def http_call_b64(text: str) -> None:
            body = await http.post("/v1/embeddings", {"input": text, "encoding_format": "base64"})
            assert body.startswith(b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":"')

        # Warm-up: connections, the first batches, the raw model's first call.
        raw.encode(texts[:32])
        torch_raw.encode(texts[:32])
        for call in (grpc_call, http_call, http_call_b64):
            await closed_loop(call, texts[: clients * 2], clients)
        for n in range(rounds):
            raw_round(phases["raw_batch32"], raw, texts, 32)
            await measure(phases["grpc_concurrent"], svc, grpc_call, texts)
            await measure(phases["http_concurrent"], svc, http_call, texts)
            await measure(phases["http_concurrent_base64"], svc, http_call_b64, texts)
            raw_round(phases["raw_batch1"], raw, seq_texts, 1)
            await measure(phases["grpc_sequential"], svc, grpc_call, seq_texts)
            await measure(phases["http_sequential"], svc, http_call, seq_texts)
            raw_round(phases["torch_batch32"], torch_raw, texts, 32)
            raw_round(phases["torch_batch1"], torch_raw, seq_texts, 1)
            print(
                f"  round {n + 1}/{rounds}: "
                + ", ".join(f"{p.name} {p.rounds[-1]:.1f}/s" for p in phases.values())
                + f"; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        await http.close()
        await channel.close()
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=192, help="texts per concurrent phase and round")
    parser.add_argument("--sequential-texts", type=int, default=24, help="texts per batch-size-1 phase and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every phase once")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="EMBEDDER_THREADS for both; 0 = all cores")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="EMBEDDER_MAX_WAIT_MS (default: service's)")
    parser.add_argument("--max-batch", type=int, default=32, help="EMBEDDER_MAX_BATCH_SIZE")
    parser.add_argument("--backend", default="auto", help="EMBEDDER_BACKEND for the service and its baseline")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    from ragline_common.settings import effective_threads

    threads = effective_threads(args.threads)
    texts = corpus(args.texts)
    seq_texts = texts[: args.sequential_texts]
    env = {
        "EMBEDDER_THREADS": str(threads),
        "EMBEDDER_MAX_BATCH_SIZE": str(args.max_batch),
        "EMBEDDER_BACKEND": args.backend,
    }
    if args.max_wait_ms is not None:
        env["EMBEDDER_MAX_WAIT_MS"] = str(args.max_wait_ms)
    load = os.getloadavg()
    print(f"embedder bench: {len(texts)} texts x {args.rounds} rounds, {args.clients} clients, {threads} threads, "
          f"load {load[0]:.1f}", flush=True)  # fmt: skip

    raw = Raw(threads, args.backend)
    torch_raw = Raw(threads, "torch")  # the backend comparison: sentence-transformers' own forward pass
    svc = ServiceProcess(env)
    try:
        svc.wait_ready()
        phases = asyncio.run(run_all(raw, torch_raw, svc, texts, seq_texts, args.clients, args.rounds))
    finally:
        svc.stop()
    report = {key: p.report() for key, p in phases.items()}

    raw32 = report["raw_batch32"]
    raw_tput = raw32["throughput_texts_per_s"]
    batch32_ms = raw32["latency_p50_ms"]
    one_ms = report["raw_batch1"]["latency_p50_ms"]
    verdict: dict[str, Any] = {
        "backend": raw.info.backend,
        "raw_batch32_throughput_texts_per_s": raw_tput,
        "raw_batch32_encode_p50_ms": batch32_ms,
        "backend_over_torch": {
            "batch32_throughput_ratio": round(raw_tput / report["torch_batch32"]["throughput_texts_per_s"], 3),
            "batch1_p50_ms": [one_ms, report["torch_batch1"]["latency_p50_ms"]],
        },
    }
    for key in ("grpc_concurrent", "http_concurrent", "http_concurrent_base64"):
        r = report[key]
        per_round = [s / b for s, b in zip(r["throughput_per_round"], raw32["throughput_per_round"], strict=True)]
        verdict[key] = {
            "throughput_ratio": round(r["throughput_texts_per_s"] / raw_tput, 3),
            "throughput_ratio_per_round": [round(x, 3) for x in per_round],
            "throughput_target_met": r["throughput_texts_per_s"] >= 0.85 * raw_tput,
            "cpu_efficiency_ratio": round(r["texts_per_cpu_second"] / raw32["texts_per_cpu_second"], 3),
            "p99_over_batch32_encode": round(r["latency_p99_ms"] / batch32_ms, 2),
            "p99_target_met": r["latency_p99_ms"] <= 3 * batch32_ms,
        }
    for key in ("grpc_sequential", "http_sequential"):
        r = report[key]
        verdict[key] = {
            "raw_encode_one_p50_ms": one_ms,
            "request_p50_ms": r["latency_p50_ms"],
            "overhead_per_request_p50_ms": round(r["latency_p50_ms"] - one_ms, 2),
        }
    result = {
        "benchmark": "embedder_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load,
            "load_after": os.getloadavg(),
        },  # fmt: skip
        "config": {
            "texts_per_round": len(texts),
            "rounds": args.rounds,
            "clients": args.clients,
            "threads": threads,
            "env": env,
        },  # fmt: skip
        "phases": report,
        "verdict": verdict,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, r in report.items():
        print(f"  {key}: {json.dumps(r)}")
    print(json.dumps(verdict, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
