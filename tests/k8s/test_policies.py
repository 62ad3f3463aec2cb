"""The manifests' own rules (issue 8), asserted on every rendered overlay."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.k8s.manifests import (
    OVERLAYS,
    SERVICES,
    Obj,
    container_env,
    containers,
    get,
    of_kind,
    pod_spec,
    release_env,
    render,
    render_addon,
    server,
    workloads,
)

pytestmark = pytest.mark.k8s

PORTS = {
    "api": {"http": 8080, "grpc": 50050},
    "embedder": {"http": 8081, "grpc": 50051},
    "retriever": {"http": 8082, "grpc": 50052},
    "generator": {"http": 8083, "grpc": 50053},
    "qdrant": {"http": 6333, "grpc": 6334},
}
GRPC_SERVICES = {
    "embedder": "ragline.embedder.v1.EmbedderService",
    "retriever": "ragline.retriever.v1.RetrieverService",
    "generator": "ragline.generator.v1.GeneratorService",
}
GPU = "nvidia.com/gpu"
NAME = "app.kubernetes.io/name"


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(overlay: str) -> list[Obj]:
    return render(overlay)


def deployments(objs: list[Obj]) -> list[Obj]:
    return of_kind(objs, "Deployment")


def name(o: Obj) -> str:
    return str(o["metadata"]["name"])


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels + matchExpressions In/NotIn/Exists/DoesNotExist) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


# ---- one HPA and one PDB per Deployment ----


def test_every_deployment_has_one_hpa_and_a_pdb(objs: list[Obj]) -> None:
    hpas = of_kind(objs, "HorizontalPodAutoscaler")
    pdbs = of_kind(objs, "PodDisruptionBudget")
    assert {name(d) for d in deployments(objs)} == set(SERVICES)
    for d in deployments(objs):
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name(d)}
        mine = [h for h in hpas if h["spec"]["scaleTargetRef"] == target]
        assert len(mine) == 1, f"{name(d)} has {len(mine)} HPAs"
        assert mine[0]["apiVersion"] == "autoscaling/v2"
        assert 1 <= mine[0]["spec"]["minReplicas"] <= mine[0]["spec"]["maxReplicas"]
        assert mine[0]["spec"]["maxReplicas"] > 1, f"{name(d)}: an HPA whose bounds are equal never scales"
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(matches(p["spec"]["selector"], labels) for p in pdbs), f"{name(d)} has no PodDisruptionBudget"


# ---- every container: limits, probes, restricted security context, graceful stop ----


def test_every_container_has_requests_and_limits(objs: list[Obj]) -> None:
    for w in workloads(objs):
        for c in containers(w):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part, {}))
                assert not missing, f"{name(w)}/{c['name']} has no {part} for {missing}"


def test_every_container_has_probes(objs: list[Obj]) -> None:
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, f"{name(w)}/{c['name']} lacks a probe"
            assert c["readinessProbe"] != c["livenessProbe"], f"{name(w)}: readiness must not equal liveness"


@pytest.mark.parametrize("svc", sorted(GRPC_SERVICES))
def test_readiness_is_a_native_grpc_probe_of_the_service(objs: list[Obj], svc: str) -> None:
    probe = server(get(objs, "Deployment", svc))["readinessProbe"]
    assert probe["grpc"] == {"port": PORTS[svc]["grpc"], "service": GRPC_SERVICES[svc]}


def test_liveness_is_healthz(objs: list[Obj]) -> None:
    for d in deployments(objs):
        assert server(d)["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name(d)


@pytest.mark.parametrize(("svc", "at_least"), [("embedder", 300), ("generator", 600)])
def test_startup_probe_covers_model_loading(objs: list[Obj], svc: str, at_least: int) -> None:
    probe = server(get(objs, "Deployment", svc))["startupProbe"]
    budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) + probe.get("initialDelaySeconds", 0)
    assert budget >= at_least, f"{svc} startupProbe allows {budget}s for model loading, want >= {at_least}s"


def test_restricted_pod_security(objs: list[Obj]) -> None:
    """Pod Security Standards "restricted", plus a read-only root filesystem."""
    for w in workloads(objs):
        spec = pod_spec(w)
        pod_sc = spec.get("securityContext", {})
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), f"{name(w)} sets {field}"
        assert not any("hostPath" in v for v in spec.get("volumes", [])), f"{name(w)} mounts a hostPath"
        assert spec.get("automountServiceAccountToken") is False, f"{name(w)} mounts a service account token"
        for c in containers(w):
            sc = c.get("securityContext", {})
            where = f"{name(w)}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            assert "emptyDir" in volumes.get(mounts.get("/tmp", ""), {}), f"{where}: /tmp is not an emptyDir"


def test_namespace_enforces_restricted(objs: list[Obj], overlay: str) -> None:
    (ns,) = of_kind(objs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {name(ns)}


def test_graceful_termination_covers_the_drain(objs: list[Obj]) -> None:
    """preStop pause + the service's own drain (SHUTDOWN_GRACE_SECONDS) must fit the grace period."""
    for d in deployments(objs):
        svc = name(d)
        c = server(d)
        pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        drain = float(container_env(objs, svc)[f"{svc.upper()}_SHUTDOWN_GRACE_SECONDS"])
        grace = pod_spec(d)["terminationGracePeriodSeconds"]
        assert pause >= 3, f"{svc}: preStop pause {pause}s is shorter than endpoint propagation"
        assert grace >= pause + drain + 3, f"{svc}: grace {grace}s < preStop {pause}s + drain {drain}s"
    api_drain = float(container_env(objs, "api")["API_SHUTDOWN_GRACE_SECONDS"])
    stream = float(container_env(objs, "api").get("API_STREAM_TIMEOUT_SECONDS", 120))
    assert api_drain >= stream, "the api's drain must outlast its longest streamed answer"


# ---- names, ports, labels, spreading ----


def test_server_container_and_named_ports(objs: list[Obj]) -> None:
    for w in workloads(objs):
        c = server(w)
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == PORTS[name(w)], name(w)
        if name(w) in SERVICES:
            env = container_env(objs, name(w))
            prefix = name(w).upper()
            assert int(env[f"{prefix}_HTTP_PORT"]) == PORTS[name(w)]["http"]
            assert int(env[f"{prefix}_GRPC_PORT"]) == PORTS[name(w)]["grpc"]
            assert env[f"{prefix}_HOST"] == "0.0.0.0", f"{name(w)} must bind all interfaces in a pod"


def test_labels_and_name_only_selectors(objs: list[Obj]) -> None:
    for o in objs:
        if o["kind"] == "Namespace":
            continue
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "ragline", f"{o['kind']}/{name(o)} lacks part-of"
        if o["kind"] != "NetworkPolicy" or name(o) in PORTS:
            assert NAME in labels, f"{o['kind']}/{name(o)} lacks {NAME}"
    for o in workloads(objs) + of_kind(objs, "PodDisruptionBudget"):
        assert o["spec"]["selector"] == {"matchLabels": {NAME: name(o)}}, f"{o['kind']}/{name(o)}"
        if o["kind"] in ("Deployment", "StatefulSet"):
            tpl = o["spec"]["template"]["metadata"]["labels"]
            assert tpl[NAME] == name(o) and tpl["app.kubernetes.io/part-of"] == "ragline"
    for s in of_kind(objs, "Service"):
        assert s["spec"]["selector"] == {NAME: s["metadata"]["labels"][NAME]}, name(s)


def test_multi_replica_deployments_spread_across_nodes(objs: list[Obj]) -> None:
    for d in deployments(objs):
        if get(objs, "HorizontalPodAutoscaler", name(d))["spec"]["maxReplicas"] > 1:
            spread = pod_spec(d).get("topologySpreadConstraints", [])
            assert any(
                t["topologyKey"] == "kubernetes.io/hostname" and t["labelSelector"] == {"matchLabels": {NAME: name(d)}}
                for t in spread
            ), f"{name(d)} does not spread across nodes"


def test_service_accounts_without_token(objs: list[Obj]) -> None:
    accounts = {name(a): a for a in of_kind(objs, "ServiceAccount")}
    for w in workloads(objs):
        sa = pod_spec(w)["serviceAccountName"]
        assert sa in accounts, f"{name(w)} uses a ServiceAccount that is not rendered"
        assert accounts[sa]["automountServiceAccountToken"] is False


# ---- Services: ClusterIP for HTTP, headless for gRPC round robin; peers point at them ----


def test_grpc_peers_resolve_every_pod(objs: list[Obj]) -> None:
    """Clients use round_robin: their targets must be dns:/// names of headless Services with the right port."""
    services = {name(s): s for s in of_kind(objs, "Service")}
    peers = {
        ("api", "API_RETRIEVER_ADDR"): "retriever",
        ("api", "API_GENERATOR_ADDR"): "generator",
        ("api", "API_EMBEDDER_ADDR"): "embedder",
        ("retriever", "RETRIEVER_EMBEDDER_ADDR"): "embedder",
    }
    for (client, var), peer in peers.items():
        value = container_env(objs, client)[var]
        m = re.fullmatch(r"dns:///([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", value)
        assert m, f"{client} {var}={value!r} is not a dns:/// target"
        svc = services[m.group(1)]
        assert svc["spec"].get("clusterIP") == "None", f"{var} points at {m.group(1)}, which is not headless"
        assert svc["spec"]["selector"] == {NAME: peer}
        assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"]} and int(m.group(2)) == PORTS[peer]["grpc"]


def test_retriever_reaches_qdrant_over_grpc(objs: list[Obj]) -> None:
    """qdrant-client (prefer_grpc) takes the REST port from the URL and speaks gRPC on 6334 of the same host."""
    url = container_env(objs, "retriever")["RETRIEVER_QDRANT_URL"]
    m = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url)
    assert m, url
    ports = {p["name"]: p["port"] for p in get(objs, "Service", m.group(1))["spec"]["ports"]}
    assert ports == {"http": int(m.group(2)), "grpc": 6334}, ports


def test_qdrant_is_a_statefulset_with_its_own_volume(objs: list[Obj]) -> None:
    sts = get(objs, "StatefulSet", "qdrant")
    governing = get(objs, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/qdrant/storage"} in server(sts)["volumeMounts"]
    image = server(sts)["image"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), image


# ---- images and the release unit ----


def test_images_are_pinned_to_the_release(objs: list[Obj], overlay: str) -> None:
    """Every ragline image carries the overlay's RAGLINE_RELEASE as its tag; nothing anywhere is `latest`."""
    release = release_env(overlay)["RAGLINE_RELEASE"]
    for w in workloads(objs):
        for c in containers(w):
            repo, _, tag = c["image"].partition("@")[0].rpartition(":")
            assert repo and tag and tag != "latest", f"{name(w)}: image {c['image']} is not pinned"
            if repo.startswith("ragline/"):
                assert tag == release, f"{name(w)}: {c['image']} but RAGLINE_RELEASE={release}"


def test_prod_has_no_latest_anywhere() -> None:
    text = yaml.safe_dump_all(render("prod"))
    assert not re.search(r"image: [^\s]+:latest\b", text)
    assert all(":" in c["image"] for w in workloads(render("prod")) for c in containers(w))


def test_every_deployment_reads_the_release_unit(objs: list[Obj], overlay: str) -> None:
    release = release_env(overlay)
    for d in deployments(objs):
        refs = [s["configMapRef"]["name"] for s in server(d)["envFrom"] if "configMapRef" in s]
        assert refs[0].startswith("ragline-release-"), f"{name(d)} does not read the hashed release ConfigMap first"
        assert get(objs, "ConfigMap", refs[0])["data"] == release
        assert any(r.startswith(f"{name(d)}-config-") for r in refs), f"{name(d)} has no hashed service config"
        service_keys = set(get(objs, "ConfigMap", next(r for r in refs if r.startswith(f"{name(d)}-config-")))["data"])
        assert not service_keys & set(release), f"{name(d)}: {service_keys & set(release)} set twice"


def test_release_change_rolls_every_pod(overlay: str) -> None:
    """Hashed names: the release ConfigMap of each overlay differs, so switching releases changes pod specs."""
    names = {o["metadata"]["name"] for o in render(overlay) if o["metadata"]["name"].startswith("ragline-release-")}
    assert len(names) == 1 and re.fullmatch(r"ragline-release-[a-z0-9]{10}", names.pop())


# ---- secrets ----


def test_no_secret_is_rendered_and_api_keys_are_a_file(objs: list[Obj]) -> None:
    assert not of_kind(objs, "Secret"), "Secrets are created out of band, never rendered from the repository"
    api = get(objs, "Deployment", "api")
    env = container_env(objs, "api")
    assert env["API_ENABLE_AUTH"] == "true" and "API_KEYS" not in env
    directory, _, filename = env["API_KEYS_FILE"].rpartition("/")
    mount = next(m for m in server(api)["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in pod_spec(api)["volumes"] if v["name"] == mount["name"])
    assert mount.get("readOnly") is True
    assert {"key": "api-keys", "path": filename} in volume["secret"]["items"]
    assert volume["secret"].get("optional", False) is False, "a missing key Secret must stop the api, not open it"


# ---- generator: GPU in staging and prod, CPU in dev ----


def test_generator_gpu_only_outside_dev(objs: list[Obj], overlay: str) -> None:
    gen = get(objs, "Deployment", "generator")
    c = server(gen)
    env = container_env(objs, "generator")
    spec = pod_spec(gen)
    if overlay == "dev":
        assert env["GENERATOR_ENGINE"] == "llamacpp"
        for w in workloads(objs):
            for ct in containers(w):
                assert GPU not in str(ct["resources"]), f"{name(w)} asks for a GPU in dev"
        assert "nodeSelector" not in spec and "tolerations" not in spec
        return
    assert env["GENERATOR_ENGINE"] == "vllm"
    assert c["image"].startswith("ragline/generator-vllm:")
    assert int(c["resources"]["limits"][GPU]) >= 1
    assert spec["nodeSelector"] and any(t["key"] == GPU for t in spec["tolerations"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    models = next(m for p, m in mounts.items() if env["HF_HOME"].startswith(p + "/"))
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert get(objs, "PersistentVolumeClaim", claim), "the weights' volume is rendered"
    others = [w for w in workloads(objs) if name(w) != "generator"]
    assert not any(GPU in str(ct["resources"]) for w in others for ct in containers(w))


def test_generator_scales_on_requests_waiting_outside_dev(objs: list[Obj], overlay: str) -> None:
    hpa = get(objs, "HorizontalPodAutoscaler", "generator")["spec"]
    if overlay == "dev":
        assert [m["type"] for m in hpa["metrics"]] == ["Resource"]
        return
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "ragline_generator_requests_queued"
    # The adapter's rule is a cluster add-on (k8s/cluster/prometheus-adapter), not part of the overlay.
    config = yaml.safe_load(
        get(render_addon("prometheus-adapter"), "ConfigMap", "prometheus-adapter-ragline")["data"]["config.yaml"]
    )
    served = [r for r in config["rules"] if r["name"]["as"] == "ragline_generator_requests_queued"]
    assert served and "ragline_generator_requests_waiting" in served[0]["seriesQuery"]
    assert served[0]["resources"]["overrides"]["pod"] == {"resource": "pod"}


# ---- Ingress ----


def test_ingress_routes_only_to_the_api(objs: list[Obj]) -> None:
    (ing,) = of_kind(objs, "Ingress")
    assert ing["spec"]["ingressClassName"]
    hosts = [r["host"] for r in ing["spec"]["rules"]]
    assert ing["spec"]["tls"] and set(hosts) <= set(ing["spec"]["tls"][0]["hosts"])
    backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": "api", "port": {"name": "http"}}]
    assert "defaultBackend" not in ing["spec"]
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in of_kind(objs, "Service"))
