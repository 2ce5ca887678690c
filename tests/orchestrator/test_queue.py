"""The durable task queue on real SQLite files with a hand-moved clock.

Covers every transition, lease order, the DAG, retries and the dead letter,
deadlines, lease expiry, stale owners, restarts, and a real kill -9 mid-burst.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.db import Database
from agent.errors import TaskInvalid, TaskNotFound
from agent.orchestrator import MAX_RESULT_BYTES, Placement, Plan, TaskQueue, TaskSpec
from tests.support.clock import Clock

NOW = 1_800_000_000_000
REPO = Path(__file__).resolve().parents[2]


class Jitter:
    """The backoff's rand(): returns ``value`` and records each call."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.value


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def jitter():
    return Jitter(0.5)


@pytest.fixture
def db(tmp_path):
    database = Database.open(tmp_path / "igris.db")
    yield database
    database.close()


@pytest.fixture
def queue(db, clock, jitter):
    return TaskQueue(db, now_ms=clock, rand=jitter)


def spec(task_id="t", kind="infer", **fields):
    return TaskSpec(task_id, kind, **fields)


def plan(*tasks, goal="g"):
    return Plan.from_dict({"goal": goal, "tasks": list(tasks)})


def lease_one(queue, owner="r1", lease_s=30, **kw):
    [task] = queue.lease(owner, lease_s=lease_s, **kw)
    return task


def states(queue, *ids):
    return [queue.get(task_id).state for task_id in ids]


# ---------------------------------------------------------------- submit and lease


def test_a_submitted_task_is_ready_and_round_trips_its_spec(queue):
    full = spec("t1", "command", args={"name": "blink"}, priority=8, retries=1, timeout_s=5,
                deadline_s=60)
    [task_id] = queue.submit(full)
    task = queue.get(task_id)
    assert task_id == f"{task.plan}/t1"
    assert (task.spec, task.state, task.attempts, task.submitted_ms, task.deadline_ms) == (
        full, "ready", 0, NOW, NOW + 60_000)


def test_a_plan_gets_one_plan_id_and_pending_dependents(queue):
    ids = queue.submit(plan({"id": "b", "kind": "infer", "after": ["a"]},
                            {"id": "a", "kind": "command"}))
    plan_id = queue.get(ids[0]).plan
    assert ids == [f"{plan_id}/b", f"{plan_id}/a"]
    assert states(queue, *ids) == ["pending", "ready"]
    [second] = queue.submit(spec("x"))
    assert queue.get(second).plan == plan_id + 1
    assert {t.id for t in queue.list(plan=plan_id)} == set(ids)


def test_submit_refuses_anything_but_a_spec_or_a_plan(queue):
    with pytest.raises(TaskInvalid, match="submit takes a TaskSpec or a Plan, got dict"):
        queue.submit({"id": "t", "kind": "infer"})


def test_lease_takes_the_highest_priority_then_the_oldest(queue, clock):
    low = queue.submit(spec("low", priority=1))[0]
    clock.ms += 1
    old = queue.submit(spec("old", priority=5))[0]
    clock.ms += 1
    high = queue.submit(spec("high", priority=9))[0]
    clock.ms += 1
    new = queue.submit(spec("new", priority=5))[0]
    leased = queue.lease("r1", limit=3, lease_s=30)
    assert [t.id for t in leased] == [high, old, new]
    assert all((t.state, t.lease_owner, t.attempts, t.lease_expires_ms) ==
               ("leased", "r1", 1, clock.ms + 30_000) for t in leased)
    assert [t.id for t in queue.lease("r2", limit=3, lease_s=30)] == [low]
    assert queue.lease("r2", lease_s=30) == []


def test_lease_only_takes_the_kinds_asked_for(queue):
    queue.submit(spec("a", "infer"))
    sample = queue.submit(spec("b", "sample"))[0]
    assert [t.id for t in queue.lease("r1", limit=5, lease_s=30, kinds={"sample"})] == [sample]
    assert queue.lease("r1", lease_s=30, kinds=()) == []
    assert queue.lease("r1", lease_s=30, kinds=["action"]) == []


@pytest.mark.parametrize("kw,expected", [
    ({"owner": "", "lease_s": 30}, "owner must be a non-empty string"),
    ({"owner": "r", "lease_s": 0}, "lease_s must be a number"),
    ({"owner": "r", "lease_s": 30, "limit": 0}, "limit must be a positive integer"),
])
def test_lease_refuses_bad_arguments(queue, kw, expected):
    with pytest.raises(TaskInvalid, match=expected):
        queue.lease(kw.pop("owner"), **kw)


# ---------------------------------------------------------------- outcomes


def test_complete_stores_the_result_and_the_task_is_never_leased_again(queue):
    [task_id] = queue.submit(spec())
    lease_one(queue)
    queue.complete(task_id, "r1", {"label": "cat", "p": 0.93})
    task = queue.get(task_id)
    assert (task.state, task.result, task.lease_expires_ms) == (
        "done", {"label": "cat", "p": 0.93}, None)
    assert queue.lease("r1", lease_s=30) == []
    with pytest.raises(TaskInvalid, match="is done, not leased by 'r1'"):
        queue.complete(task_id, "r1", 2)


def test_a_result_that_cannot_be_stored_is_refused_and_changes_nothing(queue):
    [task_id] = queue.submit(spec())
    lease_one(queue)
    with pytest.raises(TaskInvalid, match="result must be plain JSON"):
        queue.complete(task_id, "r1", {"x": object()})
    with pytest.raises(TaskInvalid, match=f"over the {MAX_RESULT_BYTES}-byte limit"):
        queue.complete(task_id, "r1", "x" * MAX_RESULT_BYTES)
    assert queue.get(task_id).state == "leased"


def test_a_stale_owner_cannot_complete_fail_or_extend(queue, clock):
    [task_id] = queue.submit(spec(retries=1))
    lease_one(queue, "old", lease_s=10)
    clock.ms += 10_000
    assert queue.expire_leases() == [task_id]
    clock.ms += 60_000  # past any backoff
    lease_one(queue, "new")
    for call in (lambda: queue.complete(task_id, "old", 1),
                 lambda: queue.fail(task_id, "old", "late"),
                 lambda: queue.heartbeat(task_id, "old", 30),
                 lambda: queue.release(task_id, "old")):
        with pytest.raises(TaskInvalid, match="is leased by 'new', not leased by 'old'"):
            call()
    task = queue.get(task_id)
    assert (task.state, task.lease_owner, task.attempts, task.result) == (
        "leased", "new", 2, None)
    queue.complete(task_id, "new", "ok")
    assert queue.get(task_id).result == "ok"


def test_heartbeat_extends_the_lease_so_it_does_not_expire(queue, clock):
    [task_id] = queue.submit(spec())
    lease_one(queue, lease_s=10)
    clock.ms += 8_000
    assert queue.heartbeat(task_id, "r1", 10) == clock.ms + 10_000
    clock.ms += 8_000
    assert queue.expire_leases() == []
    clock.ms += 2_000
    assert queue.expire_leases() == [task_id]


def test_a_failure_retries_after_a_jittered_exponential_backoff_then_goes_dead(
        queue, clock, jitter):
    [task_id] = queue.submit(spec(retries=2))
    backoffs = []
    for attempt in (1, 2):
        lease_one(queue)
        assert queue.fail(task_id, "r1", f"boom {attempt}") == "failed"
        task = queue.get(task_id)
        assert (task.state, task.error, task.attempts) == ("failed", f"boom {attempt}", attempt)
        backoffs.append(task.not_before_ms - clock.ms)
        clock.ms = task.not_before_ms - 1
        assert queue.lease("r1", lease_s=30) == []  # backoff not over
        clock.ms += 1
    assert backoffs == [500, 1000]  # 0.5 * 1 s, 0.5 * 2 s
    lease_one(queue)
    assert queue.fail(task_id, "r1", "boom 3") == "dead"
    task = queue.get(task_id)
    assert (task.state, task.error, task.attempts) == ("dead", "boom 3", 3)
    assert jitter.calls == 2
    clock.ms += 3_600_000
    assert queue.lease("r1", lease_s=30) == []


def test_the_backoff_is_capped(db, clock):
    queue = TaskQueue(db, now_ms=clock, rand=lambda: 0.999, backoff_base_s=1,
                      backoff_cap_s=4)
    [task_id] = queue.submit(spec(retries=10))
    delays = []
    for _ in range(5):
        lease_one(queue)
        queue.fail(task_id, "r1", "x")
        delays.append(queue.get(task_id).not_before_ms - clock.ms)
        clock.ms += 10_000
    assert delays == [999, 1998, 3996, 3996, 3996]


def test_a_failed_task_can_be_given_back_after_its_backoff_to_another_runner(queue, clock):
    [task_id] = queue.submit(spec())
    lease_one(queue, "r1")
    queue.fail(task_id, "r1", "x")
    clock.ms += 500
    assert lease_one(queue, "r2").id == task_id
    assert queue.get(task_id).state == "leased"


def test_release_gives_a_task_back_without_counting_the_attempt(queue):
    [task_id] = queue.submit(spec())
    lease_one(queue)
    queue.release(task_id, "r1")
    task = queue.get(task_id)
    assert (task.state, task.attempts, task.lease_owner) == ("ready", 0, None)
    assert lease_one(queue, "r2").attempts == 1


def test_place_records_the_placement_of_a_leased_task(queue):
    [task_id] = queue.submit(spec())
    lease_one(queue)
    queue.place(task_id, "r1", Placement("pi-02", 0.8, ("cool", "idle")))
    assert queue.get(task_id).placement == Placement("pi-02", 0.8, ("cool", "idle"))
    with pytest.raises(TaskInvalid, match="cannot place it"):
        queue.place(task_id, "r2", Placement("pi-03", 0.1))


# ---------------------------------------------------------------- leases expire


def test_an_expired_lease_counts_as_a_failed_attempt_and_is_leased_again(queue, clock):
    [task_id] = queue.submit(spec(retries=1))
    lease_one(queue, "dead-node", lease_s=5)
    clock.ms += 4_999
    assert queue.expire_leases() == []
    clock.ms += 1
    assert queue.expire_leases() == [task_id]
    task = queue.get(task_id)
    assert (task.state, task.attempts) == ("failed", 1)
    assert task.error == "lease of 'dead-node' expired before it reported"
    clock.ms += 500
    assert lease_one(queue, "alive").attempts == 2
    clock.ms += 30_000
    assert queue.expire_leases() == [task_id]
    assert queue.get(task_id).state == "dead"  # retries used up


# ---------------------------------------------------------------- DAG and cascade


def test_dependents_become_ready_only_when_every_dependency_is_done(queue):
    ids = queue.submit(plan({"id": "a", "kind": "infer"}, {"id": "b", "kind": "infer"},
                            {"id": "c", "kind": "infer", "after": ["a", "b"]}))
    a, b, c = ids
    leased = queue.lease("r1", limit=5, lease_s=30)
    assert [t.id for t in leased] == [a, b]
    queue.complete(a, "r1", None)
    assert states(queue, c) == ["pending"]
    assert queue.lease("r1", lease_s=30) == []
    queue.complete(b, "r1", None)
    assert states(queue, c) == ["ready"]
    assert lease_one(queue).id == c


def test_a_dead_dependency_cancels_everything_downstream(queue):
    a, b, c, d = queue.submit(plan(
        {"id": "a", "kind": "infer", "retries": 0},
        {"id": "b", "kind": "infer", "after": ["a"]},
        {"id": "c", "kind": "infer", "after": ["b"]},
        {"id": "d", "kind": "infer"},
    ))
    assert lease_one(queue).id == a
    assert queue.fail(a, "r1", "no model") == "dead"
    assert states(queue, a, b, c, d) == ["dead", "cancelled", "cancelled", "ready"]
    assert queue.get(b).error == f"dependency {a} dead"
    assert queue.get(c).error == f"dependency {b} cancelled"


def test_cancel_cascades_and_refuses_finished_tasks(queue):
    a, b, other = queue.submit(plan({"id": "a", "kind": "infer"},
                                    {"id": "b", "kind": "infer", "after": ["a"]},
                                    {"id": "other", "kind": "infer"}))
    assert queue.cancel(a) == [a, b]
    assert states(queue, a, b, other) == ["cancelled", "cancelled", "ready"]
    assert queue.get(a).error == "cancelled by request"
    with pytest.raises(TaskInvalid, match="is already cancelled"):
        queue.cancel(a)
    with pytest.raises(TaskNotFound, match="no task '9/x' in the queue"):
        queue.cancel("9/x")


def test_a_cancelled_leased_task_cannot_be_completed_by_its_runner(queue):
    [task_id] = queue.submit(spec())
    lease_one(queue)
    assert queue.cancel(task_id) == [task_id]
    with pytest.raises(TaskInvalid, match="is cancelled, not leased by 'r1'"):
        queue.complete(task_id, "r1", 1)
    assert queue.get(task_id).state == "cancelled"


# ---------------------------------------------------------------- deadlines


def test_a_task_not_started_by_its_deadline_goes_dead_with_its_dependents(queue, clock):
    late, after = queue.submit(plan({"id": "late", "kind": "infer", "deadline_s": 10},
                                    {"id": "after", "kind": "infer", "after": ["late"]}))
    clock.ms += 10_000
    assert queue.lease("r1", lease_s=30) == []
    assert states(queue, late, after) == ["dead", "cancelled"]
    assert queue.get(late).error == "deadline passed before it started"


def test_a_deadline_does_not_stop_a_task_already_running(queue, clock):
    [task_id] = queue.submit(spec(deadline_s=1))
    lease_one(queue)
    clock.ms += 5_000
    assert queue.lease("r1", lease_s=30) == []
    queue.complete(task_id, "r1", 1)
    assert states(queue, task_id) == ["done"]


def test_a_failed_task_whose_deadline_passes_in_backoff_goes_dead(queue, clock):
    [task_id] = queue.submit(spec(deadline_s=2))
    lease_one(queue)
    queue.fail(task_id, "r1", "x")
    clock.ms += 2_000
    assert queue.lease("r1", lease_s=30) == []
    assert states(queue, task_id) == ["dead"]


# ---------------------------------------------------------------- reading


def test_list_and_counts(queue):
    ids = queue.submit(plan({"id": "a", "kind": "infer"}, {"id": "b", "kind": "infer"},
                            {"id": "c", "kind": "infer", "after": ["a"]}))
    lease_one(queue)
    assert [t.id for t in queue.list()] == ids[::-1]
    assert [t.id for t in queue.list(state="ready")] == [ids[1]]
    assert [t.id for t in queue.list(limit=1)] == [ids[2]]
    assert queue.counts() == {"pending": 1, "ready": 1, "leased": 1, "done": 0, "failed": 0,
                              "dead": 0, "cancelled": 0}
    with pytest.raises(TaskInvalid, match="did you mean 'leased'"):
        queue.list(state="leasd")
    with pytest.raises(TaskNotFound):
        queue.get("1/nope")


def test_a_new_queue_on_the_same_file_keeps_everything(tmp_path, clock):
    path = tmp_path / "igris.db"
    db = Database.open(path)
    queue = TaskQueue(db, now_ms=clock, rand=lambda: 0.0)
    a, b, c = queue.submit(plan({"id": "a", "kind": "infer"}, {"id": "b", "kind": "infer"},
                                {"id": "c", "kind": "infer", "after": ["b"]}))
    lease_one(queue)
    queue.complete(a, "r1", {"n": 1})
    lease_one(queue)
    db.close()

    db = Database.open(path)
    try:
        queue = TaskQueue(db, now_ms=clock, rand=lambda: 0.0)
        assert states(queue, a, b, c) == ["done", "leased", "pending"]
        assert queue.get(a).result == {"n": 1}
        queue.complete(b, "r1", None)  # the restarted runner keeps its lease
        assert lease_one(queue).id == c
        [d] = queue.submit(spec("d"))
        assert queue.get(d).plan == queue.get(a).plan + 1
    finally:
        db.close()


# ---------------------------------------------------------------- kill -9

_BURST = """
import sys
from pathlib import Path
from agent.compat import wall_ms
from agent.db import Database
from agent.orchestrator import TaskQueue, TaskSpec

db = Database.open(Path(sys.argv[1]))
queue = TaskQueue(db, now_ms=wall_ms)
n = 0
while True:
    [task_id] = queue.submit(TaskSpec("t%d" % n, "infer", args={"n": n}))
    print("S", task_id, flush=True)
    [task] = queue.lease("child", lease_s=600)
    queue.complete(task.id, "child", {"n": task.spec.args["n"]})
    print("C", task.id, flush=True)
    n += 1
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_kill_9_mid_burst_loses_no_acknowledged_submit_or_completion(tmp_path):
    path = tmp_path / "igris.db"
    Database.open(path).close()  # migrate before the child starts
    child = subprocess.Popen(
        [sys.executable, "-c", _BURST, str(path)], stdout=subprocess.PIPE, text=True,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = []
    try:
        while sum(line.startswith("C") for line in lines) < 300:
            line = child.stdout.readline()
            assert line.endswith("\n"), "the child stopped"
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
        # Lines written before the kill are still in the pipe: acknowledged too.
        lines += [line for line in child.stdout if line.endswith("\n")]
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    submitted = [line.split()[1] for line in lines if line.startswith("S")]
    completed = [line.split()[1] for line in lines if line.startswith("C")]

    db = Database.open(path)
    try:
        assert db.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        later = Clock(2**50)  # far in the future: every lease has expired
        queue = TaskQueue(db, now_ms=later)
        for task_id in submitted:
            assert queue.get(task_id).spec.args["n"] == int(task_id.split("/t")[1])
        for task_id in completed:
            task = queue.get(task_id)
            assert (task.state, task.result, task.attempts) == (
                "done", {"n": task.spec.args["n"]}, 1)
        # At most the one task in flight at the kill is unfinished; nothing done runs again.
        unfinished = [t.id for t in queue.list(limit=100_000) if t.state != "done"]
        assert len(unfinished) <= 1 and not set(unfinished) & set(completed)
        queue.expire_leases()
        later.ms += 60_000  # past any backoff
        rerun = [t.id for t in queue.lease("after", limit=10, lease_s=30)]
        assert rerun == unfinished
    finally:
        db.close()
