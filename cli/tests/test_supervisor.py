"""Unit tests for the local stack's supervisor: backoff, its reset, the crash-loop stop, one restart per exit."""

from __future__ import annotations

import pytest

from ragline_cli.supervisor import Backoff, CrashLoop, RestartPolicy, Supervisor

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStack:
    """Processes as exit codes: None while running."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.codes: dict[str, int | None] = dict.fromkeys(names)
        self.starts: list[str] = []

    def exit_code(self, name: str) -> int | None:
        return self.codes[name]

    def start(self, name: str) -> None:
        self.codes[name] = None
        self.starts.append(name)

    def tail(self, name: str, lines: int = 30) -> str:
        return f"{name}: Traceback (most recent call last)"

    def pids(self) -> dict[str, int]:
        return {n: 100 + i for i, n in enumerate(self.codes) if self.codes[n] is None}


def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_minute() -> None:
    b = Backoff(RestartPolicy(crash_loop_restarts=100))
    delays = []
    now = 0.0
    for _ in range(7):
        b.on_start(now)
        now += 1.0  # crashes a second after each start
        delay = b.on_exit(now)
        assert delay is not None
        delays.append(delay)
        now += delay
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    b.on_start(now)
    assert b.on_exit(now + 60.0) == 1.0  # ran a minute: back to the first step


def test_sixth_exit_within_two_minutes_is_a_crash_loop_but_spread_out_exits_are_not() -> None:
    b = Backoff(RestartPolicy(max_backoff=1.0))
    assert [b.on_exit(t) for t in (0, 10, 20, 30, 40)] == [1, 1, 1, 1, 1]
    assert b.on_exit(50) is None
    spread = Backoff(RestartPolicy(max_backoff=1.0))
    assert all(spread.on_exit(t * 30.0) is not None for t in range(20))  # at most 4 within any 120 s


def test_supervisor_restarts_only_the_process_that_exited_after_its_backoff() -> None:
    clock = Clock()
    stack = FakeStack(("embedder", "api"))
    lines: list[str] = []
    sup = Supervisor(stack, ("embedder", "api"), say=lines.append, clock=clock)
    sup.poll()
    assert stack.starts == []
    stack.codes["embedder"] = -9
    clock.now = 5.0
    sup.poll()
    assert sup.down() == ["embedder"] and stack.starts == []
    assert lines == ["embedder exited unexpectedly (code -9) after 5s; restarting in 1s"]
    clock.now = 5.5
    sup.poll()
    assert stack.starts == []  # backoff not over
    clock.now = 6.0
    sup.poll()
    assert stack.starts == ["embedder"] and sup.down() == []
    assert lines[-1] == "embedder restarted (pid 100, restart 1)"
    sup.poll()
    assert stack.starts == ["embedder"]  # running again: nothing more to do


def test_crash_loop_stops_with_the_services_last_log_lines() -> None:
    clock = Clock()
    stack = FakeStack(("generator",))
    sup = Supervisor(stack, ("generator",), policy=RestartPolicy(max_backoff=2.0), clock=clock)
    with pytest.raises(CrashLoop) as info:
        for _ in range(50):
            stack.codes["generator"] = 1
            sup.poll()
            clock.now += 3.0
            sup.poll()
    assert stack.starts.count("generator") == 5
    assert info.value.name == "generator"
    assert "crash-looping" in str(info.value) and "Traceback" in str(info.value)
