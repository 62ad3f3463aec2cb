"""checkov finds no failed check in the rendered overlays or the services' Dockerfiles, bar k8s/.checkov.yaml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import CLUSTER_ADDONS, K8S, OVERLAYS, REPO, render_addon, render_text

pytestmark = pytest.mark.k8s

# Its own virtualenv: checkov pins packages (openai 0.28…) that would break the project's.
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
INSTALL = (
    "bash ci/k8s-validate.sh (installs it), or "
    "python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30"
)
CONFIG = K8S / ".checkov.yaml"
DOCKERFILES = sorted(REPO.glob("services/*/Dockerfile*"))


CANARY = """\
apiVersion: v1
kind: Pod
metadata:
  name: canary
  namespace: canary
spec:
  containers:
    - name: server
      image: busybox:1.37
      securityContext:
        privileged: true
"""


@dataclass
class Findings:
    passed: int = 0
    failed: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Findings]:
    """One checkov run (its start-up dominates) over every rendered overlay and Dockerfile, by scanned file."""
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV.relative_to(REPO)}; install it with: {INSTALL}")
    root = tmp_path_factory.mktemp("checkov")
    for overlay in OVERLAYS:
        (root / "overlays" / overlay).mkdir(parents=True)
        (root / "overlays" / overlay / f"{overlay}.yaml").write_text(render_text(overlay))
    for addon in CLUSTER_ADDONS:
        (root / "cluster" / addon).mkdir(parents=True)
        (root / "cluster" / addon / f"{addon}.yaml").write_text(yaml.safe_dump_all(render_addon(addon)))
    # A canary in the same run: proves the config still lets checkov fail something.
    (root / "canary").mkdir()
    (root / "canary" / "canary.yaml").write_text(CANARY)
    for dockerfile in DOCKERFILES:
        copy = root / "dockerfiles" / dockerfile.relative_to(REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dockerfile, copy)
    cmd = [str(CHECKOV), "--config-file", str(CONFIG), "-o", "json", "--framework", "kubernetes", "dockerfile"]
    proc = subprocess.run([*cmd, "-d", str(root)], capture_output=True, text=True, timeout=600, check=False)
    # Exit 1 means failed checks; anything else without JSON is checkov itself failing.
    try:
        raw = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov exited {proc.returncode} without a report:\n{proc.stderr[-3000:]}")
    findings: dict[str, Findings] = defaultdict(Findings)
    for part in raw if isinstance(raw, list) else [raw]:
        results = part.get("results", {})
        assert not results.get("parsing_errors"), f"checkov could not parse {results['parsing_errors']}"
        for check in results.get("passed_checks", []):
            findings[check["file_path"].lstrip("/")].passed += 1
        for check in results.get("failed_checks", []):
            findings[check["file_path"].lstrip("/")].failed.append(
                f"{check['check_id']} {check['check_name']}: {check['resource']} (line {check['file_line_range'][0]})"
            )
    return findings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_has_no_failed_check(report: dict[str, Findings], overlay: str) -> None:
    found = report[f"overlays/{overlay}/{overlay}.yaml"]
    assert found.passed > 100, f"checkov ran only {found.passed} checks on {overlay}: did it read the file?"
    assert not found.failed, f"{overlay}:\n" + "\n".join(found.failed)


@pytest.mark.parametrize("addon", CLUSTER_ADDONS)
def test_rendered_cluster_addon_has_no_failed_check(report: dict[str, Findings], addon: str) -> None:
    found = report[f"cluster/{addon}/{addon}.yaml"]
    assert found.passed > 0, f"checkov ran no check on k8s/cluster/{addon}: did it read the file?"
    assert not found.failed, f"{addon}:\n" + "\n".join(found.failed)


def test_checkov_still_fails_a_privileged_pod(report: dict[str, Findings]) -> None:
    assert any(f.startswith("CKV_K8S_16 ") for f in report["canary/canary.yaml"].failed), "checkov lets anything pass"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_has_no_failed_check(report: dict[str, Findings], dockerfile: Path) -> None:
    found = report[f"dockerfiles/{dockerfile.relative_to(REPO)}"]
    assert found.passed > 0, f"checkov ran no check on {dockerfile}"
    assert not found.failed, f"{dockerfile.relative_to(REPO)}:\n" + "\n".join(found.failed)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_base_images_are_pinned(dockerfile: Path) -> None:
    """What CKV_DOCKER_7 would check if it could resolve a base image ARG (the reason it is skipped)."""
    text = dockerfile.read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    stages = {s.lower() for s in re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M | re.I)}
    for ref in re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, flags=re.M):
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), ref).strip("\"'")
        if image.lower() in stages or image == "scratch":
            continue
        name = image.split("@")[0]
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest" and "$" not in tag), (
            f"{dockerfile.relative_to(REPO)}: FROM {ref} resolves to {image!r}: pin a version tag or digest"
        )


def test_every_skip_has_a_reason() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    lines = CONFIG.read_text().splitlines()
    for check in config.get("skip-check", []):
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        reason = []
        for line in reversed(lines[:index]):
            if not line.strip().startswith("#"):
                break
            reason.append(line)
        assert reason, f"k8s/.checkov.yaml skips {check} without a comment saying why"
