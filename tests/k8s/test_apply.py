"""What `kubectl apply` of an overlay touches: only its own namespace, no object of another overlay, no churn."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import CLUSTER_ADDONS, OVERLAYS, REPO, Obj, get, of_kind, render, render_addon
from tests.k8s.test_schemas import VERSIONS, validate

pytestmark = pytest.mark.k8s

# Kinds without a namespace. Anything else that renders without one would land in kubectl's current namespace.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "IngressClass",
    "PersistentVolume",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
# Where deploy commands are written down for users.
DEPLOY_DOCS = [
    REPO / "README.md",
    REPO / "k8s" / "README.md",
    REPO / "docs" / "runbook.md",
    *sorted((REPO / "k8s").glob("overlays/*/kustomization.yaml")),
    *sorted((REPO / "k8s").glob("cluster/*/kustomization.yaml")),
]
APPLY_COMMAND = re.compile(r"kubectl apply\b[^\n`]*?\s-[fk]\b[^\n`]*")


def key(o: Obj) -> tuple[str, str | None, str]:
    return o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_lives_in_a_namespace_the_overlay_creates(overlay: str) -> None:
    objs = render(overlay)
    created = {o["metadata"]["name"] for o in of_kind(objs, "Namespace")}
    assert created, f"{overlay} creates no Namespace"
    outside = [
        f"{kind}/{name} in {ns!r}"
        for kind, ns, name in map(key, objs)
        if kind not in CLUSTER_SCOPED and ns not in created
    ]
    assert not outside, f"{overlay} writes outside the namespaces it creates ({sorted(created)}): {outside}"


def test_no_two_overlays_render_the_same_object() -> None:
    """Applying one overlay never overwrites another's object (same kind, namespace and name)."""
    seen: dict[tuple[str, str | None, str], dict[str, Obj]] = defaultdict(dict)
    for overlay in OVERLAYS:
        for o in render(overlay):
            seen[key(o)][overlay] = o
    shared = {k: by for k, by in seen.items() if len(by) > 1}
    clashes = [
        f"{k} in {sorted(by)}"
        for k, by in shared.items()
        if k[0] not in CLUSTER_SCOPED or len({yaml.safe_dump(o, sort_keys=True) for o in by.values()}) > 1
    ]
    assert not clashes, f"objects written by more than one overlay: {clashes}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_dashboards_are_not_per_overlay(overlay: str) -> None:
    """One dashboard (with a namespace picker) per cluster: per-overlay copies share a uid and a sidecar file."""
    dashboards = [o for o in render(overlay) if "grafana_dashboard" in o["metadata"].get("labels", {})]
    assert not dashboards, f"{overlay} renders {[key(o) for o in dashboards]}: it belongs in k8s/cluster/"
    assert any("grafana_dashboard" in o["metadata"].get("labels", {}) for o in render_addon("grafana-dashboard"))


@pytest.mark.parametrize("addon", CLUSTER_ADDONS)
def test_cluster_addons_are_apart_from_every_overlay(addon: str) -> None:
    """An add-on is applied once per cluster: none of its objects is also an overlay's, and each one validates."""
    objs = render_addon(addon)
    assert objs, f"k8s/cluster/{addon} renders nothing"
    overlay_keys = {key(o) for overlay in OVERLAYS for o in render(overlay)}
    assert not {key(o) for o in objs} & overlay_keys
    assert all(o["metadata"].get("namespace") or o["kind"] in CLUSTER_SCOPED for o in objs)
    # It creates no Namespace: deleting the add-on must never delete the namespace the adapter runs in.
    assert not of_kind(objs, "Namespace")
    for o in objs:
        for version in VERSIONS:
            validate(o, version)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volume_claim_templates_say_what_the_server_stores(overlay: str) -> None:
    """The API server fills apiVersion, kind and volumeMode into each template; the manifest carries them."""
    for sts in of_kind(render(overlay), "StatefulSet"):
        templates = sts["spec"].get("volumeClaimTemplates", [])
        assert templates, f"StatefulSet/{sts['metadata']['name']} has no volumeClaimTemplates"
        for t in templates:
            where = f"StatefulSet/{sts['metadata']['name']} template {t['metadata']['name']}"
            assert (t.get("apiVersion"), t.get("kind")) == ("v1", "PersistentVolumeClaim"), where
            assert t["spec"].get("volumeMode") in ("Filesystem", "Block"), f"{where}: no volumeMode"
            assert "status" not in t, f"{where}: status is the server's to write"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdbs_hold_only_fields_the_server_keeps_as_written(overlay: str) -> None:
    """policy/v1 PDBs with maxUnavailable and a matchLabels selector: the server defaults nothing into them.

    Client-side apply still reports them `configured` on every run: PodDisruptionBudgetSpec.selector has
    patchStrategy "replace", and kubectl's three-way merge puts a replace-strategy map into the patch even when
    it is unchanged. No manifest can avoid that; server-side apply can (see the deploy-command test below).
    """
    pdbs = of_kind(render(overlay), "PodDisruptionBudget")
    assert pdbs
    for pdb in pdbs:
        where = f"PodDisruptionBudget/{pdb['metadata']['name']}"
        assert pdb["apiVersion"] == "policy/v1", where
        assert set(pdb["spec"]) == {"maxUnavailable", "selector"}, f"{where}: {sorted(pdb['spec'])}"
        assert set(pdb["spec"]["selector"]) == {"matchLabels"}, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_under_an_hpa_leave_replicas_to_it(overlay: str) -> None:
    """A replica count in the manifest would fight the HPA on every apply.

    Client-side apply resets the HPA's count to the manifest's; server-side apply refuses with a conflict once
    the HPA has changed it (the field then belongs to the HPA's manager, with another value).
    """
    objs = render(overlay)
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objs, "HorizontalPodAutoscaler")}
    governed = [w for w in objs if w["kind"] in ("Deployment", "StatefulSet") and w["metadata"]["name"] in targets]
    assert governed
    fixed = [f"{w['kind']}/{w['metadata']['name']}" for w in governed if "replicas" in w["spec"]]
    assert not fixed, f"{overlay}: replicas set beside an HPA: {fixed}"


@pytest.mark.parametrize("path", DEPLOY_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_deploy_commands_apply_server_side(path: Path) -> None:
    """Every `kubectl apply -f/-k` a user is told to run is server-side: re-applying then changes nothing."""
    text = path.read_text()
    commands = APPLY_COMMAND.findall(text)
    client_side = [c for c in commands if "--server-side" not in c]
    assert not client_side, f"client-side apply in {path}: {client_side}"


def test_deploy_docs_name_an_apply_command() -> None:
    """The check above has something to check: the READMEs tell how to apply an overlay and the add-on."""
    text = (REPO / "k8s" / "README.md").read_text()
    commands = APPLY_COMMAND.findall(text)
    assert any("overlays/" in c for c in commands) and any("cluster/" in c for c in commands), commands


def test_generator_hpa_metric_is_served_by_the_adapter_rule() -> None:
    """The HPA's custom metric is the name the cluster's adapter rule serves, summed with vLLM's own queue."""
    (rule,) = yaml.safe_load(
        get(render_addon("prometheus-adapter"), "ConfigMap", "prometheus-adapter-ragline")["data"]["config.yaml"]
    )["rules"]
    for overlay in ("staging", "prod"):
        (metric,) = get(render(overlay), "HorizontalPodAutoscaler", "generator")["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "vllm:num_requests_waiting" in rule["metricsQuery"]
    assert "ragline_generator_requests_waiting" in rule["seriesQuery"]
