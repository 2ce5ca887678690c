"""``igris task`` and ``igris plan`` against one real ``igris run`` (no broker: it runs alone).

The agent is a plain device, so its scheduler places every task on itself;
a task whose constraints name another device can never be placed and keeps
retrying, which is what the cancel test needs.
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import time

import pytest

from agent.cli import main
from agent.cli.plan_cmd import goal_line
from agent.orchestrator.models import TaskState
from tests.support.agent_process import AgentProcess, short_root

WAIT_S = 15.0


@pytest.fixture(scope="module")
def agent():
    process = AgentProcess(short_root("igtask") / "agent", "--target", "rpi4").start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()
        shutil.rmtree(process.root.parent, ignore_errors=True)


@pytest.fixture
def igris(agent, capsys):
    """Run ``igris ARGS... --root <agent>`` in this process: (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--root", str(agent.root)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def json_of(igris, *argv: str):
    code, out, err = igris(*argv, "--json")
    assert code == 0, err
    return json.loads(out)


def me(agent) -> str:
    return agent.status()["device_id"]


def wait_final(igris, task_id: str) -> dict:
    """``task show --json`` once the task is done, dead or cancelled."""
    deadline = time.monotonic() + WAIT_S
    while True:
        task = json_of(igris, "task", "show", task_id)
        if task["state"] in TaskState.FINAL:
            return task
        assert time.monotonic() < deadline, f"{task_id} still {task['state']}: {task}"
        time.sleep(0.05)


def queued(igris) -> int:
    return sum(json_of(igris, "task", "ls")["counts"].values())


def test_a_command_task_runs_and_shows_its_result(agent, igris):
    code, out, err = igris("task", "submit", "command", "command=ping", "--id", "ping-1",
                           "--priority", "7")
    assert code == 0, err
    [task_id] = out.split()
    assert task_id.endswith("/ping-1")

    task = wait_final(igris, task_id)
    assert task["state"] == "done", task
    assert task["result"]["pong"] is True
    assert task["placement"]["device"] == me(agent)
    assert task["spec"]["priority"] == 7 and task["spec"]["args"] == {"command": "ping"}
    assert "would_place" not in task  # it ran; where it went is in placement

    code, out, _ = igris("task", "ls")
    row = next(line.split() for line in out.splitlines() if line.startswith(task_id + " "))
    assert row[:5] == [task_id, "command", "done", "1", me(agent)]
    assert "done " in out.splitlines()[-1]  # the counts line

    code, out, _ = igris("task", "show", task_id)
    assert code == 0 and '"pong": true' in out and "attempts   1 of 3" in out


def test_a_plan_from_a_file_runs_its_tasks_in_dependency_order(agent, igris, tmp_path):
    plan = {"goal": "ping then check", "tasks": [
        {"id": "check", "kind": "command", "args": {"command": "health"}, "after": ["ping"]},
        {"id": "ping", "kind": "command", "args": {"command": "ping"}}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))

    ids = json_of(igris, "task", "submit", "--file", str(path))["ids"]
    assert [i.split("/")[1] for i in ids] == ["check", "ping"]
    check, ping = (wait_final(igris, task_id) for task_id in ids)
    assert (check["state"], ping["state"]) == ("done", "done")
    assert check["attempts"] == 1 and ping["attempts"] == 1
    assert ping["result"]["ts"] <= check["updated_ms"]  # ping ran before check ended
    assert ping["updated_ms"] <= check["updated_ms"]
    assert check["result"]["status"]  # a health report

    listed = json_of(igris, "task", "ls", "--plan", str(ping["plan"]))
    assert sorted(t["id"] for t in listed["tasks"]) == sorted(ids)


def test_a_single_spec_can_come_from_stdin(igris, monkeypatch):
    spec = {"id": "from-stdin", "kind": "command", "args": {"command": "ping"}}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(spec)))
    [task_id] = json_of(igris, "task", "submit", "--file", "-")["ids"]
    assert task_id.endswith("/from-stdin")
    assert wait_final(igris, task_id)["state"] == "done"


def test_a_sample_task_writes_into_a_memory_pool(agent, igris):
    [task_id] = json_of(igris, "task", "submit", "sample", "pool=sweep-test", "ttl_s=600",
                        "--timeout", "20")["ids"]
    task = wait_final(igris, task_id)
    device = me(agent)
    assert task["state"] == "done", task
    assert task["result"]["pool"] == "sweep-test" and task["result"]["key"] == device

    doc = json_of(igris, "mem", "get", "sweep-test", device)
    assert doc["value"]["status"] == task["result"]["status"]
    assert doc["expires_ms"] is not None  # ttl_s=600 parsed as a number and used


def test_plan_dry_run_prints_the_plan_and_queues_nothing(agent, igris):
    device = me(agent)
    before = queued(igris)
    code, out, err = igris("plan", "health-check", f"device={device}", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"goal: health-check device={device}"
    assert lines[1].split() == ["TASK", "KIND", "AFTER", "WHERE", "ARGS"]
    assert lines[2].split()[:4] == ["health", "command", "-", f"device={device}"]
    assert lines[-1] == "dry run: nothing queued"

    result = json_of(igris, "plan", "health-check", f"device={device}", "--dry-run")
    assert result["ids"] is None
    assert result["plan"]["tasks"][0]["constraints"] == {"device": device}
    assert queued(igris) == before


def test_plan_queues_the_plan_and_it_runs(agent, igris):
    device = me(agent)
    code, out, err = igris("plan", "zone-survey", "group=kitchen", f"gateway={device}")
    assert code == 0, err
    assert "sweep.sample  sample   check.health" in out  # the dependency is shown
    queued_line = out.splitlines()[-1]
    assert queued_line.startswith("queued: ")
    ids = queued_line.removeprefix("queued: ").split(", ")
    assert [i.split("/")[1] for i in ids] == ["check.health", "sweep.sample"]
    assert wait_final(igris, ids[0])["state"] == "done"

    # The agent is in no group, so the sweep is never placed; show says why.
    code, out, _ = igris("task", "show", ids[1])
    assert code == 0
    assert "not in group 'kitchen'" in out
    assert json_of(igris, "task", "cancel", ids[1])["cancelled"] == [ids[1]]


def test_an_invalid_plan_file_is_refused_with_every_reason(igris, tmp_path):
    before = queued(igris)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"goal": "broken", "tasks": [
        {"id": "a", "kind": "command", "priorty": 3},
        {"id": "b", "kind": "command", "after": ["zz"]},
        {"id": "c", "kind": "command", "after": ["d"]},
        {"id": "d", "kind": "command", "after": ["c"], "timeout_s": 0}]}))
    code, out, err = igris("task", "submit", "--file", str(path))
    assert code == 1 and out == ""
    assert err.startswith("igris: error: plan refused: ")
    for reason in ("unknown key 'priorty' (did you mean 'priority'?)",
                   "task 'b': after names 'zz', not a task of this plan",
                   "task 'd': timeout_s must be a number"):
        assert reason in err
    assert queued(igris) == before

    path.write_text("{not json")
    code, _, err = igris("task", "submit", "--file", str(path))
    assert code == 1 and "does not hold JSON" in err


def test_cancelling_a_task_that_cannot_run_cancels_its_dependents(agent, igris, tmp_path):
    path = tmp_path / "stuck.json"
    path.write_text(json.dumps({"goal": "stuck", "tasks": [
        {"id": "far", "kind": "command", "args": {"command": "ping"},
         "constraints": {"device": "no-such-device"}, "retries": 10},
        {"id": "next", "kind": "command", "args": {"command": "ping"}, "after": ["far"]},
        {"id": "last", "kind": "sample", "args": {"pool": "env"}, "after": ["next"]}]}))
    far, nxt, last = json_of(igris, "task", "submit", "--file", str(path))["ids"]

    shown = json_of(igris, "task", "show", far)
    assert shown["state"] in ("ready", "leased", "failed")
    if "would_place" in shown:  # not leased at this instant
        assert shown["would_place"]["device"] is None
        assert shown["would_place"]["refused"] == {
            me(agent): "not the requested device 'no-such-device'"}
    assert json_of(igris, "task", "show", nxt)["state"] == "pending"

    code, out, err = igris("task", "cancel", far)
    assert code == 0, err
    assert out.strip() == f"cancelled {far}, {nxt}, {last}"
    tasks = {t["id"]: t for t in json_of(igris, "task", "ls", "--state", "cancelled")["tasks"]}
    assert {far, nxt, last} <= tasks.keys()
    assert tasks[last]["error"] == f"dependency {nxt} cancelled"

    code, _, err = igris("task", "cancel", far)
    assert code == 1 and "already cancelled" in err


def test_bad_requests_are_errors_naming_the_value(igris):
    code, _, err = igris("task", "show", "999/nope")
    assert code == 1 and "no task '999/nope'" in err
    code, _, err = igris("task", "ls", "--state", "don")
    assert code == 1 and "did you mean 'done'?" in err
    code, _, err = igris("task", "ls", "--limit", "0")
    assert code == 1 and "--limit must be at least 1, got 0" in err
    code, _, err = igris("task", "submit")
    assert code == 1 and "give a task KIND" in err
    code, _, err = igris("task", "submit", "command", "--file", "x.json")
    assert code == 1 and "KIND cannot come with it" in err
    code, _, err = igris("task", "submit", "command", "oops")
    assert code == 1 and "'oops': expected key=value" in err
    code, _, err = igris("task", "submit", "command", "--priority", "12")
    assert code == 1 and "priority must be an integer (0..9), got 12" in err
    code, _, err = igris("plan", "helth-check", "device=x", "--dry-run")
    assert code == 1 and "did you mean 'health-check'?" in err


@pytest.mark.parametrize("argv", [("task",), ("task", "submit"), ("task", "ls"),
                                  ("task", "show"), ("task", "cancel"), ("plan",)])
def test_help_of_each_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: igris {' '.join(argv)} ")


def test_goal_words_are_one_line_the_planner_splits_back_into_the_same_words():
    words = ["sensor-sweep", "group=kitchen", "note=two words", "quote=it's"]
    line = goal_line(words)
    assert line.startswith("sensor-sweep group=kitchen note='two words' ")
    assert shlex.split(line) == words
    assert goal_line(["check every board,", "then sample"]) == "check every board, then sample"
