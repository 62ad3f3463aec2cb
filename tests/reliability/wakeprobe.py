"""How late this host wakes a sleeping process, measured beside the stack: sleep 2 ms, time the overshoot.

    python -m tests.reliability.wakeprobe --seconds 660

Every `--window` seconds it prints one JSON line: {"t": CLOCK_MONOTONIC seconds at the window's end, "n": wake-ups,
"p50_us", "p99_us", "max_us": overshoot past the 2 ms asked}. A hypervisor that is slow to run a halted vCPU shows
here and not in steal (the guest counts that wait as idle). It runs for `--seconds` at most and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

SLEEP = 0.002


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        window_end = min(end, time.perf_counter() + args.window)
        late: list[float] = []
        while (now := time.perf_counter()) < window_end:
            time.sleep(SLEEP)
            late.append(time.perf_counter() - now - SLEEP)
        late.sort()
        n = len(late)
        print(
            json.dumps(
                {
                    "t": round(time.perf_counter(), 3),
                    "n": n,
                    "p50_us": round(late[n // 2] * 1e6, 1),
                    "p99_us": round(late[min(n - 1, int(n * 0.99))] * 1e6, 1),
                    "max_us": round(late[-1] * 1e6, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
