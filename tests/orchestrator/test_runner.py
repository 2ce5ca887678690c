"""The local runner over a real queue on a real SQLite file.

The queue's clock is a hand-moved ``Clock``; handlers, timeouts, heartbeats
and the poll run in real (short) time on the test's own event loop.
"""

import asyncio
import time

import pytest

from agent.db import Database
from agent.errors import TaskInvalid, TaskTimedOut
from agent.orchestrator import Plan, Task, TaskQueue, TaskRunner, TaskSpec
from tests.support.clock import Clock
from tests.support.waiting import until

NOW = 1_800_000_000_000


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def db(tmp_path):
    db = Database.open(tmp_path / "igris.db")
    yield db
    db.close()


@pytest.fixture
def queue(db, clock):
    return TaskQueue(db, now_ms=clock, rand=lambda: 0.0)  # no backoff wait on retries


def make_runner(queue, clock, handlers, async_cleanup, **kw):
    runner = TaskRunner(queue, handlers, owner=kw.pop("owner", "pi-01"), now_ms=clock, **kw)
    async_cleanup.push(runner.stop)
    return runner


async def echo(task: Task):
    return {"echo": task.spec.args}


async def test_the_runner_runs_ready_tasks_and_stores_their_results(
        queue, clock, async_cleanup):
    ids = queue.submit(Plan.from_dict({"goal": "g", "tasks": [
        {"id": "a", "kind": "echo", "args": {"n": 1}},
        {"id": "b", "kind": "echo", "args": {"n": 2}, "after": ["a"]},
        {"id": "c", "kind": "other"},
    ]}))
    runner = make_runner(queue, clock, {"echo": echo}, async_cleanup)
    await runner.start()
    await until(lambda: runner.counters()["done"] == 2)
    assert [queue.get(i).result for i in ids[:2]] == [{"echo": {"n": 1}}, {"echo": {"n": 2}}]
    assert queue.get(ids[2]).state == "ready"  # no handler for its kind here
    assert runner.counters() == {"started": 2, "done": 2, "failed": 0, "timeouts": 0,
                                 "lost": 0, "expired": 0, "errors": 0}


async def test_a_handler_that_runs_too_long_is_timed_out(queue, clock, async_cleanup):
    cancelled = asyncio.Event()

    async def hang(task):
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    [task_id] = queue.submit(TaskSpec("slow", "hang", timeout_s=0.05, retries=0))
    runner = make_runner(queue, clock, {"hang": hang}, async_cleanup)
    await runner.start()
    await until(lambda: queue.get(task_id).state == "dead")
    assert queue.get(task_id).error == "timeout after 0.05s"
    assert cancelled.is_set()
    assert (runner.counters()["timeouts"], runner.counters()["failed"]) == (1, 1)


async def test_a_grace_lets_a_handler_that_enforces_its_timeout_report_it(
        queue, clock, async_cleanup):
    async def late(task):  # finishes after timeout_s but within the grace
        await asyncio.sleep(0.1)
        return {"late": True}

    async def says_timeout(task):  # enforces the timeout itself (a dispatch does)
        raise TaskTimedOut("on pi-02: did not finish in 0.05 s")

    late_id, told_id = queue.submit(Plan.from_dict({"goal": "g", "tasks": [
        {"id": "late", "kind": "late", "timeout_s": 0.05, "retries": 0},
        {"id": "told", "kind": "told", "timeout_s": 0.05, "retries": 0}]}))
    runner = make_runner(queue, clock, {"late": late, "told": says_timeout}, async_cleanup,
                         grace_s=1.0)
    await runner.start()
    await until(lambda: queue.get(late_id).state == "done"
                and queue.get(told_id).state == "dead")
    assert queue.get(late_id).result == {"late": True}
    assert queue.get(told_id).error == "on pi-02: did not finish in 0.05 s"
    assert (runner.counters()["timeouts"], runner.counters()["failed"]) == (1, 1)
    with pytest.raises(TaskInvalid, match="grace_s"):
        TaskRunner(queue, {}, owner="x", now_ms=clock, grace_s=-1)


async def test_a_failing_handler_is_retried_then_dead_lettered_with_its_error(
        queue, clock, async_cleanup):
    calls = []

    async def flaky(task):
        calls.append(task.attempts)
        if task.spec.args["fail_times"] >= task.attempts:
            raise ValueError(f"bad input on attempt {task.attempts}")
        return "ok"

    recovers, gives_up = queue.submit(Plan.from_dict({"goal": "g", "tasks": [
        {"id": "recovers", "kind": "flaky", "args": {"fail_times": 1}, "retries": 1},
        {"id": "gives-up", "kind": "flaky", "args": {"fail_times": 9}, "retries": 1},
    ]}))
    runner = make_runner(queue, clock, {"flaky": flaky}, async_cleanup)
    await runner.start()
    await until(lambda: {queue.get(recovers).state, queue.get(gives_up).state} ==
                {"done", "dead"})
    assert queue.get(recovers).result == "ok" and queue.get(recovers).attempts == 2
    assert queue.get(gives_up).error == "ValueError('bad input on attempt 2')"
    assert sorted(calls) == [1, 1, 2, 2]
    assert {k: runner.counters()[k] for k in ("started", "done", "failed")} == {
        "started": 4, "done": 1, "failed": 3}


async def test_notify_wakes_the_runner_at_once(queue, clock, async_cleanup):
    runner = make_runner(queue, clock, {"echo": echo}, async_cleanup, poll_s=30)
    await runner.start()
    await asyncio.sleep(0.05)  # the first (empty) lease is done: asleep for 30 s now
    [task_id] = queue.submit(TaskSpec("t", "echo"))
    await asyncio.sleep(0.1)
    assert queue.get(task_id).state == "ready"  # nothing wakes it on its own
    started = time.monotonic()
    runner.notify()
    await until(lambda: queue.get(task_id).state == "done")
    assert time.monotonic() - started < 0.5


async def test_no_more_than_concurrency_tasks_run_at_once(queue, clock, async_cleanup):
    active, peak = [0], [0]
    release = asyncio.Event()

    async def slow(task):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await release.wait()
        active[0] -= 1

    ids = [queue.submit(TaskSpec(f"t{i}", "slow"))[0] for i in range(5)]
    runner = make_runner(queue, clock, {"slow": slow}, async_cleanup, concurrency=2)
    await runner.start()
    await until(lambda: active[0] == 2)
    await asyncio.sleep(0.05)
    assert (peak[0], len(runner.running), queue.counts()["leased"]) == (2, 2, 2)
    release.set()
    await until(lambda: queue.counts()["done"] == 5)
    assert peak[0] == 2 and all(queue.get(i).state == "done" for i in ids)


async def test_the_lease_is_extended_while_the_handler_runs(queue, clock, async_cleanup):
    release = asyncio.Event()

    async def slow(task):
        await release.wait()

    [task_id] = queue.submit(TaskSpec("t", "slow"))
    runner = make_runner(queue, clock, {"slow": slow}, async_cleanup, lease_s=0.3)
    await runner.start()
    await until(lambda: queue.get(task_id).state == "leased")
    assert queue.get(task_id).lease_expires_ms == NOW + 300
    clock.ms += 250
    await until(lambda: queue.get(task_id).lease_expires_ms == clock.ms + 300, timeout=1)
    clock.ms += 250  # past the first expiry: only the heartbeat keeps it
    assert queue.expire_leases() == []
    release.set()
    await until(lambda: queue.get(task_id).state == "done")


async def test_a_task_cancelled_while_running_is_stopped_and_not_reported(
        queue, clock, async_cleanup):
    stopped = asyncio.Event()

    async def slow(task):
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    [task_id] = queue.submit(TaskSpec("t", "slow"))
    runner = make_runner(queue, clock, {"slow": slow}, async_cleanup, lease_s=0.15)
    await runner.start()
    await until(lambda: queue.get(task_id).state == "leased")
    queue.cancel(task_id)
    await asyncio.wait_for(stopped.wait(), 2)  # the next heartbeat finds the lease gone
    await until(lambda: runner.running == [])
    assert queue.get(task_id).state == "cancelled"
    assert (runner.counters()["lost"], runner.counters()["failed"]) == (1, 0)


async def test_expired_leases_of_a_dead_runner_are_taken_over(queue, clock, async_cleanup):
    [task_id] = queue.submit(TaskSpec("t", "echo", args={"x": 1}))
    queue.lease("dead-node", lease_s=5)
    clock.ms += 5_000
    runner = make_runner(queue, clock, {"echo": echo}, async_cleanup)
    await runner.start()
    await until(lambda: queue.get(task_id).state == "done")
    task = queue.get(task_id)
    assert (task.attempts, task.lease_owner, task.result) == (2, "pi-01", {"echo": {"x": 1}})
    assert runner.counters()["expired"] == 1


async def test_stop_gives_running_tasks_back_to_the_queue(queue, clock, async_cleanup):
    async def forever(task):
        await asyncio.sleep(60)

    [task_id] = queue.submit(TaskSpec("t", "forever"))
    runner = make_runner(queue, clock, {"forever": forever}, async_cleanup)
    await runner.start()
    await until(lambda: queue.get(task_id).state == "leased")
    await runner.stop()
    task = queue.get(task_id)
    assert (task.state, task.attempts, task.lease_owner) == ("ready", 0, None)
    assert runner.running == []


async def test_a_result_that_cannot_be_stored_fails_the_attempt(queue, clock, async_cleanup):
    async def unstorable(task):
        return {"when": object()}

    [task_id] = queue.submit(TaskSpec("t", "bad", retries=0))
    runner = make_runner(queue, clock, {"bad": unstorable}, async_cleanup)
    await runner.start()
    await until(lambda: queue.get(task_id).state == "dead")
    assert queue.get(task_id).error.startswith("result refused: task ")
    assert "result must be plain JSON" in queue.get(task_id).error


@pytest.mark.parametrize("kw,expected", [
    ({"owner": ""}, "needs an owner name"),
    ({"concurrency": 0}, "concurrency must be a positive integer"),
    ({"lease_s": 0}, "lease_s must be a positive number"),
])
def test_bad_runner_settings_are_refused(queue, clock, kw, expected):
    settings = {"owner": "pi-01", **kw}
    with pytest.raises(TaskInvalid, match=expected):
        TaskRunner(queue, {"echo": echo}, now_ms=clock, **settings)


async def test_an_idle_runner_stops_asking_the_database_and_still_runs_new_work_at_once(
        db, clock, async_cleanup):
    queue = TaskQueue(db, now_ms=clock, rand=lambda: 1.0)  # retries wait a full backoff
    fail = {"left": 1}

    async def flaky(task):
        if fail["left"]:
            fail["left"] -= 1
            raise RuntimeError("not yet")
        return {"ok": True}

    runner = make_runner(queue, clock, {"echo": echo, "flaky": flaky}, async_cleanup,
                         poll_s=0.01, idle_poll_s=60)
    statements = []
    await runner.start()
    await asyncio.sleep(0.05)  # its first look found nothing open
    db.conn.set_trace_callback(statements.append)
    await asyncio.sleep(0.3)  # 30 polls' worth at poll_s
    assert statements == []
    # New work is not kept waiting for the idle poll: notify() wakes it.
    [task_id] = queue.submit(TaskSpec("a", "echo", {"n": 1}))
    runner.notify()
    await until(lambda: queue.get(task_id).state == "done", timeout=2)
    # While a task waits out its backoff the runner keeps polling (no event says it
    # ended), so the retry runs once the clock alone has moved past it.
    [retried] = queue.submit(TaskSpec("b", "flaky", retries=1))
    runner.notify()
    await until(lambda: queue.get(retried).state == "failed", timeout=2)
    clock.ms += 600_000
    await until(lambda: queue.get(retried).state == "done", timeout=2)
