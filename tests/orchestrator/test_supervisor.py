"""The supervisor keeps real child processes up as their restart policy says."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from agent.errors import ConfigInvalid, PolicyRejected
from agent.mesh.policy_schema import validate_policy
from agent.orchestrator.supervisor import ChildSpec, Supervisor, service_specs

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

# Writes its pid to the file named by argv[1]; exits 3 on its first run if argv[2] is
# "fail-once" (so it has a restart behind it), then sleeps.
PID_CHILD = """
import os, sys, time
path = sys.argv[1]
first = not os.path.exists(path)
with open(path, "w") as f:
    f.write(str(os.getpid()))
if first and sys.argv[2] == "fail-once":
    sys.exit(3)
time.sleep(30)
"""


def counting(name: str, runs: Path, code: str, **kw) -> ChildSpec:
    return ChildSpec(name, (sys.executable, "-c", COUNTING_CHILD, str(runs), code), **kw)


def sleeper(name: str, pid_file: Path, mode: str = "sleep", **kw) -> ChildSpec:
    return ChildSpec(name, (sys.executable, "-c", PID_CHILD, str(pid_file), mode), **kw)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


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
    ({"argv": "python"}, "argv must be a non-empty list of strings .no NUL characters., "
                         "got 'python'"),
    ({"argv": ()}, "argv must be a non-empty list of strings"),
    ({"argv": ("sleep", "1\0")}, "argv must be a non-empty list of strings"),
    ({"backoff_s": 0}, "backoff_s must be a number above 0, got 0"),
    ({"crash_window_s": "60"}, "crash_window_s must be a number above 0, got '60'"),
    ({"stop_timeout_s": True}, "stop_timeout_s must be a number above 0, got True"),
    ({"stop_timeout_s": 61}, "stop_timeout_s must be at most 60, got 61"),
    ({"crash_loop": 0}, "crash_loop must be an integer of at least 1, got 0"),
    ({"crash_loop": 2.5}, "crash_loop must be an integer of at least 1, got 2.5"),
])
def test_a_bad_child_spec_is_refused_naming_the_value(kwargs, message) -> None:
    fields = {"name": "cam", "argv": ("true",), **kwargs}
    with pytest.raises(ConfigInvalid, match=f"service 'cam': {message}"):
        ChildSpec(**fields)


@pytest.mark.parametrize("name", ["", "a b", "cam/1", "x" * 65])
def test_a_child_name_must_be_a_plain_name(name) -> None:
    with pytest.raises(ConfigInvalid, match="a service name is 1-64 letters, digits"):
        ChildSpec(name, ("true",))


def test_two_children_may_not_share_a_name() -> None:
    with pytest.raises(ConfigInvalid, match="two supervised children are named 'cam'"):
        Supervisor([ChildSpec("cam", ("true",)), ChildSpec("cam", ("false",))])


def running_pids(supervisor: Supervisor) -> dict[str, int | None]:
    return {name: s.pid for name, s in supervisor.status().items()}


async def test_apply_starts_new_stops_removed_restarts_changed_and_keeps_the_rest(
        tmp_path, async_cleanup) -> None:
    kept_file = tmp_path / "kept"
    kept = sleeper("kept", kept_file, "fail-once", backoff_s=0.01)
    supervisor = Supervisor([kept, sleeper("changed", tmp_path / "changed"),
                             sleeper("removed", tmp_path / "removed")])
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: supervisor.status()["kept"].restarts == 1
                and all(pid is not None for pid in running_pids(supervisor).values()))
    before = running_pids(supervisor)

    await supervisor.apply([
        sleeper("kept", kept_file, "fail-once", backoff_s=0.01),  # equal spec, new object
        sleeper("changed", tmp_path / "changed", stop_timeout_s=2),
        sleeper("added", tmp_path / "added"),
    ])
    after = supervisor.status()
    assert list(after) == ["kept", "changed", "added"]
    assert (after["kept"].pid, after["kept"].restarts) == (before["kept"], 1)
    assert after["changed"].pid not in (None, before["changed"])
    assert after["changed"].restarts == 0
    assert after["added"].state == "running" and after["added"].pid is not None
    assert gone(before["changed"]) and gone(before["removed"])
    assert not gone(before["kept"])


async def test_apply_before_start_only_records_and_after_stop_starts_nothing(
        tmp_path, async_cleanup) -> None:
    early, late = tmp_path / "early", tmp_path / "late"
    supervisor = Supervisor()
    await supervisor.apply([counting("early", early, "0")])
    assert not supervisor.running
    assert supervisor.status()["early"].state == "stopped" and runs_of(early) == 0

    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: runs_of(early) == 1)
    await supervisor.stop()
    await supervisor.apply([counting("late", late, "0")])
    await asyncio.sleep(0.1)
    assert list(supervisor.status()) == ["late"] and runs_of(late) == 0


async def test_successive_applies_run_in_call_order_so_the_last_wins(
        tmp_path, async_cleanup) -> None:
    supervisor = Supervisor([sleeper("a", tmp_path / "a")])
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    first = supervisor.status()["a"].pid
    assert first is not None
    await asyncio.gather(supervisor.apply([sleeper("b", tmp_path / "b")]),
                         supervisor.apply([sleeper("c", tmp_path / "c")]))
    status = supervisor.status()
    assert list(status) == ["c"] and status["c"].state == "running"
    assert gone(first) and not gone(status["c"].pid)


async def test_a_refused_apply_changes_nothing(tmp_path, async_cleanup) -> None:
    supervisor = Supervisor([sleeper("cam", tmp_path / "cam")])
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    pid = supervisor.status()["cam"].pid
    with pytest.raises(ConfigInvalid, match="two supervised children are named 'x'"):
        await supervisor.apply([sleeper("x", tmp_path / "x"), sleeper("x", tmp_path / "y")])
    assert running_pids(supervisor) == {"cam": pid}


async def test_stop_finishes_killing_a_child_an_interrupted_apply_was_stopping(
        tmp_path) -> None:
    ready = tmp_path / "ready"
    supervisor = Supervisor([ChildSpec("stubborn", (sys.executable, "-c", STUBBORN_CHILD,
                                                    str(ready)), stop_timeout_s=0.3)])
    await supervisor.start()
    await until(ready.exists)
    pid = supervisor.status()["stubborn"].pid
    assert pid is not None
    applying = asyncio.create_task(supervisor.apply([]))
    await asyncio.sleep(0.05)  # it has sent SIGTERM and waits out stop_timeout_s
    applying.cancel()
    await asyncio.gather(applying, return_exceptions=True)
    await supervisor.stop()
    assert gone(pid)
    assert supervisor.status()["stubborn"].last_exit == -signal.SIGKILL


async def test_a_crash_loop_is_recorded_once(tmp_path, async_cleanup) -> None:
    entries: list[tuple[str, dict]] = []
    supervisor = Supervisor([counting("crashy", tmp_path / "runs", "3", backoff_s=0.01,
                                      crash_loop=2)],
                            record=lambda kind, body: entries.append((kind, body)))
    await supervisor.start()
    async_cleanup.push(supervisor.stop)
    await until(lambda: supervisor.status()["crashy"].state == "crash-loop")
    assert entries == [("service", {"name": "crashy", "state": "crash-loop", "exits": 2,
                                    "window_s": 60.0, "last_exit": 3})]


SECTION = {
    "everywhere": {"argv": ["streamer", "--port", "8554"], "restart": "always",
                   "backoff_s": 0.5, "max_backoff_s": 30, "crash_loop": 3,
                   "crash_window_s": 120, "stop_timeout_s": 2, "help": "camera stream"},
    "kitchen": {"argv": ["thermo"], "groups": ["kitchen", "hall"]},
    "garage": {"argv": ["door"], "groups": ["garage"]},
}


def test_service_specs_keep_the_services_for_the_devices_groups() -> None:
    assert [s.name for s in service_specs(SECTION, ("hall", "lab"))] == ["everywhere",
                                                                         "kitchen"]
    assert [s.name for s in service_specs(SECTION, ())] == ["everywhere"]
    assert [s.name for s in service_specs(SECTION)] == ["everywhere", "kitchen", "garage"]


def test_service_specs_carry_every_setting_and_default_the_rest() -> None:
    everywhere, kitchen = service_specs(SECTION, ("kitchen",))
    assert everywhere == ChildSpec("everywhere", ("streamer", "--port", "8554"),
                                   restart="always", backoff_s=0.5, max_backoff_s=30,
                                   crash_loop=3, crash_window_s=120, stop_timeout_s=2)
    assert kitchen == ChildSpec("kitchen", ("thermo",))
    assert kitchen.restart == "on-failure"


@pytest.mark.parametrize(("entry", "message"), [
    ({"argv": ["x"], "restrat": "always"}, "service 'cam': unknown key 'restrat'; did you "
                                           "mean 'restart'?"),
    ({"argv": ["x"], "colour": 1}, "service 'cam': unknown key 'colour'; known: argv, "),
    ({"argv": ["x"], "groups": "kitchen"}, "service 'cam': groups must be a list of group "
                                           "names, got 'kitchen'"),
    ({"argv": ["x"], "help": 3}, "service 'cam': help must be a string, got 3"),
    ({"restart": "always"}, "service 'cam': expected an object with at least argv"),
    (["x"], "service 'cam': expected an object with at least argv, like "),
    ({"argv": ["x"], "restart": "sometimes"}, "service 'cam': restart must be one of"),
])
def test_service_specs_refuse_a_bad_entry_naming_it(entry, message) -> None:
    with pytest.raises(ConfigInvalid, match=re.escape(message)):
        service_specs({"cam": entry})


def test_the_policy_schema_checks_every_service_whatever_its_groups() -> None:
    assert validate_policy({"version": 2, "services": SECTION})["services"] == SECTION
    bad = {**SECTION, "garage": {"argv": ["door"], "groups": ["garage"], "crash_loop": 0}}
    with pytest.raises(PolicyRejected, match=re.escape(
            "services: service 'garage': crash_loop must be an integer of at least 1, got 0")):
        validate_policy({"version": 2, "services": bad})
    with pytest.raises(PolicyRejected, match=re.escape(
            'services: expected an object like {"camera": {"argv": ')):
        validate_policy({"version": 2, "services": [["streamer"]]})
