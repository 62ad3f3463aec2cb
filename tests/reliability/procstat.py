"""What a process costs, read from /proc: resident memory and open file descriptors."""

from __future__ import annotations

import os


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def growth(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Relative growth per name, e.g. 0.05 for +5 %."""
    return {name: round((after[name] - before[name]) / before[name], 4) for name in before if name in after}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
