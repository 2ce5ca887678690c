"""The orchestrator across real agent processes on Mosquitto: a scheduler-role agent places
tasks on two devices by their groups and health (from fake sysfs trees), a task survives
the death of the device running it, and the queue survives a kill -9 of the scheduler
with nothing lost or run twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.control import SOCKET_NAME, call
from agent.identity import enroll
from tests.support.fleet import Fleet, now_ms, run_cli

REPO = Path(__file__).resolve().parents[2]
ANY_CPU = {"max_cpu_percent": 100}  # the test machine's CPU load is not what these test


def sysfs_tree(base: Path, name: str, celsius: int) -> Path:
    """A sysfs root whose one thermal zone (the rpi4 profile's) reads ``celsius``."""
    root = base / f"sys-{name}"
    zone = root / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{celsius * 1000}\n")
    return root


@pytest.fixture
def make_fleet(broker):
    """``make_fleet({name: celsius})``: devices n1 and n2 (group east) and ``sched`` (the
    scheduler role, no group), each board at its temperature; all alive to ``sched``."""
    fleets = []

    def make(celsius: dict[str, int]) -> Fleet:
        fleet = Fleet(broker, {"n1": ("east",), "n2": ("east",)}, args=("--target", "rpi4"))
        fleets.append(fleet)
        enroll(fleet.base / "sched", fleet.ca, "sched", now_ms=now_ms(), role="scheduler")
        for name, degrees in celsius.items():
            fleet.env[name] = {"IGRIS_HEALTH_SYSFS_ROOT": str(sysfs_tree(fleet.base, name,
                                                                         degrees))}
        fleet.start_all()
        fleet.agents["sched"].wait_peers({"n1": "alive", "n2": "alive"})
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()


def ask(fleet: Fleet, method: str, params: dict) -> dict:
    return call(fleet.base / "sched" / SOCKET_NAME, method, params)


def submit(fleet: Fleet, **task) -> str:
    (task_id,) = ask(fleet, "task.submit", {"task": task})["ids"]
    return task_id


def wait_task(fleet: Fleet, task_id: str, *, until=("done", "dead", "cancelled"),
              timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        task = ask(fleet, "task.show", {"id": task_id})
        if task["state"] in until:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task['state']}: {task}")
        time.sleep(0.1)


def push_nap_policy(fleet: Fleet, tmp_path: Path, seconds: float) -> None:
    """A policy with the action ``nap`` (sleep), for tasks that take a while."""
    doc = json.loads((REPO / "ai_assistant_config" / "policy.json").read_text())
    doc.update(version=2, actions={"nap": {"argv": ["sleep", str(seconds)], "timeout_s": 20}})
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    done = run_cli("policy", "push", str(path), "--root", str(fleet.operator()),
                   "--broker", fleet.broker.url)
    assert done.returncode == 0, done.stderr
    for agent in fleet.agents.values():
        agent.wait_for(lambda s: s["policy_version"] == 2, what="policy 2")


def test_placement_follows_groups_and_the_heat_threshold(make_fleet):
    fleet = make_fleet({"n1": 85, "n2": 45, "sched": 45})
    task = wait_task(fleet, submit(fleet, id="ping", kind="command",
                                   args={"command": "ping"},
                                   constraints={"groups": ["east"], **ANY_CPU}))
    assert task["state"] == "done" and task["result"]["device"] == "n2"
    reasons = task["placement"]["reasons"]
    assert task["placement"]["device"] == "n2"
    assert "n1: temperature 85 C > 75 C" in reasons and "sched: not in group 'east'" in reasons

    # Pinned to the hot board: refused there, with the reason, until no retry is left.
    hot = wait_task(fleet, submit(fleet, id="hot", kind="command", args={"command": "ping"},
                                  constraints={"device": "n1", **ANY_CPU}, retries=0))
    assert hot["state"] == "dead" and "n1: temperature 85 C > 75 C" in hot["error"]
    # The task's own threshold overrides the policy's.
    warm = wait_task(fleet, submit(fleet, id="warm", kind="command", args={"command": "ping"},
                                   constraints={"device": "n1", "max_celsius": 90,
                                                **ANY_CPU}))
    assert warm["state"] == "done" and warm["result"]["device"] == "n1"


def test_a_task_on_a_device_killed_mid_run_finishes_on_another(make_fleet, tmp_path):
    fleet = make_fleet({"n1": 45, "n2": 45, "sched": 45})
    push_nap_policy(fleet, tmp_path, 3)
    task_id = submit(fleet, id="nap", kind="action", args={"name": "nap"},
                     constraints={"groups": ["east"], **ANY_CPU}, timeout_s=15)
    running = wait_task(fleet, task_id, until=("leased",))
    first = running["placement"]["device"]
    fleet.agents[first].kill()
    task = wait_task(fleet, task_id)
    other = ({"n1", "n2"} - {first}).pop()
    assert task["state"] == "done" and task["placement"]["device"] == other
    assert task["attempts"] == 2 and task["result"]["action"] == "nap"
    assert fleet.agents["sched"].status()["orchestrator"]["lost"] == 1


def test_the_queue_survives_a_kill_9_of_the_scheduler_and_runs_nothing_twice(make_fleet,
                                                                            tmp_path):
    fleet = make_fleet({"n1": 45, "n2": 45, "sched": 45})
    push_nap_policy(fleet, tmp_path, 2)
    on_n2 = {"device": "n2", **ANY_CPU}
    plan = {"goal": "nap, then two samples", "tasks": [
        {"id": "nap", "kind": "action", "args": {"name": "nap"}, "constraints": on_n2},
        {"id": "a", "kind": "sample", "args": {"pool": "env", "prefix": "a/"},
         "constraints": on_n2, "after": ["nap"]},
        {"id": "b", "kind": "sample", "args": {"pool": "env", "prefix": "b/"},
         "constraints": on_n2, "after": ["a"]}]}
    ids = ask(fleet, "task.submit", {"plan": plan})["ids"]
    wait_task(fleet, ids[0], until=("leased",))
    fleet.agents["sched"].kill()  # while n2 runs the nap for it
    fleet.start("sched").wait_ready()
    tasks = [wait_task(fleet, task_id) for task_id in ids]
    assert [t["state"] for t in tasks] == ["done", "done", "done"]
    assert [t["attempts"] for t in tasks] == [1, 1, 1]
    restarted = fleet.agents["sched"].status()["orchestrator"]
    assert restarted["reclaimed"] == 1
    served = fleet.agents["n2"].status()["orchestrator"]
    assert served["served"] == 3 and served["repeats"] == 1  # the nap ran once
    for prefix in ("a/", "b/"):
        done = run_cli("mem", "get", "env", f"{prefix}n2", "--json",
                       "--root", str(fleet.base / "n2"))
        assert done.returncode == 0 and json.loads(done.stdout)["version"] == 1
