"""Every overlay builds, and every rendered object validates strictly against Kubernetes' and the CRDs' schemas."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version, major_minor

from tests.k8s.manifests import OVERLAYS, Obj, kubectl, render

pytestmark = pytest.mark.k8s

CRD_DIR = Path(__file__).parent / "crds"
# The oldest Kubernetes we support (native sidecar-free pods, preStop `sleep`, gRPC probes GA) and the newest
# whose schemas the installed kubernetes-validate ships.
VERSIONS = ("1.30", major_minor(latest_version()))
# Kinds of CRDs, validated against tests/k8s/crds/*.json instead (see SOURCE.md there).
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((CRD_DIR / CRD_KINDS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(obj: Obj, version: str) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_KINDS:
        crd_validator(*key).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def test_kubectl_bundles_kustomize_5() -> None:
    """The overlays use Kustomize v5 (`labels` without selectors, Components): kubectl >= 1.27 bundles it."""
    out = subprocess.run([kubectl(), "version", "--client", "-o", "json"], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    major = re.match(r"v(\d+)", info["kustomizeVersion"])
    assert major and int(major.group(1)) >= 5, f"kubectl bundles Kustomize {info['kustomizeVersion']}, need v5"
    assert (int(info["clientVersion"]["major"]), int(re.sub(r"\D.*", "", info["clientVersion"]["minor"]))) >= (1, 27)


def test_the_newest_schemas_are_newer_than_the_oldest_supported() -> None:
    assert VERSIONS[1] != VERSIONS[0], f"kubernetes-validate ships nothing newer than {VERSIONS[0]}"


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_overlay_builds_with_unique_objects(overlay: str) -> None:
    objs = render(overlay)
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert objs, f"k8s/{overlay} rendered nothing"
    assert len(keys) == len(set(keys)), f"duplicate objects in {overlay}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    failures = []
    for obj in render(overlay):
        try:
            validate(obj, version)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            failures.append(f"{label(obj)}: {'/'.join(map(str, exc.absolute_path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{label(obj)}: {exc.message} (add its CRD schema to tests/k8s/crds/)")
    assert not failures, f"{overlay} against Kubernetes {version}:\n" + "\n".join(failures)


def test_crd_objects_are_rendered_and_covered() -> None:
    """The monitoring component's objects exist in staging and prod, so the CRD schemas are really exercised."""
    for overlay in ("staging", "prod"):
        kinds = {(o["apiVersion"], o["kind"]) for o in render(overlay)}
        assert set(CRD_KINDS) <= kinds, f"{overlay} lacks {set(CRD_KINDS) - kinds}"


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always")),
        ("Deployment", lambda o: o["spec"].update(replicas="two")),
        ("PodMonitor", lambda o: o["spec"]["podMetricsEndpoints"][0].update(prot="http")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(expression="up")),
        ("ServiceMonitor", lambda o: o["spec"].update(endpoint=[])),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_validation_is_strict(kind: str, mutate: Callable[[Obj], None], version: str) -> None:
    """A misspelt field or a wrong type is caught: the validation above can fail."""
    obj = next(o for o in render("prod") if o["kind"] == kind)
    mutate(obj)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(obj, version)
