"""Run `python -m ragline_<svc>` in an image's environment and talk to its gRPC server from this process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.images.envs import ImageEnv, stages

LISTENING = re.compile(r"listening: http \S+:(\d+), grpc \S+:(\d+)")


def unused_port() -> int:
    """A port nothing listens on: a peer address that refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_env_vars(env: ImageEnv, root: Path) -> dict[str, str]:
    """The ENV of the Dockerfile's final stage (PATH aside: the venv's python is called by its path)."""
    out: dict[str, str] = {}
    for ins in stages(root / env.dockerfile)[-1]:
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, _, value = item.partition("=")
                out[key] = value
    out.pop("PATH", None)
    return out


@dataclass
class Running:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    grpc_port: int = 0
    _reader: threading.Thread | None = None

    def output(self) -> str:
        return "\n".join(self.lines)

    def messages(self) -> list[str]:
        """The `msg` of every JSON log line (other lines as they are)."""
        out = []
        for line in self.lines:
            try:
                out.append(str(json.loads(line).get("msg", line)))
            except ValueError:
                out.append(line)
        return out

    def wait_listening(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.messages():
                if match := LISTENING.search(msg):
                    self.grpc_port = int(match.group(2))
                    return self.grpc_port
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode} before listening:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"not listening after {timeout:.0f}s:\n{self.output()}")

    def health(self, timeout: float = 2.0) -> str:
        """grpc.health.v1 Check of the whole server: SERVING / NOT_SERVING (raises if nothing answers)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        status = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode} before SERVING:\n{self.output()}")
            with contextlib.suppress(grpc.RpcError):
                status = self.health()
                if status == "SERVING":
                    return
            time.sleep(0.2)
        raise AssertionError(f"not SERVING after {timeout:.0f}s (last: {status}):\n{self.output()}")

    def stop(self, timeout: float) -> int:
        """SIGTERM, as Kubernetes and compose send it; the exit status (killed and failed after timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"still running {timeout:.0f}s after SIGTERM:\n{self.output()}") from None
        finally:
            if self._reader is not None:
                self._reader.join(5)


@contextlib.contextmanager
def entrypoint(
    python: Path, env: ImageEnv, root: Path, home: Path, extra_env: dict[str, str], extra_path: str = ""
) -> Iterator[Running]:
    """`python -m ragline_<svc>` with the image's ENV, ragline's source where the image puts it, ports 0."""
    prefix = env.package.removeprefix("ragline_").upper()
    variables = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **image_env_vars(env, root),
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join(p for p in (extra_path, env.source_path()) if p),
        f"{prefix}_HOST": "127.0.0.1",
        f"{prefix}_HTTP_PORT": "0",
        f"{prefix}_GRPC_PORT": "0",
        **extra_env,
    }
    proc = subprocess.Popen(
        [str(python), "-m", env.package],
        cwd=home,
        env=variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Running(proc)
    assert proc.stdout is not None
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            running.lines.append(line.rstrip("\n"))

    running._reader = threading.Thread(target=read, daemon=True)
    running._reader.start()
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        running._reader.join(5)
        stdout.close()
