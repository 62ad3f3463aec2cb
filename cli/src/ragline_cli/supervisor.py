"""Restart what crashes, as kubelet does: exponential backoff, reset after a healthy minute, stop on a crash loop."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class RestartPolicy:
    """kubelet's CrashLoopBackOff shape: 1 s doubling to 30 s (kubelet: 10 s to 5 min; a laptop wants it sooner),
    back to 1 s once a process has run `reset_after` s; `crash_loop_restarts` restarts within `crash_loop_window`
    s and the next exit stops the stack, since a loop that fast is a bug to read, not an outage to ride out."""

    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    reset_after: float = 60.0
    crash_loop_restarts: int = 5
    crash_loop_window: float = 120.0


@dataclass
class Backoff:
    """One service's restart state under a RestartPolicy."""

    policy: RestartPolicy
    started_at: float = 0.0
    delay: float = 0.0
    restarts: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.delay = self.policy.initial_backoff

    def on_start(self, now: float) -> None:
        self.started_at = now

    def on_exit(self, now: float) -> float | None:
        """Seconds to wait before the restart, or None: a crash loop, give up."""
        p = self.policy
        if now - self.started_at >= p.reset_after:
            self.delay = p.initial_backoff
        while self.restarts and now - self.restarts[0] > p.crash_loop_window:
            self.restarts.popleft()
        if len(self.restarts) >= p.crash_loop_restarts:
            return None
        self.restarts.append(now)
        delay, self.delay = self.delay, min(self.delay * 2, p.max_backoff)
        return delay


class Supervised(Protocol):
    """What the supervisor needs from a stack of processes (ragline_cli.localstack.Stack)."""

    def exit_code(self, name: str) -> int | None: ...

    def start(self, name: str) -> object: ...

    def tail(self, name: str, lines: int = 30) -> str: ...

    def pids(self) -> dict[str, int]: ...


class CrashLoop(RuntimeError):
    def __init__(self, name: str, restarts: int, window: float, tail: str) -> None:
        super().__init__(
            f"{name} exited {restarts + 1} times within {window:.0f}s: it is crash-looping; "
            f"stopping the stack. Last log lines of {name}:\n{tail}"
        )
        self.name = name


class Supervisor:
    """Watches `names` in `stack`; restarts each one that exits, after its backoff, and says so through `say`."""

    def __init__(
        self,
        stack: Supervised,
        names: tuple[str, ...],
        *,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stack = stack
        self.names = names
        self.policy = policy or RestartPolicy()
        self.say = say
        self.clock = clock
        now = clock()
        self.state = {name: Backoff(self.policy, started_at=now) for name in names}
        self.due: dict[str, float] = {}  # name → when its restart is due
        self.restarted: dict[str, int] = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def poll(self) -> None:
        """One pass: notice exits, schedule restarts, run the ones that are due. Raises CrashLoop."""
        with self._lock:
            now = self.clock()
            for name in self.names:
                if name in self.due:
                    if now >= self.due[name]:
                        del self.due[name]
                        self.stack.start(name)
                        self.state[name].on_start(now)
                        self.restarted[name] += 1
                        pid = self.stack.pids().get(name)
                        self.say(f"{name} restarted (pid {pid}, restart {self.restarted[name]})")
                    continue
                code = self.stack.exit_code(name)
                if code is None:
                    continue
                state = self.state[name]
                ran = now - state.started_at
                delay = state.on_exit(now)
                if delay is None:
                    raise CrashLoop(name, len(state.restarts), self.policy.crash_loop_window, self.stack.tail(name))
                self.due[name] = now + delay
                self.say(f"{name} exited unexpectedly (code {code}) after {ran:.0f}s; restarting in {delay:g}s")

    def down(self) -> list[str]:
        """Services waiting for their restart now."""
        with self._lock:
            return sorted(self.due)

    @contextlib.contextmanager
    def running(self, interval: float = 0.1) -> Iterator[Supervisor]:
        """Poll in a background thread for the block (tests); a crash loop is re-raised when the block ends."""
        stop = threading.Event()
        failure: list[BaseException] = []

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.poll()
                except CrashLoop as exc:
                    failure.append(exc)
                    return

        thread = threading.Thread(target=loop, name="ragline-supervisor", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=30)
        if failure:
            raise failure[0]
