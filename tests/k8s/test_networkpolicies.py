"""The NetworkPolicies allow exactly the pipeline's edges: evaluated like the API server would, per overlay."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.k8s.manifests import OVERLAYS, Obj, of_kind, render, server, workloads

pytestmark = pytest.mark.k8s

NS_NAME = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict = field(hash=False, compare=False)
    ports: tuple[tuple[str, int, str], ...] = ()  # (name, number, protocol)
    namespace_labels: dict = field(default_factory=dict, hash=False, compare=False)


def matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict, other: Pod, own_namespace: str) -> bool:
    assert "ipBlock" not in peer, "ipBlock peers open the namespace to addresses outside the pipeline"
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != own_namespace:
        return False
    return matches(peer.get("podSelector"), other.labels)


def port_matches(rule_ports: list[dict] | None, target: Pod, number: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        wanted = p.get("port")
        if isinstance(wanted, str):
            wanted = next((n for nm, n, _ in target.ports if nm == wanted), None)
        if p.get("protocol", "TCP") == protocol and (wanted is None or wanted == number):
            return True
    return False


def allows(policies: list[Obj], direction: str, subject: Pod, other: Pod, target: Pod, port: int, proto: str) -> bool:
    """Whether the policies selecting `subject` let traffic go to / come from `other` on `target`'s port."""
    kind = "Ingress" if direction == "ingress" else "Egress"
    selecting = [
        p
        for p in policies
        if kind in p["spec"].get("policyTypes", ["Ingress"]) and matches(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True
    peers_key = "from" if direction == "ingress" else "to"
    for p in selecting:
        for rule in p["spec"].get(direction, []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(x, other, subject.namespace) for x in peers)) and port_matches(
                rule.get("ports"), target, port, proto
            ):
                return True
    return False


def pods_of(objs: list[Obj]) -> list[Pod]:
    (ns,) = of_kind(objs, "Namespace")
    namespace = ns["metadata"]["name"]
    return [
        Pod(
            w["metadata"]["name"],
            namespace,
            w["spec"]["template"]["metadata"]["labels"],
            tuple((p["name"], p["containerPort"], p.get("protocol", "TCP")) for p in server(w)["ports"]),
            {NS_NAME: namespace},
        )
        for w in workloads(objs)
    ]


def outsiders(namespace: str) -> list[Pod]:
    """Who else lives in a cluster: the ingress controller, Prometheus, DNS, a stranger, a stray pod of ours."""

    def ext(name: str, ns: str, labels: dict, ports: tuple = ()) -> Pod:  # noqa: E306
        return Pod(name, ns, labels, ports, {NS_NAME: ns})

    return [
        ext("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
        ext("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        ext("grafana", "monitoring", {"app.kubernetes.io/name": "grafana"}),
        ext("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, (("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"))),
        ext("stranger", "default", {"app": "stranger"}, (("https", 443, "TCP"),)),
        ext("stray", namespace, {"app": "debug"}, (("http", 8080, "TCP"),)),
    ]


def allowed_edges(objs: list[Obj]) -> set[tuple[str, str, int, str]]:
    policies = of_kind(objs, "NetworkPolicy")
    ours = pods_of(objs)
    everyone = ours + outsiders(ours[0].namespace)
    ours_names = {p.name for p in ours} | {"stray"}
    edges = set()
    for src in everyone:
        for dst in everyone:
            if src is dst or (src.name not in ours_names and dst.name not in ours_names):
                continue
            for _, number, proto in dst.ports:
                egress_ok = src.name not in ours_names or allows(policies, "egress", src, dst, dst, number, proto)
                ingress_ok = dst.name not in ours_names or allows(policies, "ingress", dst, src, dst, number, proto)
                if egress_ok and ingress_ok:
                    edges.add((src.name, dst.name, number, proto))
    return edges


PIPELINE = {
    ("ingress-nginx", "api", 8080, "TCP"),
    ("api", "retriever", 50052, "TCP"),
    ("api", "generator", 50053, "TCP"),
    ("api", "embedder", 50051, "TCP"),
    ("retriever", "embedder", 50051, "TCP"),
    ("retriever", "qdrant", 6334, "TCP"),
    ("retriever", "qdrant", 6333, "TCP"),  # qdrant-client: REST port in the URL, gRPC beside it
    ("prometheus", "api", 8080, "TCP"),
    ("prometheus", "embedder", 8081, "TCP"),
    ("prometheus", "retriever", 8082, "TCP"),
    ("prometheus", "generator", 8083, "TCP"),
    ("prometheus", "qdrant", 6333, "TCP"),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_pipeline(overlay: str) -> None:
    objs = render(overlay)
    pods = {p.name for p in pods_of(objs)} | {"stray"}
    expected = PIPELINE | {(p, "kube-dns", 53, proto) for p in pods for proto in ("UDP", "TCP")}
    got = allowed_edges(objs)
    assert got - expected == set(), f"{overlay} allows edges outside the pipeline: {sorted(got - expected)}"
    assert expected - got == set(), f"{overlay} blocks pipeline edges: {sorted(expected - got)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_deny_both_ways(overlay: str) -> None:
    deny = [
        p for p in of_kind(render(overlay), "NetworkPolicy")
        if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]  # fmt: skip
    assert len(deny) == 1


def test_the_evaluator_sees_an_opened_edge() -> None:
    """The check above can fail: an allow-all ingress rule on qdrant shows up as new edges."""
    objs = render("dev")
    qdrant = next(p for p in of_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == "qdrant")
    qdrant["spec"]["ingress"].append({})
    assert ("api", "qdrant", 6334, "TCP") not in allowed_edges(objs)  # api's own egress still denies it
    assert ("stranger", "qdrant", 6334, "TCP") in allowed_edges(objs)
