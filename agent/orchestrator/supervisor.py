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
    await supervisor.apply([...])             # reconcile to a new list (a new policy)
    await supervisor.stop()                   # SIGTERM, then SIGKILL after stop_timeout_s

Children run through ``asyncio.create_subprocess_exec`` on the agent's loop
(no threads); their output goes where the agent's goes (the journal). The
agent takes its children from the policy's ``services`` section
(:func:`service_specs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ConfigInvalid
from agent.suggest import close_match

log = logging.getLogger(__name__)

Recorder = Callable[[str, dict[str, Any]], object]

RESTART_POLICIES = ("always", "on-failure", "never")
RUNNING = "running"
BACKOFF = "backoff"
STOPPED = "stopped"
CRASH_LOOP = "crash-loop"
MAX_STOP_TIMEOUT_S = 60.0
"""The longest a child may take to stop: the agent's own stop waits for it, and systemd's
default ``TimeoutStopSec`` (90 s) must not kill the agent first."""
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NUMBER_KEYS = ("backoff_s", "max_backoff_s", "crash_window_s", "stop_timeout_s")
SERVICE_KEYS = ("argv", "restart", *_NUMBER_KEYS, "crash_loop", "groups", "help")
SERVICE_EXAMPLE = ('{"camera": {"argv": ["/usr/bin/streamer", "--port", "8554"], '
                   '"restart": "always"}}')


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
        # The fields may come from a policy (JSON), so types are checked, not assumed.
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigInvalid(f"a service name is 1-64 letters, digits, '.', '_' or '-', "
                                f"got {self.name!r:.70}")
        where = f"service {self.name!r}"
        if isinstance(self.argv, str) or not self.argv or not all(
                isinstance(a, str) and "\0" not in a for a in self.argv):
            raise ConfigInvalid(f"{where}: argv must be a non-empty list of strings (no NUL "
                                f"characters), got {self.argv!r:.60}")
        if self.restart not in RESTART_POLICIES:
            raise ConfigInvalid(f"{where}: restart must be one of {', '.join(RESTART_POLICIES)},"
                                f" got {self.restart!r}")
        for key in _NUMBER_KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigInvalid(f"{where}: {key} must be a number above 0, got {value!r}")
        if self.stop_timeout_s > MAX_STOP_TIMEOUT_S:
            raise ConfigInvalid(f"{where}: stop_timeout_s must be at most "
                                f"{MAX_STOP_TIMEOUT_S:g}, got {self.stop_timeout_s!r}")
        if type(self.crash_loop) is not int or self.crash_loop < 1:
            raise ConfigInvalid(f"{where}: crash_loop must be an integer of at least 1, "
                                f"got {self.crash_loop!r}")
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


@dataclass(slots=True, eq=False)  # a mutable record: compared by identity
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
    stopping: bool = False  # its task was cancelled once: a second cancel would cut
    # its SIGTERM/SIGKILL sequence short


class Supervisor:
    """Starts, restarts and stops the children ``specs`` describe.

    ``clock`` (monotonic seconds) times uptimes and the crash window,
    ``sleep`` waits out a backoff and ``rand`` (0..1) jitters it; tests
    inject them. ``record(kind, body)`` (the agent's ledger) gets one
    ``service`` entry when a child is given up on as a crash loop.
    """

    def __init__(
        self,
        specs: Iterable[ChildSpec] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        record: Recorder | None = None,
    ):
        self._children = {name: _Child(spec) for name, spec in _by_name(specs).items()}
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._record = record
        # start, stop and apply each change the set of children across awaits; one at a
        # time, in call order (the lock is FIFO), so the last policy applied wins.
        self._lock = asyncio.Lock()
        self._running = False

    @property
    def running(self) -> bool:
        """Between start() and stop(): children are kept up (else apply() only records)."""
        return self._running

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
        self._running = True  # now, so an apply() queued behind us starts what it adds
        async with self._lock:
            await self._spawn_idle()

    async def stop(self) -> None:
        """Stop every child at once: SIGTERM, then SIGKILL after its ``stop_timeout_s``."""
        self._running = False
        async with self._lock:
            await self._halt(list(self._children.values()))

    async def apply(self, specs: Iterable[ChildSpec]) -> None:
        """Make ``specs`` the children: start new ones, stop those no longer listed,
        restart those whose spec changed, and leave the rest running with their counters.

        Before start() (or after stop()) it only records the list, for start().
        Raises :class:`ConfigInvalid` (changing nothing) if two specs share a name.
        """
        wanted = _by_name(specs)
        async with self._lock:
            current = self._children
            outdated = [c for name, c in current.items()
                        if wanted.get(name) != c.spec or c.stopping]
            await self._halt(outdated)
            for child in outdated:
                log.info("child %s %s", child.spec.name,
                         "changed: restarting it" if child.spec.name in wanted else "removed")
            self._children = {
                name: current[name] if name in current and current[name] not in outdated
                else _Child(spec) for name, spec in wanted.items()}
            if self._running:
                await self._spawn_idle()

    async def _spawn_idle(self) -> None:
        """Start each child that has never been started (or was stopped by us)."""
        for name, child in self._children.items():
            if child.task is None:
                spawned = asyncio.get_running_loop().create_future()
                child.task = asyncio.create_task(self._supervise(child, spawned),
                                                 name=f"igris.supervisor[{name}]")
                # The task sets ``spawned`` once the process exists (or could not be made);
                # waiting on the task too means a task that never ran cannot hang us.
                await asyncio.wait((spawned, child.task), return_when=asyncio.FIRST_COMPLETED)

    async def _halt(self, children: Sequence[_Child]) -> None:
        """Stop ``children`` together; each can be started again afterwards."""
        for child in children:
            if child.task is not None and not child.stopping:
                child.stopping = True
                child.task.cancel()
        tasks = [c.task for c in children if c.task is not None]
        if tasks:
            # asyncio.wait, not gather: if *we* are cancelled (the agent stopping during an
            # apply), the children still finish terminating, and stop() waits for them.
            await asyncio.wait(tasks)
        for child in children:
            child.task, child.stopping = None, False

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
                    self._give_up(child, code)
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

    def _give_up(self, child: _Child, code: int | None) -> None:
        spec = child.spec
        child.state = CRASH_LOOP
        log.error("child %s exited %d times within %g s (last exit %s): crash loop, not "
                  "restarted", spec.name, len(child.exits), spec.crash_window_s, code)
        if self._record is not None:
            self._record("service", {"name": spec.name, "state": CRASH_LOOP,
                                     "exits": len(child.exits),
                                     "window_s": spec.crash_window_s, "last_exit": code})

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


def _by_name(specs: Iterable[ChildSpec]) -> dict[str, ChildSpec]:
    by_name: dict[str, ChildSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise ConfigInvalid(f"two supervised children are named {spec.name!r}; "
                                "give each its own name")
        by_name[spec.name] = spec
    return by_name


def service_specs(section: Mapping[str, Any], groups: Iterable[str] | None = None
                  ) -> list[ChildSpec]:
    """The children a policy's ``services`` section asks of a device in ``groups``.

    A service with ``groups`` runs only on devices in at least one of them;
    ``groups=None`` keeps every service (the policy schema checks them all
    this way). Raises :class:`ConfigInvalid` naming the service and key::

        service_specs({"cam": {"argv": ["streamer"], "groups": ["kitchen"]}}, ["kitchen"])
    """
    mine = None if groups is None else set(groups)
    specs = []
    for name, entry in section.items():
        if not isinstance(entry, Mapping) or "argv" not in entry:
            raise ConfigInvalid(f"service {name!r}: expected an object with at least argv, like "
                                f"{SERVICE_EXAMPLE}, got {entry!r:.60}")
        for key in entry:
            if key not in SERVICE_KEYS:
                close = close_match(key, SERVICE_KEYS)
                hint = f"did you mean {close!r}?" if close else "known: " + ", ".join(
                    SERVICE_KEYS)
                raise ConfigInvalid(f"service {name!r}: unknown key {key!r}; {hint}")
        wanted = entry.get("groups", [])
        if not (isinstance(wanted, list) and all(isinstance(g, str) and g for g in wanted)):
            raise ConfigInvalid(f"service {name!r}: groups must be a list of group names, "
                                f"got {wanted!r:.60}")
        if not isinstance(entry.get("help", ""), str):
            raise ConfigInvalid(f"service {name!r}: help must be a string, "
                                f"got {entry['help']!r:.60}")
        spec = ChildSpec(name, **{k: v for k, v in entry.items() if k not in ("groups", "help")})
        if mine is None or not wanted or mine & set(wanted):
            specs.append(spec)
    return specs
