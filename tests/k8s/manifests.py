"""Render the Kustomize overlays once per test session and look things up in them (shared with the drift test)."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "staging", "prod")
# Cluster add-ons: applied once per cluster, beside any number of overlays (k8s/README.md).
CLUSTER_ADDONS = ("prometheus-adapter", "grafana-dashboard")
SERVICES = ("api", "embedder", "retriever", "generator")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")

Obj = dict[str, Any]


class RenderError(RuntimeError):
    """kubectl is missing or `kubectl kustomize` refused the folder."""


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RenderError("kubectl not found on PATH: install kubectl >= 1.27 (Kustomize v5) to render k8s/")
    return path


@functools.cache
def _render_text(folder: str) -> str:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(K8S / folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize k8s/{folder} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def render_text(overlay: str) -> str:
    """The YAML stream of `kubectl kustomize k8s/overlays/<overlay>` ("base" renders k8s/base)."""
    return _render_text("base" if overlay == "base" else f"overlays/{overlay}")


def render_addon(addon: str) -> list[Obj]:
    """Every object of `kubectl kustomize k8s/cluster/<addon>`."""
    return copy.deepcopy(_parse(_render_text(f"cluster/{addon}")))


def render(overlay: str) -> list[Obj]:
    """Every object an overlay renders, as dicts (a fresh copy each call: tests may mutate it)."""
    return copy.deepcopy(_parse(render_text(overlay)))


@functools.cache
def _parse(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def get(objs: list[Obj], kind: str, name: str) -> Obj:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise KeyError(f"no {kind} named {name!r}")


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def server(workload: Obj) -> Obj:
    """The container named `server` (every ragline workload has exactly one)."""
    (found,) = [c for c in pod_spec(workload)["containers"] if c["name"] == "server"]
    return found


def container_env(objs: list[Obj], deployment: str, container: str = "server") -> dict[str, str]:
    """The environment a container starts with: envFrom ConfigMaps/Secrets in order, then env.

    Values from Secrets and field references are shown as `<secret NAME/KEY>` / `<field PATH>`: their
    names are what a drift check compares, their values are not in the manifests.
    """
    workload = next(o for o in workloads(objs) if o["metadata"]["name"] == deployment)
    (c,) = [c for c in containers(workload) if c["name"] == container]
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = get(objs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
            env.update({prefix + k: str(v) for k, v in data.items()})
        elif "secretRef" in source:
            env[prefix + "*"] = f"<secret {source['secretRef']['name']}>"
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"<secret {ref['name']}/{ref['key']}>"
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = str(get(objs, "ConfigMap", ref["name"]).get("data", {}).get(ref["key"], ""))
        else:
            env[var["name"]] = f"<field {var.get('valueFrom')}>"
    return env


def container_ports(objs: list[Obj], deployment: str) -> dict[str, int]:
    """Named ports of a workload's `server` container: {"http": 8081, "grpc": 50051}."""
    workload = next(o for o in workloads(objs) if o["metadata"]["name"] == deployment)
    return {p["name"]: p["containerPort"] for p in server(workload).get("ports", [])}


def release_env(overlay: str) -> dict[str, str]:
    """k8s/overlays/<overlay>/release.env as a dict (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in (K8S / "overlays" / overlay / "release.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out
