"""The Qdrant server image and the qdrant-client pin stay within the one minor version the client supports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from qdrant_client.common.version_check import is_compatible

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[4]
IMAGE = "qdrant/qdrant"


def minor(version: str) -> tuple[int, int]:
    m = re.fullmatch(r"v?(\d+)\.(\d+)\.\d+", version)
    assert m, f"expected a release version like v1.20.0, got {version!r}"
    return int(m.group(1)), int(m.group(2))


def compatible(server: str, client: str) -> bool:
    """Same major, minors at most one apart: the rule qdrant-client checks at start."""
    (smaj, smin), (cmaj, cmin) = minor(server), minor(client)
    return smaj == cmaj and abs(smin - cmin) <= 1


def client_pin() -> str:
    m = re.search(r"^qdrant-client==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert m, "constraints.txt pins no qdrant-client"
    return m.group(1)


def server_tags() -> dict[str, str]:
    """Every place that names the server's tag: the compose image and each Kustomization's images entry."""
    tags: dict[str, str] = {}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    image = compose["services"]["qdrant"]["image"]
    m = re.fullmatch(rf"(?:docker\.io/)?{IMAGE}:(v[\d.]+)", image)
    assert m, f"docker-compose.yml: expected {IMAGE}:vX.Y.Z, got {image!r}"
    tags["docker-compose.yml"] = m.group(1)
    for path in sorted((REPO / "k8s").rglob("kustomization.yaml")):
        for entry in yaml.safe_load(path.read_text()).get("images", []):
            if entry.get("name") == IMAGE and "newTag" in entry:
                tags[str(path.relative_to(REPO))] = entry["newTag"]
    return tags


def test_the_statefulset_image_is_the_one_kustomize_retags() -> None:
    sts = yaml.safe_load((REPO / "k8s/base/qdrant/statefulset.yaml").read_text())
    (container,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    assert container["image"] == IMAGE
    assert "k8s/base/kustomization.yaml" in server_tags()


def test_server_images_are_within_one_minor_of_the_client() -> None:
    client = client_pin()
    tags = server_tags()
    assert len(set(tags.values())) == 1, f"compose and Kustomize name different Qdrant releases: {tags}"
    far = {where: tag for where, tag in tags.items() if not compatible(tag, client)}
    assert not far, f"qdrant-client {client} supports servers one minor apart at most; these are further: {far}"


@pytest.mark.parametrize(
    ("server", "client", "ok"),
    [
        ("v1.20.0", "1.20.0", True),
        ("v1.19.3", "1.20.0", True),
        ("v1.17.0", "1.20.0", False),
        ("v2.0.0", "1.20.0", False),
    ],
)
def test_the_rule_is_qdrant_clients_own(server: str, client: str, ok: bool) -> None:
    assert compatible(server, client) is ok
    assert is_compatible(client, server.removeprefix("v")) is ok
