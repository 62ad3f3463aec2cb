"""Static safety: hadolint on every Dockerfile, bandit (medium and high severity) on services/ and libs/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Justified ignores, each with its reason: none are needed today. A new one goes here, never on the command line.
HADOLINT_IGNORES: dict[str, str] = {}
BANDIT_SKIPS: dict[str, str] = {}  # per-line exceptions are `# nosec BXXX` with a reason next to them


def dockerfiles() -> list[Path]:
    skip = {".venv", "node_modules", ".git"}
    return sorted(
        p for p in ROOT.rglob("*Dockerfile*") if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)
    )


def test_there_are_dockerfiles_to_check() -> None:
    assert dockerfiles(), "no Dockerfile found: the hadolint test would check nothing"


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    cmd = [str(BIN / "hadolint"), "--no-color", "--format", "json", "--failure-threshold", "info"]
    for rule in HADOLINT_IGNORES:
        cmd += ["--ignore", rule]
    result = subprocess.run([*cmd, str(dockerfile)], capture_output=True, text=True, timeout=60)  # noqa: S603
    findings = json.loads(result.stdout or "[]")
    assert not findings, "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_bandit_finds_nothing_medium_or_high() -> None:
    targets = [str(ROOT / "services"), str(ROOT / "libs")]
    cmd = [
        str(BIN / "bandit"), "-r", *targets, "--severity-level", "medium", "--confidence-level", "low",
        "--format", "json", "--quiet",
        # Generated stubs and the tests' own fixtures are not shipped code.
        "--exclude", ",".join([str(ROOT / "libs/proto/src"), "*/tests/*", "*/.venv/*"]),
    ]  # fmt: skip
    if BANDIT_SKIPS:
        cmd += ["--skip", ",".join(BANDIT_SKIPS)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)  # noqa: S603
    report = json.loads(result.stdout)
    findings = report["results"]
    assert not findings, "\n".join(
        f"{f['filename']}:{f['line_number']} {f['test_id']} {f['issue_severity']}: {f['issue_text']}" for f in findings
    )
    assert not report["errors"], report["errors"]
    assert report["metrics"]["_totals"]["loc"] > 1000, "bandit scanned almost nothing: are the paths right?"
