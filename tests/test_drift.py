"""Parity: settings, docker-compose.yml and the rendered manifests agree on env var names and ports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from ragline_common.runtime import RUNTIME_ENV
from tests.k8s.manifests import OVERLAYS, container_env, container_ports, render

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
from env_table import SETTINGS, env_vars, settings_classes  # noqa: E402

pytestmark = pytest.mark.k8s

SERVICES = ("embedder", "retriever", "generator", "api")
# Variables read by libraries rather than by ragline's settings: each is documented where it is set.
FOREIGN_PREFIXES = (
    "OTEL_",
    "HF_",
    "TRANSFORMERS_",
    "TRITON_",
    "CUDA_",
    "NCCL_",
    "TOKENIZERS_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "PYTHON",
    "VLLM_",
    "XDG_",
)


def known_vars(service: str) -> set[str]:
    out = set(env_vars(settings_classes()[0][1]))  # RAGLINE_* release settings, read by every service
    for svc, cls in settings_classes():
        if svc == service:
            out |= set(env_vars(cls))
    return out


def default_ports(service: str) -> dict[str, int]:
    cls = dict(settings_classes())[service]
    return {"http": cls.model_fields["http_port"].default, "grpc": cls.model_fields["grpc_port"].default}


def unknown(env: dict[str, str], service: str) -> list[str]:
    """Variables nobody reads: with this service's prefix, unknown to it; otherwise unknown to every service.

    (The release ConfigMap reaches every pod, so the embedder also sees GENERATOR_MODEL; that one is fine.)
    """
    everyone = set().union(*(known_vars(s) for s in SERVICES))
    own = service.upper() + "_"
    return sorted(
        k
        for k in env
        if not k.startswith(FOREIGN_PREFIXES)
        and (k not in known_vars(service) if k.startswith(own) else k not in everyone)
    )


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_settings_module_is_listed() -> None:
    assert [svc for svc, _, _ in SETTINGS][1:] == list(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_compose_sets_only_variables_the_service_reads(service: str) -> None:
    env = compose()["services"][service].get("environment", {})
    assert unknown(env, service) == []


@pytest.mark.parametrize("service", SERVICES)
def test_compose_healthcheck_uses_the_service_http_port(service: str) -> None:
    check = " ".join(compose()["services"][service]["healthcheck"]["test"])
    assert f":{default_ports(service)['http']}/readyz" in check


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_manifests_set_only_variables_the_service_reads(overlay: str, service: str) -> None:
    env = container_env(render(overlay), service)
    assert unknown(env, service) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_manifest_ports_match_the_settings(overlay: str, service: str) -> None:
    objs = render(overlay)
    env = container_env(objs, service)
    want = default_ports(service)
    p = service.upper() + "_"
    want = {
        "http": int(env.get(p + "HTTP_PORT", want["http"])),
        "grpc": int(env.get(p + "GRPC_PORT", want["grpc"])),
    }
    ports = container_ports(objs, service)
    assert {k: ports[k] for k in ("http", "grpc") if k in ports} == {k: want[k] for k in ports if k in want}
    assert "http" in ports


@pytest.mark.parametrize("service", ("retriever", "api"))
def test_peer_addresses_point_at_the_peers_grpc_ports(service: str) -> None:
    peers = {"RETRIEVER_EMBEDDER_ADDR": "embedder", "API_RETRIEVER_ADDR": "retriever"}
    peers |= {"API_GENERATOR_ADDR": "generator", "API_EMBEDDER_ADDR": "embedder"}
    env_compose = compose()["services"][service]["environment"]
    env_k8s = container_env(render("dev"), service)
    for var, peer in peers.items():
        if not var.startswith(service.upper()):
            continue
        port = str(default_ports(peer)["grpc"])
        assert env_k8s[var].rsplit(":", 1)[1] == port, var
        assert env_compose[var].rsplit(":", 1)[-1].rstrip("}").split(":")[-1] == port, var


@pytest.mark.parametrize(
    "dockerfile", sorted(ROOT.glob("services/*/Dockerfile*")), ids=lambda p: p.parent.name + "/" + p.name
)
def test_images_carry_the_runtime_env(dockerfile: Path) -> None:
    """Every image sets what the local stack sets for grpcio (ragline_common.runtime), so benches measure images."""
    text = dockerfile.read_text()
    for name, value in RUNTIME_ENV.items():
        assert f"{name}={value}" in text, f"{dockerfile.relative_to(ROOT)} does not set {name}={value}"
