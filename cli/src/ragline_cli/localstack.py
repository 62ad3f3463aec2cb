"""Run the four services as separate processes on loopback: `make up`, the e2e tests and the benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ragline_cli.supervisor import CrashLoop, Supervisor

# The local stack runs the services, so they (and ragline-common) are installed wherever it is used.
from ragline_common.runtime import RUNTIME_ENV

SERVICES = ("embedder", "retriever", "generator", "api")
DEFAULT_PORTS = {
    "api": (8080, 50050),
    "embedder": (8081, 50051),
    "retriever": (8082, 50052),
    "generator": (8083, 50053),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    http_port: int
    grpc_port: int
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class Stack:
    """The whole pipeline on 127.0.0.1; every process it starts it also stops, by PID."""

    data_dir: Path
    ports: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)
    # One host, four services, where Kubernetes would give each its own CPU request. Generation is long batch
    # work and everything else is short and interactive, so the generator runs at the lowest priority and yields
    # while a search or an embedding needs a core. The api, the edge, runs above the data path: when the cores
    # are full (overload) it still gets one to refuse with and to answer probes (measured at 3x overload:
    # refusals' p99 55 ms with all three at 0, 29 ms with embedder and retriever at 3). Priority costs nothing
    # while the cores are free.
    nice: dict[str, int] = field(default_factory=lambda: {"embedder": 3, "retriever": 3, "generator": 10})
    procs: dict[str, Proc] = field(default_factory=dict)
    replica_of: dict[str, str] = field(default_factory=dict)

    @classmethod
    def on_free_ports(cls, data_dir: Path, **kwargs: object) -> Stack:
        ports = {name: (free_port(), free_port()) for name in SERVICES}
        return cls(data_dir=data_dir, ports=ports, **kwargs)  # type: ignore[arg-type]

    def _env(self, name: str, key: str | None = None) -> dict[str, str]:
        http, grpc = self.ports[key or name]
        p = name.upper() + "_"
        env = {
            p + "HOST": "127.0.0.1",
            p + "HTTP_PORT": str(http),
            p + "GRPC_PORT": str(grpc),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **RUNTIME_ENV,
        }
        # Two cores, four processes: each model gets a deliberate share instead of every core each.
        env[p + "THREADS"] = str(self.threads.get(name, 2 if name == "generator" else 1))
        grpc_of = {n: f"127.0.0.1:{self.ports[n][1]}" for n in SERVICES}
        if name == "embedder":
            env["EMBEDDER_CACHE_DIR"] = str(self.data_dir / "cache")  # the ONNX graph: a restart skips the export
        if name == "retriever":
            env["RETRIEVER_EMBEDDER_ADDR"] = grpc_of["embedder"]
            env["RETRIEVER_DATA_DIR"] = str(self.data_dir / "retriever")
        if name == "api":
            env["API_RETRIEVER_ADDR"] = grpc_of["retriever"]
            env["API_GENERATOR_ADDR"] = grpc_of["generator"]
            env["API_EMBEDDER_ADDR"] = grpc_of["embedder"]
            env.setdefault("API_ENABLE_AUTH", "false")
        env.update(self.extra_env.get(name, {}))
        if key and key != name:
            env.update(self.extra_env.get(key, {}))
        return env

    def start(self, name: str, *, service: str | None = None) -> Proc:
        """Start `name` (a service, or a replica key made by start_replica) as a new process."""
        service = service or self.replica_of.get(name, name)
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        http, grpc = self.ports[name]
        proc = Proc(name, http, grpc, self._env(service, name), log_dir / f"{name}.log")
        env = {**os.environ, **proc.env}
        log = proc.log_path.open("ab")
        niceness = self.nice.get(service, 0)
        proc.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", f"ragline_{service}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,  # noqa: PLW1509 - no threads started yet
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_replica(self, service: str, key: str) -> Proc:
        """Another process of `service` on free ports, tracked as `key` (wait_ready, stop and kill take it).

        It shares the service's data dir and peers; extra_env[key] overrides the service's extra_env.
        """
        if key in SERVICES:
            raise ValueError(f"a replica key must not be a service name, got {key!r}")
        self.ports[key] = (free_port(), free_port())
        self.replica_of[key] = service
        return self.start(key, service=service)

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def wait_ready(self, names: tuple[str, ...] = SERVICES, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name in sorted(pending):
                    proc = self.procs[name]
                    assert proc.popen is not None
                    if proc.popen.poll() is not None:
                        raise RuntimeError(
                            f"{name} exited with code {proc.popen.returncode}; last log lines:\n{self.tail(name)}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(proc.url + "/readyz").status_code == 200:
                            pending.discard(name)
                if not pending:
                    break
                if time.monotonic() > deadline:
                    reasons = {}
                    for name in pending:
                        with contextlib.suppress(httpx.HTTPError, ValueError):
                            reasons[name] = client.get(self.procs[name].url + "/readyz").json()
                    raise TimeoutError(f"not ready after {timeout:.0f}s: {reasons}")
                time.sleep(0.25)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.procs[name].log_path
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        popen = self.procs[name].popen
        if popen and popen.poll() is None:
            popen.send_signal(sig)
            popen.wait(timeout=60)

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        popen = self.procs[name].popen
        if popen is None:
            return None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
        return popen.returncode

    def stop_all(self) -> None:
        # Replicas and the edge first, so nothing new enters while the rest drains.
        for name in [*self.replica_of, *reversed(SERVICES)]:
            if name in self.procs:
                self.stop(name)

    def exit_code(self, name: str) -> int | None:
        """The exit status of `name`'s process once it has ended; None while it runs (or before it started)."""
        popen = self.procs[name].popen if name in self.procs else None
        return None if popen is None else popen.poll()

    def pids(self) -> dict[str, int]:
        """PIDs of the processes that are running now, by key."""
        return {n: p.popen.pid for n, p in self.procs.items() if p.popen is not None and p.popen.poll() is None}

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api'][0]}"


@contextlib.contextmanager
def running_stack(data_dir: Path, **kwargs: object) -> Iterator[Stack]:
    stack = Stack.on_free_ports(data_dir, **kwargs)
    try:
        stack.start_all()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop_all()


def _not_ready(stack: Stack, names: tuple[str, ...]) -> dict[str, object]:
    """Each of `names` that does not answer /readyz 200 now, with the reason it gives."""
    out: dict[str, object] = {}
    with httpx.Client(timeout=2.0) as client:
        for name in names:
            try:
                reply = client.get(stack.procs[name].url + "/readyz")
            except httpx.HTTPError as exc:
                out[name] = type(exc).__name__
                continue
            if reply.status_code != 200:
                try:
                    out[name] = reply.json().get("reasons", reply.status_code)
                except ValueError:
                    out[name] = reply.status_code
    return out


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def up(args: argparse.Namespace) -> int:
    """Start the four services, print the banner once all are ready, restart any that exits until Ctrl-C."""
    stack = Stack(data_dir=Path(args.data_dir).resolve())
    for name, (http, grpc) in DEFAULT_PORTS.items():
        p = name.upper() + "_"
        stack.ports[name] = (int(os.environ.get(p + "HTTP_PORT", http)), int(os.environ.get(p + "GRPC_PORT", grpc)))
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    print(f"starting embedder, retriever, generator, api (logs in {stack.data_dir / 'logs'}) …", flush=True)
    stack.start_all()
    supervisor = Supervisor(stack, SERVICES, say=_say)
    code = 0
    banner = False
    next_check = 0.0
    try:
        while not stop:
            supervisor.poll()
            now = time.monotonic()
            if not banner and now >= next_check:
                next_check = now + 0.5
                # The banner waits for all four (the api's own readiness does not follow its peers).
                pending = _not_ready(stack, SERVICES)
                if not pending:
                    banner = True
                    _banner(stack, now - started)
                elif now - started > args.start_timeout:
                    print(f"ragline did not start within {args.start_timeout:.0f}s: {pending}", file=sys.stderr)
                    code = 1
                    break
            time.sleep(0.1)
    except CrashLoop as exc:
        print(f"ragline: {exc}", file=sys.stderr, flush=True)
        code = 1
    print("stopping …", flush=True)
    stack.stop_all()
    print("stopped.", flush=True)
    return code


def _banner(stack: Stack, seconds: float) -> None:
    print(
        f"\nragline is up in {seconds:.0f}s: {stack.api_url}\n"
        "  auth is OFF: the api listens on 127.0.0.1 only (compose and Kubernetes turn it on)\n"
        "  try: ragline ingest tests/e2e/corpus && ragline ask 'What is a dpkg trigger?'\n"
        f"       curl -s {stack.api_url}/v1/query -H 'content-type: application/json' "
        '-d \'{"question": "What is a dpkg trigger?"}\'\n'
        "  a service that exits is restarted (backoff 1 s doubling to 30 s); Ctrl-C stops all four.",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ragline_cli.localstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the four services on loopback and wait for Ctrl-C")
    p_up.add_argument("--data-dir", default=os.environ.get("RAGLINE_DATA_DIR", "var"), help="state and logs")
    p_up.add_argument("--start-timeout", type=float, default=240.0, help="seconds for all four to become ready")
    args = parser.parse_args()
    raise SystemExit(up(args))


if __name__ == "__main__":
    main()
