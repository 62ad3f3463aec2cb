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


def host_cpu_seconds() -> dict[str, float]:
    """The whole host's CPU time so far, from the first line of /proc/stat: `busy` (every core's time doing work,
    any process), `steal` (time the hypervisor gave this VM's cores to someone else) and `total`."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    tck = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / tck,
        "steal": steal / tck,
        "total": sum(ticks[:8]) / tck,
    }
