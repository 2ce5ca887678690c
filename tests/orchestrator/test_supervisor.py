"""The supervisor keeps real child processes up as their restart policy says."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from agent.errors import ConfigInvalid
from agent.orchestrator.supervisor import ChildSpec, Supervisor

# Each run appends a line to the file named by argv[1]; the exit code is argv[2],
# or 0 from the second run on when argv[2] is "fail-once".
COUNTING_CHILD = """
import sys
path, code = sys.argv[1], sys.argv[2]
with open(path, "a") as f:
    f.write("run\\n")
runs = len(open(path).read().splitlines())
sys.exit((3 if runs == 1 else 0) if code == "fail-once" else int(code))
"""
# Ignores SIGTERM, then says so by creating the file named by argv[1].
STUBBORN_CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").close()
time.sleep(30)
"""


def counting(name: str, runs: Path, code: str, **kw) -> ChildSpec:
    return ChildSpec(name, (sys.executable, "-c", COUNTING_CHILD, str(runs), code), **kw)


def runs_of(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def until(condition, timeout: float = 2.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class RecordedSleep:
    """asyncio.sleep that remembers each backoff and what status() said during it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.supervisor: Supervisor | None = None
        self.waits: list[float | None] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.supervisor is not None:
            status = next(iter(self.supervisor.status().values()))
            assert status.state == "backoff"
            self.waits.append(None if status.next_start is None
                              else status.next_start - time.monotonic())
        await asyncio.sleep(delay)


async def test_on_failure_restarts_a_failing_child_and_not_a_clean_exit(
        tmp_path, async_cleanup) -> None:
    flaky, clean = tmp_path / "flaky", tmp_path / "clean"
    supervisor = Supervisor([counting("flaky", flaky, "fail-once", backoff_s=0.01),
                             counting("clean", clean, "0", backoff_s=0.01)])
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: all(s.state == "stopped" and s.last_exit is not None
                            for s in supervisor.status().values()))
    status = supervisor.status()
    assert (runs_of(flaky), status["flaky"].restarts, status["flaky"].last_exit) == (2, 1, 0)
    assert (runs_of(clean), status["clean"].restarts, status["clean"].last_exit) == (1, 0, 0)
    assert status["clean"].pid is None


async def test_always_restarts_a_clean_exit(tmp_path, async_cleanup) -> None:
    runs = tmp_path / "runs"
    supervisor = Supervisor([counting("tick", runs, "0", restart="always", backoff_s=0.01,
                                      crash_loop=100)])
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: runs_of(runs) >= 3)
    status = supervisor.status()["tick"]
    assert status.restarts >= 2
    assert status.last_exit == 0
    assert status.state in ("running", "backoff")


async def test_never_leaves_a_failed_child_down(tmp_path, async_cleanup) -> None:
    runs = tmp_path / "runs"
    supervisor = Supervisor([counting("once", runs, "4", restart="never")])
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: supervisor.status()["once"].last_exit == 4)
    await asyncio.sleep(0.05)
    assert supervisor.status()["once"].state == "stopped"
    assert (runs_of(runs), supervisor.status()["once"].restarts) == (1, 0)


async def test_a_crash_looping_child_backs_off_and_stops_at_its_limit(
        tmp_path, async_cleanup, caplog) -> None:
    runs = tmp_path / "runs"
    sleep = RecordedSleep()
    supervisor = Supervisor([counting("crashy", runs, "3", backoff_s=0.05, max_backoff_s=0.15,
                                      crash_loop=5)], sleep=sleep, rand=lambda: 1.0)
    sleep.supervisor = supervisor
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: supervisor.status()["crashy"].state == "crash-loop")

    assert sleep.delays == pytest.approx([0.05, 0.1, 0.15, 0.15])  # doubled, then capped
    assert all(w is not None and 0 < w <= d for w, d in zip(sleep.waits, sleep.delays,
                                                            strict=True))
    status = supervisor.status()["crashy"]
    assert (status.restarts, status.last_exit, status.pid, status.next_start) == (4, 3, None,
                                                                                  None)
    assert runs_of(runs) == 5
    await asyncio.sleep(0.2)
    assert runs_of(runs) == 5  # given up on: no sixth start
    assert "crashy exited 5 times within 60 s" in caplog.text


async def test_full_jitter_scales_each_delay_by_rand(tmp_path, async_cleanup) -> None:
    sleep = RecordedSleep()
    draws = iter([0.5, 0.25, 0.0])
    supervisor = Supervisor([counting("c", tmp_path / "runs", "1", backoff_s=0.2,
                                      crash_loop=4)], sleep=sleep, rand=lambda: next(draws))
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: supervisor.status()["c"].state == "crash-loop")
    assert sleep.delays == pytest.approx([0.5 * 0.2, 0.25 * 0.4, 0.0])


async def test_backoff_starts_afresh_once_the_child_stayed_up(tmp_path, async_cleanup) -> None:
    class Hours:
        """A clock where every reading is an hour after the last: each run looks long."""

        def __init__(self) -> None:
            self.t = 0.0

        def __call__(self) -> float:
            self.t += 3600.0
            return self.t

    runs = tmp_path / "runs"
    sleep = RecordedSleep()
    supervisor = Supervisor([counting("daemon", runs, "2", backoff_s=0.02, crash_loop=2)],
                            clock=Hours(), sleep=sleep, rand=lambda: 1.0)
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: len(sleep.delays) >= 4)
    assert sleep.delays[:4] == pytest.approx([0.02] * 4)
    assert supervisor.status()["daemon"].state != "crash-loop"


async def test_stop_kills_a_child_that_ignores_sigterm(tmp_path) -> None:
    ready = tmp_path / "ready"
    supervisor = Supervisor([ChildSpec("stubborn", (sys.executable, "-c", STUBBORN_CHILD,
                                                    str(ready)), stop_timeout_s=0.3)])
    await supervisor.start()
    await until(ready.exists)
    pid = supervisor.status()["stubborn"].pid
    assert pid is not None

    began = time.monotonic()
    await supervisor.stop()
    took = time.monotonic() - began
    assert 0.3 <= took < 2.0
    status = supervisor.status()["stubborn"]
    assert (status.state, status.last_exit, status.pid) == ("stopped", -signal.SIGKILL, None)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_stop_ends_a_well_behaved_child_with_sigterm(tmp_path) -> None:
    supervisor = Supervisor([ChildSpec("calm", (sys.executable, "-c",
                                                "import time; time.sleep(30)"))])
    await supervisor.start()
    assert supervisor.status()["calm"].state == "running"
    began = time.monotonic()
    await supervisor.stop()
    assert time.monotonic() - began < 1.0
    assert supervisor.status()["calm"].last_exit == -signal.SIGTERM


async def test_a_child_that_cannot_start_counts_as_a_failure(tmp_path, async_cleanup,
                                                             caplog) -> None:
    supervisor = Supervisor([ChildSpec("ghost", (str(tmp_path / "no-such-program"),),
                                       backoff_s=0.01, crash_loop=2)])
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: supervisor.status()["ghost"].state == "crash-loop")
    status = supervisor.status()["ghost"]
    assert (status.restarts, status.last_exit) == (1, None)
    assert "child ghost could not be started" in caplog.text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"restart": "sometimes"}, "restart must be one of always, on-failure, never, got "
                               "'sometimes'"),
    ({"argv": "python"}, "argv must be a non-empty list of strings, got 'python'"),
    ({"argv": ()}, "argv must be a non-empty list of strings"),
    ({"backoff_s": 0}, "backoff_s must be above 0, got 0"),
    ({"crash_loop": 0}, "crash_loop must be at least 1, got 0"),
])
def test_a_bad_child_spec_is_refused_naming_the_value(kwargs, message) -> None:
    fields = {"name": "cam", "argv": ("true",), **kwargs}
    with pytest.raises(ConfigInvalid, match=f"child 'cam': {message}"):
        ChildSpec(**fields)


def test_two_children_may_not_share_a_name() -> None:
    with pytest.raises(ConfigInvalid, match="two supervised children are named 'cam'"):
        Supervisor([ChildSpec("cam", ("true",)), ChildSpec("cam", ("false",))])
