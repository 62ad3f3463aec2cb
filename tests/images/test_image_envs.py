"""Each image's own dependency set, rebuilt in a venv from its Dockerfile, starts `python -m ragline_<svc>`."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ragline.generator.v1 import generator_pb2, generator_pb2_grpc
from tests.images.envs import ROOT, VLLM_IMAGE_SET, ImageEnv, build, installed
from tests.images.process import entrypoint, unused_port

sys.path.insert(0, str(ROOT / "deploy" / "docker"))
from image_constraints import mismatches  # noqa: E402

# A cold run builds the venvs first: minutes for the embedder (CPU torch and friends) on a shared 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

STANDIN = ROOT / "tests" / "images" / "vllm_standin"
STANDIN_REPLY = "Paris is the capital of France."
VLLM_ENV = {"GENERATOR_MODEL": "HuggingFaceTB/SmolLM2-1.7B-Instruct"}
# Cold, the embedder exports its ONNX graph from torch first (tens of seconds on a shared 2-core machine).
READY_SECONDS = {"api": 60, "retriever": 60, "generator": 120, "embedder": 300}


def peer_env(service: str, tmp: Path, python: Path) -> dict[str, str]:
    """Required settings: peers at addresses nobody listens on (readiness then says NOT_SERVING), scratch dirs."""
    if service == "api":
        return {
            "API_RETRIEVER_ADDR": f"127.0.0.1:{unused_port()}",
            "API_GENERATOR_ADDR": f"127.0.0.1:{unused_port()}",
            "API_EMBEDDER_ADDR": f"127.0.0.1:{unused_port()}",
            "API_KEYS": secrets.token_hex(24),
        }
    if service == "retriever":
        return {"RETRIEVER_EMBEDDER_ADDR": f"127.0.0.1:{unused_port()}", "RETRIEVER_DATA_DIR": str(tmp / "data")}
    if service == "embedder":
        # The ONNX graph exported at the first start in this venv is kept beside it: later runs load it.
        return {"EMBEDDER_CACHE_DIR": str(python.parent.parent / "embedder-cache"), "EMBEDDER_THREADS": "1"}
    return {"GENERATOR_THREADS": "1"}


@pytest.mark.parametrize("service", ["api", "embedder", "generator", "retriever"])
def test_entrypoint_serves_grpc_in_its_image_environment(service: str, tmp_path: Path) -> None:
    env = ImageEnv.from_dockerfile(ROOT / "services" / service / "Dockerfile")
    python = build(env)
    with entrypoint(python, env, ROOT, tmp_path, peer_env(service, tmp_path, python)) as run:
        run.wait_listening(120)
        # The stubs, grpcio and the health service answer at once; the api and retriever stay NOT_SERVING (their
        # peers are down), the model services turn SERVING once their model loaded in this environment.
        assert run.health() in {"SERVING", "NOT_SERVING"}
        if service in {"embedder", "generator"}:
            run.wait_serving(READY_SECONDS[service])
        assert run.stop(60) == 0, run.output()


@pytest.fixture(scope="module")
def vllm_image() -> tuple[ImageEnv, Path]:
    env = ImageEnv.from_dockerfile(ROOT / "services" / "generator" / "Dockerfile.vllm")
    return env, build(env)


def test_vllm_environment_is_what_the_image_ships(vllm_image: tuple[ImageEnv, Path]) -> None:
    env, python = vllm_image
    assert env.base_sets == (str(VLLM_IMAGE_SET.relative_to(ROOT)),)
    have = installed(python)
    assert mismatches(VLLM_IMAGE_SET, have) == []
    assert have["protobuf"].startswith("6."), have["protobuf"]
    assert "vllm" not in have and "llama-cpp-python" not in have


def test_stubs_load_under_the_vllm_image_protobuf_without_warnings(vllm_image: tuple[ImageEnv, Path]) -> None:
    env, python = vllm_image
    code = (
        "import google.protobuf, grpc\n"
        "from ragline.embedder.v1 import embedder_pb2_grpc\n"
        "from ragline.retriever.v1 import retriever_pb2_grpc\n"
        "from ragline.generator.v1 import generator_pb2, generator_pb2_grpc\n"
        "from grpc_health.v1 import health_pb2_grpc\n"
        "req = generator_pb2.GenerateRequest(prompt='x')\n"
        "assert generator_pb2.GenerateRequest.FromString(req.SerializeToString()) == req\n"
        "print(google.protobuf.__version__, grpc.__version__)\n"
    )
    done = subprocess.run(
        [str(python), "-W", "error", "-c", code],
        env={"PYTHONPATH": env.source_path()}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == installed(python)["protobuf"]


def test_vllm_entrypoint_without_vllm_listens_then_exits_with_the_reason(
    vllm_image: tuple[ImageEnv, Path], tmp_path: Path
) -> None:
    env, python = vllm_image
    with entrypoint(python, env, ROOT, tmp_path, {**VLLM_ENV, "HF_HOME": str(tmp_path / "hf")}) as run:
        run.wait_listening(120)
        code = run.proc.wait(60)
    assert code != 0, run.output()
    assert any("GENERATOR_ENGINE=vllm needs the vllm extra" in m for m in run.messages()), run.output()


def test_vllm_entrypoint_serves_over_vllm_011_api_standin(vllm_image: tuple[ImageEnv, Path], tmp_path: Path) -> None:
    env, python = vllm_image
    extra = {**VLLM_ENV, "HF_HOME": str(tmp_path / "hf")}
    with entrypoint(python, env, ROOT, tmp_path, extra, extra_path=str(STANDIN)) as run:
        run.wait_listening(120)
        run.wait_serving(60)
        with grpc.insecure_channel(f"127.0.0.1:{run.grpc_port}") as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            info = stub.Info(generator_pb2.InfoRequest(), timeout=10)
            reply = stub.Generate(
                generator_pb2.GenerateRequest(
                    messages=[generator_pb2.ChatMessage(role="user", content="What is the capital of France?")]
                ),
                timeout=30,
            )
        assert info.engine == "vllm"
        assert reply.text == STANDIN_REPLY
        assert reply.finish_reason == generator_pb2.FINISH_REASON_STOP
        assert run.stop(60) == 0, run.output()
