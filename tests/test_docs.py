"""Docs that are generated from code stay in step with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_readme_env_table_matches_the_settings_classes() -> None:
    result = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "ci" / "env_table.py")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_every_settings_field_has_a_description() -> None:
    sys.path.insert(0, str(ROOT / "ci"))
    from env_table import env_vars, settings_classes

    missing = [var for _, cls in settings_classes() for var, (_, _, desc) in env_vars(cls).items() if not desc]
    assert missing == []
