"""Long-running child processes kept up with restart policies, backoff and a crash-loop limit.

A camera streamer or a sensor daemon runs next to the agent; the supervisor
starts each one, restarts it as its ``restart`` policy says (``always``,
``on-failure``, ``never``), waits a growing, jittered delay between starts
so a child that fails at once does not spin, and gives up on a child that
exited ``crash_loop`` times within ``crash_window_s`` (state ``crash-loop``,
logged as an error) until an operator looks::

    supervisor = Supervisor([ChildSpec("streamer", ("/usr/bin/streamer", "--port", "8554"))])
    await supervisor.start()
    supervisor.status()["streamer"].state     # "running"
    await supervisor.stop()                   # SIGTERM, then SIGKILL after stop_timeout_s

Children run through ``asyncio.create_subprocess_exec`` on the agent's loop
(no threads); their output goes where the agent's goes (the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ConfigInvalid

log = logging.getLogger(__name__)

RESTART_POLICIES = ("always", "on-failure", "never")
RUNNING = "running"
BACKOFF = "backoff"
STOPPED = "stopped"
CRASH_LOOP = "crash-loop"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child: what to run and how to keep it running.

    ``env`` is the child's whole environment (None: the agent's own). The
    delay before restart *n* (from 0) is ``rand() * min(max_backoff_s,
    backoff_s * 2**n)`` ("full jitter"); *n* starts again at 0 once the child
    has stayed up ``crash_window_s``.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    restart: str = "on-failure"
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    crash_loop: int = 5
    crash_window_s: float = 60.0
    stop_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        where = f"child {self.name!r}"
        if not self.name:
            raise ConfigInvalid("a supervised child needs a name")
        if isinstance(self.argv, str) or not self.argv or not all(
                isinstance(a, str) for a in self.argv):
            raise ConfigInvalid(f"{where}: argv must be a non-empty list of strings, "
                                f"got {self.argv!r:.60}")
        if self.restart not in RESTART_POLICIES:
            raise ConfigInvalid(f"{where}: restart must be one of {', '.join(RESTART_POLICIES)},"
                                f" got {self.restart!r}")
        for key in ("backoff_s", "max_backoff_s", "crash_window_s", "stop_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigInvalid(f"{where}: {key} must be above 0, got {getattr(self, key)!r}")
        if self.crash_loop < 1:
            raise ConfigInvalid(f"{where}: crash_loop must be at least 1, got {self.crash_loop!r}")
        object.__setattr__(self, "argv", tuple(self.argv))  # frozen means frozen: no list

    def restarts_after(self, exit_code: int | None) -> bool:
        """Whether this exit (None: it could not be started) calls for another start."""
        if self.restart == "always":
            return True
        return self.restart == "on-failure" and exit_code != 0


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """One child as ``igris status`` shows it; ``next_start`` is on the supervisor's clock."""

    name: str
    state: str
    pid: int | None
    restarts: int
    last_exit: int | None
    next_start: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "pid": self.pid,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "next_start": self.next_start}


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    state: str = STOPPED
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    last_exit: int | None = None
    next_start: float | None = None
    attempt: int = 0  # the exponent of the next backoff
    exits: deque[float] = field(default_factory=deque)  # clock times of recent exits
    task: asyncio.Task[None] | None = None


class Supervisor:
    """Starts, restarts and stops the children ``specs`` describe.

    ``clock`` (monotonic seconds) times uptimes and the crash window,
    ``sleep`` waits out a backoff and ``rand`` (0..1) jitters it; tests
    inject them.
    """

    def __init__(
        self,
        specs: Iterable[ChildSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ):
        self._children: dict[str, _Child] = {}
        for spec in specs:
            if spec.name in self._children:
                raise ConfigInvalid(f"two supervised children are named {spec.name!r}; "
                                    "give each its own name")
            self._children[spec.name] = _Child(spec)
        self._clock = clock
        self._sleep = sleep
        self._rand = rand

    def status(self) -> dict[str, ChildStatus]:
        """Each child's state, pid, restart count, last exit code and next start."""
        return {name: ChildStatus(name, c.state, self._pid(c), c.restarts, c.last_exit,
                                  c.next_start)
                for name, c in self._children.items()}

    @staticmethod
    def _pid(child: _Child) -> int | None:
        return child.proc.pid if child.proc is not None and child.state == RUNNING else None

    async def start(self) -> None:
        """Start every child; returns once each has been spawned (or failed to be)."""
        for name, child in self._children.items():
            if child.task is None:
                spawned = asyncio.get_running_loop().create_future()
                child.task = asyncio.create_task(self._supervise(child, spawned),
                                                 name=f"igris.supervisor[{name}]")
                await spawned

    async def stop(self) -> None:
        """Stop every child at once: SIGTERM, then SIGKILL after its ``stop_timeout_s``."""
        tasks = [c.task for c in self._children.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for child in self._children.values():
            child.task = None

    async def _supervise(self, child: _Child, spawned: asyncio.Future[None]) -> None:
        spec = child.spec
        try:
            while True:
                started = self._clock()
                code = await self._run_once(child, spawned)
                now = self._clock()
                if not spec.restarts_after(code):
                    child.state = STOPPED
                    log.info("child %s exited with %s; restart=%s: not restarted",
                             spec.name, code, spec.restart)
                    return
                delay = self._backoff(child, started, now)
                if delay is None:
                    child.state = CRASH_LOOP
                    log.error("child %s exited %d times within %g s (last exit %s): "
                              "crash loop, not restarted", spec.name, len(child.exits),
                              spec.crash_window_s, code)
                    return
                child.state, child.next_start = BACKOFF, now + delay
                log.warning("child %s exited with %s; restart in %.2f s",
                            spec.name, code, delay)
                await self._sleep(delay)
                child.next_start = None
                child.restarts += 1
        except asyncio.CancelledError:
            await self._terminate(child)
            child.state, child.next_start = STOPPED, None
            raise

    async def _run_once(self, child: _Child, spawned: asyncio.Future[None]) -> int | None:
        """Run the child until it exits; its exit code, or None if it could not start."""
        spec = child.spec
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *spec.argv, env=None if spec.env is None else dict(spec.env), cwd=spec.cwd,
                stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            log.error("child %s could not be started (%s): %s", spec.name, spec.argv[0], exc)
            child.last_exit = None
            return None
        finally:
            if not spawned.done():
                spawned.set_result(None)
        child.state = RUNNING
        code = await child.proc.wait()
        child.last_exit = code
        return code

    def _backoff(self, child: _Child, started: float, now: float) -> float | None:
        """The delay before the next start, or None if the child is in a crash loop."""
        spec = child.spec
        if now - started >= spec.crash_window_s:
            child.attempt = 0  # it stayed up: a new failure starts the backoff afresh
        child.exits.append(now)
        while child.exits and child.exits[0] <= now - spec.crash_window_s:
            child.exits.popleft()
        if len(child.exits) >= spec.crash_loop:
            return None
        ceiling = min(spec.max_backoff_s, spec.backoff_s * 2 ** child.attempt)
        child.attempt += 1
        return self._rand() * ceiling

    async def _terminate(self, child: _Child) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), child.spec.stop_timeout_s)
        except asyncio.TimeoutError:
            log.warning("child %s ignored SIGTERM for %g s: killing it",
                        child.spec.name, child.spec.stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        child.last_exit = proc.returncode
