"""Embedder service (separate process, HTTP and gRPC) against the raw model in the same run, on CUDA when present.

Document-length texts by default (100-1,000 characters, as chunks of a document are). Phases: many single-text
clients, 8 clients of 32 texts, one sequential client, against the service's own encoder called directly and
sentence-transformers' `encode`, each at batch 32 and 128, at the same threads, device and dtype. Rounds
interleave all phases, so that load from neighbours hits both alike; each phase records the host's load.
"""

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
RESULTS = ROOT / "results"
LICENSES = "/usr/share/common-licenses/*"


def sentences(n: int) -> list[str]:
    """Real English sentences from files every Debian machine has (license texts), in a fixed order."""
    lines: list[str] = []
    for path in sorted(glob.glob(LICENSES)):
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
            for line in fh:
                line = " ".join(line.split())
                if 40 <= len(line) <= 200 and re.search(r"[a-z]{3}", line):
                    lines.append(line)
    return cycle(list(dict.fromkeys(lines)), n)


def documents(n: int) -> list[str]:
    """Paragraphs of the same license texts, cut at word boundaries into pieces of 100-1,000 characters."""
    pieces: list[str] = []
    for path in sorted(glob.glob(LICENSES)):
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as fh:
            for para in re.split(r"\n\s*\n", fh.read()):
                words: list[str] = []
                for word in para.split():
                    if words and sum(map(len, words)) + len(words) + len(word) > 1000:
                        pieces.append(" ".join(words))
                        words = []
                    words.append(word)
                pieces.append(" ".join(words))
    return cycle([p for p in dict.fromkeys(pieces) if len(p) >= 100 and re.search(r"[a-z]{3}", p)], n)


def cycle(unique: list[str], n: int) -> list[str]:
    if not unique:
        raise SystemExit(f"no texts found in {LICENSES}")
    return (unique * (n // len(unique) + 1))[:n]


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


class Host:
    """The machine's CPU from /proc/stat: busy and stolen core-seconds (Linux; zeros elsewhere)."""

    @staticmethod
    def sample() -> tuple[float, float, float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return 0.0, 0.0, 0.0
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]
        steal = fields[7] if len(fields) > 7 else 0
        return sum(fields) / tick, (sum(fields) - idle - steal) / tick, steal / tick


# ---------------------------------------------------------------- raw model, in this process


class Raw:
    """The encoder the service runs (its backend, device, dtype and threads, built by its own load()), called
    directly; and sentence-transformers' own `encode` on the same device and dtype (it sorts texts by length)."""

    def __init__(self, threads: int, env: dict[str, str]) -> None:
        from prometheus_client import CollectorRegistry

        from ragline_common.settings import load_settings
        from ragline_embedder.core import Embedder
        from ragline_embedder.metrics import EmbedderMetrics
        from ragline_embedder.settings import EmbedderSettings

        saved = dict(os.environ)
        os.environ.update(env)
        try:
            settings = load_settings(EmbedderSettings)  # exactly what the service reads
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.embedder = Embedder(settings, EmbedderMetrics(CollectorRegistry()), threads)
        self.info = self.embedder.load()
        assert self.embedder.encoder is not None
        self.encode = self.embedder.encoder

        from sentence_transformers import SentenceTransformer

        from ragline_embedder.core import default_model_path

        st = SentenceTransformer(settings.model or default_model_path(), device=self.info.device)
        self.st = st.half() if self.info.dtype == "float16" else st

    def st_encode(self, texts: list[str], batch: int) -> None:
        self.st.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)

    def sync(self) -> None:
        if self.info.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


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
        # Its access log (one JSON line a request) is written as in production, to nowhere here.
        self.proc = subprocess.Popen([sys.executable, "-m", "ragline_embedder"], env=full, stdout=subprocess.DEVNULL)

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
                     "ragline_embedder_inference_seconds_sum", "ragline_embedder_queue_seconds_sum",
                     "ragline_embedder_queue_seconds_count"):  # fmt: skip
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

    async def reopen(self) -> None:
        """Fresh connections: the server closes idle ones (uvicorn: after 5 s) while the raw model runs."""
        await self.close()
        await self.open()

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
    call: Callable[[list[str]], Awaitable[None]], texts: list[str], clients: int, per_request: int = 1
) -> tuple[list[float], float]:
    """`clients` callers, each sending `per_request` texts at a time and the next as soon as the answer comes."""
    latencies: list[float] = []
    requests = iter([texts[i : i + per_request] for i in range(0, len(texts), per_request)])

    async def client() -> None:
        for batch in requests:
            t = time.perf_counter()
            await call(batch)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


class Phase:
    """One way of embedding, measured over several rounds; sums what the service and the host report."""

    def __init__(self, name: str, clients: int, per_request: int = 1) -> None:
        self.name = name
        self.clients = clients
        self.per_request = per_request
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
        out["texts_per_request"] = self.per_request
        out["throughput_per_round"] = [round(r, 2) for r in self.rounds]
        t = self.totals
        if t["batches"]:
            out["mean_batch_size"] = round(t["batch_size_sum"] / t["batches"], 2)
            out["batches"] = int(t["batches"])
            out["mean_model_call_ms"] = round(t["inference_seconds"] / t["batches"] * 1000, 2)
            out["mean_queue_wait_ms"] = round(t["queue_seconds"] / max(1.0, t["requests"]) * 1000, 2)
            out["service_cpu_seconds"] = round(t["service_cpu"], 3)
        out["bench_cpu_seconds"] = round(t["bench_cpu"], 3)
        # Load-independent: texts per CPU-second of whoever ran the model (the service, or this process when raw).
        cpu = t["service_cpu"] if t["batches"] else t["bench_cpu"]
        out["texts_per_cpu_second"] = round(self.texts / cpu, 2) if cpu else None
        if t["host_seconds"]:
            # Cores the rest of the machine used meanwhile (neighbours), and what the hypervisor took.
            cores = os.cpu_count() or 1
            out["host_other_cores"] = round((t["host_busy"] - t["service_cpu"] - t["bench_cpu"]) / self.wall, 2)
            out["host_steal_pct"] = round(100 * t["host_steal"] / t["host_seconds"], 2)
            out["host_busy_pct"] = round(100 * t["host_busy"] / t["host_seconds"], 1)
            out["host_cores"] = cores
        return out


class Measured:
    """Adds the service's metrics, its CPU, this process's CPU and the host's to a phase over a block of work."""

    def __init__(self, phase: Phase, svc: ServiceProcess | None) -> None:
        self.phase, self.svc = phase, svc

    def __enter__(self) -> Measured:
        self.m = self.svc.metrics() if self.svc else {}
        self.cpu = self.svc.cpu_seconds() if self.svc else 0.0
        self.me, self.host = time.process_time(), Host.sample()
        return self

    def __exit__(self, *exc: object) -> None:
        t = self.phase.totals
        host = Host.sample()
        t["host_seconds"] += host[0] - self.host[0]
        t["host_busy"] += host[1] - self.host[1]
        t["host_steal"] += host[2] - self.host[2]
        t["bench_cpu"] += time.process_time() - self.me
        if self.svc:
            m = self.svc.metrics()
            for key, name in (("batches", "batch_size_count"), ("batch_size_sum", "batch_size_sum"),
                              ("inference_seconds", "inference_seconds_sum"), ("queue_seconds", "queue_seconds_sum"),
                              ("requests", "queue_seconds_count")):  # fmt: skip
                t[key] += m[f"ragline_embedder_{name}"] - self.m[f"ragline_embedder_{name}"]
            t["service_cpu"] += self.svc.cpu_seconds() - self.cpu


async def measure(
    phase: Phase, svc: ServiceProcess, call: Callable[[list[str]], Awaitable[None]], texts: list[str]
) -> None:
    with Measured(phase, svc):
        latencies, wall = await closed_loop(call, texts, phase.clients, phase.per_request)
    phase.add(latencies, wall, len(texts))


def raw_round(phase: Phase, raw: Raw, texts: list[str], size: int) -> None:
    """The service's encoder on consecutive slices of `size` texts: batches as they would arrive."""
    per_batch: list[float] = []
    with Measured(phase, None):
        started = time.perf_counter()
        for i in range(0, len(texts), size):
            t = time.perf_counter()
            raw.encode(texts[i : i + size])
            per_batch.append(time.perf_counter() - t)
        wall = time.perf_counter() - started
    phase.add(per_batch, wall, len(texts))


def st_round(phase: Phase, raw: Raw, texts: list[str], size: int) -> None:
    """sentence-transformers' encode over the whole round at `size` (it sorts all texts by length first)."""
    with Measured(phase, None):
        started = time.perf_counter()
        raw.st_encode(texts, size)
        raw.sync()
        wall = time.perf_counter() - started
    phase.add([wall / max(1, -(-len(texts) // size))], wall, len(texts))


async def run_all(
    raw: Raw, svc: ServiceProcess, texts: list[str], seq_texts: list[str], args: argparse.Namespace
) -> dict[str, Phase]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{svc.grpc_port}")
    embed = channel.unary_unary(
        "/ragline.embedder.v1.EmbedderService/Embed",
        request_serializer=pb.EmbedRequest.SerializeToString,
        response_deserializer=pb.EmbedResponse.FromString,
    )
    info = await pb_grpc.EmbedderServiceStub(channel).Info(pb.InfoRequest(), timeout=10)

    async def grpc_call(batch: list[str]) -> None:
        resp = await embed(pb.EmbedRequest(texts=batch), timeout=120)
        assert len(resp.embeddings) == len(batch) and len(resp.embeddings[0].values) == info.dimension

    async def bulk_call(batch: list[str]) -> None:
        # What the retriever sends while ingesting: a document's chunks in one request, in the bulk lane.
        resp = await embed(pb.EmbedRequest(texts=batch, priority=pb.PRIORITY_BULK), timeout=300)
        assert len(resp.embeddings) == len(batch)

    http = HttpConnections(svc.http_port, max(args.clients))

    async def http_call(batch: list[str]) -> None:
        body = await http.post("/v1/embeddings", {"input": batch[0] if len(batch) == 1 else batch})
        assert body.count(b'"object":"embedding"') == len(batch), body[:200]

    phases = {f"raw_batch{b}": Phase(f"raw batch {b}", 1, b) for b in args.raw_batches}
    phases |= {f"st_batch{b}": Phase(f"st.encode batch {b}", 1, b) for b in args.raw_batches}
    phases |= {f"http_{c}x1": Phase(f"http {c}x1", c) for c in args.clients}
    phases[f"grpc_{args.clients[0]}x1"] = Phase(f"grpc {args.clients[0]}x1", args.clients[0])
    phases["http_8x32"] = Phase("http 8x32", 8, 32)
    phases["grpc_bulk_4x16"] = Phase("grpc bulk (ingest) 4x16", 4, 16)
    phases["raw_batch1"] = Phase("raw batch 1", 1)
    phases["http_1x1"] = Phase("http 1x1", 1)
    await http.open()
    try:
        # Warm-up: connections, the first batches of each shape, the raw model's first calls.
        for b in args.raw_batches:
            raw.encode(texts[:b])
            raw.st_encode(texts[:b], b)
        for call in (grpc_call, http_call):
            await closed_loop(call, texts[: max(args.clients) * 2], max(args.clients))
        await closed_loop(http_call, texts[:256], 8, 32)
        await closed_loop(bulk_call, texts[:64], 4, 16)
        for n in range(args.rounds):
            for b in args.raw_batches:
                raw_round(phases[f"raw_batch{b}"], raw, texts, b)
                st_round(phases[f"st_batch{b}"], raw, texts, b)
            for c in args.clients:
                await http.reopen()
                await measure(phases[f"http_{c}x1"], svc, http_call, texts)
            await measure(phases[f"grpc_{args.clients[0]}x1"], svc, grpc_call, texts)
            await http.reopen()
            await measure(phases["http_8x32"], svc, http_call, texts)
            await measure(phases["grpc_bulk_4x16"], svc, bulk_call, texts)
            raw_round(phases["raw_batch1"], raw, seq_texts, 1)
            await http.reopen()
            await measure(phases["http_1x1"], svc, http_call, seq_texts)
            done = ", ".join(f"{p.name} {p.rounds[-1]:.1f}/s" for p in phases.values())
            print(f"  round {n + 1}/{args.rounds}: {done}; load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        await http.close()
        await channel.close()
    return phases


def verdict(report: dict[str, Any], device: str, clients: list[int], raw_batches: list[int]) -> dict[str, Any]:
    """Service against the raw model, and the targets: 0.85x at batch 32 on a CPU; on a GPU 0.8x at batch 128,
    a mean batch of 16, one client's p50 within 5 ms and p99 within 3x one full batch."""
    gpu = device.startswith("cuda")
    ref_batch = 128 if gpu and 128 in raw_batches else max(raw_batches) if gpu else min(raw_batches)
    raws = {k: report[k]["throughput_texts_per_s"] for k in (f"raw_batch{ref_batch}", f"st_batch{ref_batch}")}
    best_key = max(raws, key=raws.__getitem__)
    best = raws[best_key]
    full_batch_ms = report[f"raw_batch{ref_batch}"]["latency_p50_ms"]
    out: dict[str, Any] = {
        "device": device,
        "reference": f"{best_key} (the faster raw model at batch {ref_batch}): {best} texts/s",
        "throughput_over_raw": {},
    }
    for key, r in report.items():
        if key.startswith(("http_", "grpc_")) and key != "http_1x1":
            out["throughput_over_raw"][key] = {
                **{ref: round(r["throughput_texts_per_s"] / report[ref]["throughput_texts_per_s"], 3)
                   for ref in report if ref.startswith(("raw_batch", "st_batch")) and ref != "raw_batch1"},
                "mean_batch_size": r.get("mean_batch_size"),
                # CPU per text against the raw encoder's at batch 32: what the wall-clock ratio is on a quiet host.
                "cpu_efficiency_over_raw_batch32": round(
                    r["texts_per_cpu_second"] / report["raw_batch32"]["texts_per_cpu_second"], 3
                ),
            }  # fmt: skip
    many = report[f"http_{clients[0]}x1"]
    targets: dict[str, Any] = {
        f"http_{c}x1 throughput >= {0.8 if gpu else 0.85} x {best_key}": (
            round(report[f"http_{c}x1"]["throughput_texts_per_s"] / best, 3),
            report[f"http_{c}x1"]["throughput_texts_per_s"] >= (0.8 if gpu else 0.85) * best,
        )
        for c in clients
    }
    if gpu:
        targets[f"mean batch >= 16 at {clients[0]} clients"] = (
            many.get("mean_batch_size"),
            (many.get("mean_batch_size") or 0) >= 16,
        )
        one = report["http_1x1"]["latency_p50_ms"]
        targets["1 client p50 <= 5 ms"] = (one, one <= 5)
    targets[f"p99 at {clients[0]} clients <= 3 x one batch-{ref_batch} encode ({full_batch_ms} ms)"] = (
        many["latency_p99_ms"], many["latency_p99_ms"] <= 3 * full_batch_ms)  # fmt: skip
    out["targets"] = {k: {"measured": v[0], "met": v[1]} for k, v in targets.items()}
    return out


def table(report: dict[str, Any]) -> str:
    """The phases as the GPU report's table: load, texts/s, p50, p99, mean batch."""
    lines = ["| load | texts/s | p50 ms | p99 ms | mean batch |", "|---|---:|---:|---:|---:|"]
    for r in report.values():
        lines.append(f"| {r['name']} | {r['throughput_texts_per_s']} | {r['latency_p50_ms']} | {r['latency_p99_ms']} "
                     f"| {r.get('mean_batch_size', '')} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256, help="texts per phase and round")
    parser.add_argument("--sequential-texts", type=int, default=32, help="texts per one-client phase and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every phase once")
    parser.add_argument("--clients", default="64,32", help="single-text client counts, comma-separated")
    parser.add_argument("--corpus", choices=("documents", "sentences"), default="documents")
    parser.add_argument("--device", default="auto", help="EMBEDDER_DEVICE: auto = cuda when torch sees one")
    parser.add_argument("--threads", type=int, default=0, help="EMBEDDER_THREADS for both; 0 = all cores")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="EMBEDDER_MAX_WAIT_MS (default: service's)")
    parser.add_argument("--max-batch", type=int, default=0, help="EMBEDDER_MAX_BATCH_SIZE; 0 = 128 on CUDA, else 32")
    parser.add_argument("--backend", default="auto", help="EMBEDDER_BACKEND for the service and its baseline")
    parser.add_argument("--env", action="append", default=[], help="more EMBEDDER_*=value for both, repeatable")
    parser.add_argument("--out", type=Path, default=None, help="default: results/embedder_bench[_cuda].json")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]

    import torch

    from ragline_common.settings import effective_threads

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    max_batch = args.max_batch or (128 if gpu else 32)
    args.raw_batches = sorted({32, 128, max_batch})
    threads = effective_threads(args.threads)
    texts = (documents if args.corpus == "documents" else sentences)(args.texts)
    seq_texts = texts[: args.sequential_texts]
    env = {
        "EMBEDDER_DEVICE": device,
        "EMBEDDER_THREADS": str(threads),
        "EMBEDDER_MAX_BATCH_SIZE": str(max_batch),
        "EMBEDDER_BACKEND": args.backend,
        **dict(kv.split("=", 1) for kv in args.env),
    }
    if args.max_wait_ms is not None:
        env["EMBEDDER_MAX_WAIT_MS"] = str(args.max_wait_ms)
    load = os.getloadavg()
    print(f"embedder bench on {device}: {len(texts)} {args.corpus} x {args.rounds} rounds, clients {args.clients}, "
          f"{threads} threads, load {load[0]:.1f}", flush=True)  # fmt: skip

    raw = Raw(threads, env)
    svc = ServiceProcess(env)
    try:
        svc.wait_ready()
        phases = asyncio.run(run_all(raw, svc, texts, seq_texts, args))
    finally:
        svc.stop()
    report = {key: {"name": p.name, **p.report()} for key, p in phases.items()}
    info = raw.info
    result = {
        "benchmark": "embedder_bench",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "bench/embedder_bench.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if gpu else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_before": load,
            "load_after": os.getloadavg(),
        },
        "config": {
            "corpus": args.corpus,
            "texts_per_round": len(texts),
            "mean_chars": round(statistics.fmean(map(len, texts)), 1),
            "rounds": args.rounds,
            "threads": threads,
            "backend": info.backend,
            "dtype": info.dtype,
            "env": env,
        },
        "phases": report,
        "verdict": verdict(report, device, args.clients, args.raw_batches),
    }
    out = args.out or RESULTS / ("embedder_bench_cuda.json" if gpu else "embedder_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(report))
    print(json.dumps(result["verdict"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
