"""The suite's figures: merged per test into report.json and printed at the end of the run."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPORT = Path(os.environ.get("RAGLINE_RELIABILITY_REPORT", Path(__file__).with_name("report.json")))
# Figures recorded in this pytest session, for the terminal summary.
SESSION: dict[str, dict[str, Any]] = {}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None


def record(test: str, figures: dict[str, Any]) -> None:
    """Merge one test's figures into report.json (other tests' entries are kept) and print them."""
    entry = {
        **figures,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cpus, {platform.machine()}, python {platform.python_version()}",
        # Other work on the machine skews every figure; the load average says how much there was.
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    SESSION[test] = entry
    try:
        data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    except (OSError, ValueError):
        data = {}
    data[test] = entry
    REPORT.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
    print(f"\n[{test}] " + json.dumps(figures, indent=1))


def busy_host() -> bool:
    """More runnable work than twice the cores (1-min load average): the services wait for a core, whatever the
    test does, so its timing bounds say more about the other work than about ragline. Tests then report their
    figures as an xfail instead of judging them (the soak skips its p99 on such minutes for the same reason)."""
    return os.getloadavg()[0] > 2 * (os.cpu_count() or 1)
