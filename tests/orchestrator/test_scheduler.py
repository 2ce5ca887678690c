"""The scheduler with real parts on the in-process hub: a scheduler-role device places tasks
on devices by their facts and runs them there through signed ``task.run`` commands.

Each device has its real identity, signed channel, command server (with the built-in
commands), bus, SQLite queue, memory store and health monitor over a fake sysfs tree.
The nodes placement sees are given per test (what membership would report), so each
case shows one rule. Real Mosquitto and membership: tests/orchestrator/test_agents.py.
"""

from __future__ import annotations

import asyncio
import time
import warnings

import pytest

from agent.bus import Bus, CommandRegistry, CommandServer, CommandSpec
from agent.bus.builtins import BuiltinContext, builtin_commands
from agent.compat import wall_ms
from agent.device import HealthLed, HealthMonitor, load_profile
from agent.device.gpio_outputs import GpioOutputs
from agent.errors import NoGpioWarning, TaskFailed
from agent.identity import FleetCa, Identity, enroll
from agent.orchestrator import Plan, TaskQueue, TaskSpec
from agent.orchestrator.kinds import KindContext, builtin_kinds
from agent.orchestrator.placement import NodeView, Thresholds
from agent.orchestrator.scheduler import TASK_RUN, Scheduler
from agent.transport import InprocBroker
from tests.memory.test_sharing import TOPICS, Node
from tests.support.waiting import until

GRACE_S = 1.0  # how long past a task's timeout the scheduler waits for a device's answer
POLICY = {"orchestration": {"min_battery_percent": 25, "max_celsius": 75,
                            "max_cpu_percent": 85}}


class TaskNode(Node):
    """A device that runs tasks (and, with the scheduler role, places them)."""

    def __init__(self, ident, hub, root, views):
        super().__init__(ident, hub, wall_ms, root)
        self.registry = CommandRegistry()
        self.server = CommandServer(self.channel, TOPICS, self.db, self.registry,
                                    record=lambda kind, body: self.records.append((kind, body)),
                                    policy_section=lambda name: POLICY.get(name, {}),
                                    now_ms=wall_ms)
        self.bus = Bus(self.channel, TOPICS, membership=None, serves_commands=True)
        self.monitor = HealthMonitor(load_profile("generic-linux"), sysfs_root=root / "sys")
        with warnings.catch_warnings():  # no LED pin on this board: a virtual LED
            warnings.simplefilter("ignore", NoGpioWarning)
            self.led = HealthLed(None)
        outputs = GpioOutputs({})
        for spec in builtin_commands(BuiltinContext(
                device_id=ident.device_id, status=lambda: {"device_id": ident.device_id},
                sample_health=self.sample, peers=lambda: {}, policy=lambda: POLICY,
                policy_section=lambda name: POLICY.get(name, {}), ledger_head=lambda: {},
                config=lambda: {}, led=self.led, outputs=outputs, input_names=(),
                read_inputs=lambda: {}, restart=lambda: None, now_ms=wall_ms)):
            self.registry.add(spec)

        async def stall(_call):  # a command that outlives any task's timeout
            await asyncio.sleep(60)

        self.registry.add(CommandSpec("stall", stall, "never answers in time", timeout_s=60))
        self.queue = TaskQueue(self.db, now_ms=wall_ms, rand=lambda: 0.0)

        async def no_models(_request):
            raise TaskFailed("this harness runs no models")

        kinds = builtin_kinds(KindContext(
            device_id=ident.device_id, infer=no_models, sample=self.sample, memory=self.store,
            run_command=lambda name, args, role: self.server.execute_local(
                name, args, by="task", role=role)))
        self.views = views
        self.stopped = False
        self.scheduler = Scheduler(
            self.queue, kinds, device_id=ident.device_id, nodes=lambda: self.views,
            thresholds=lambda: Thresholds.from_policy(POLICY["orchestration"]),
            dispatch=self.bus.request_one if ident.role == "scheduler" else None,
            now_ms=wall_ms, poll_s=0.05, dispatch_grace_s=GRACE_S)
        self.registry.add(self.scheduler.run_command())

    async def sample(self):
        return (await self.monitor.sample()).to_dict()

    async def start(self):
        await super().start()
        await self.server.start()
        await self.bus.start()
        await self.scheduler.start()
        return self

    async def stop(self):
        if self.stopped:
            return  # stopped by the test already
        self.stopped = True
        await self.scheduler.stop()
        await self.bus.stop()
        await self.server.stop()
        self.monitor.close()
        await super().stop()


def spec(task_id, kind, args, **fields):
    return TaskSpec.from_dict({"id": task_id, "kind": kind, "args": args, **fields})


def alive(device, *, local=False, groups=(), **facts):
    return NodeView(device, "alive", groups=frozenset(groups), local=local, **facts)


@pytest.fixture
def nodes(tmp_path, async_cleanup):
    """``await nodes()``: ``sched`` (scheduler role) and devices ``b`` and ``c`` (``c`` in
    group kitchen), each at first seeing only itself."""
    async def start():
        ca = FleetCa.init(tmp_path / "ca", "lab")
        roles = {"sched": "scheduler", "b": "device", "c": "device"}
        hub = InprocBroker()
        started = {}
        for name, role in roles.items():
            enroll(tmp_path / name, ca, name, now_ms=wall_ms(), role=role,
                   groups=("kitchen",) if name == "c" else ())
            (tmp_path / name / "sys").mkdir()
            node = TaskNode(Identity.load(tmp_path / name), hub, tmp_path / name,
                            [alive(name, local=True)])
            started[name] = await node.start()
            async_cleanup.push(node.stop)
        for node in started.values():
            await until(lambda node=node: node.heard >= set(roles), timeout=5)
        return started

    return start


async def finished(node, task_id, timeout=5.0):
    await until(lambda: node.queue.get(task_id).state in ("done", "dead", "cancelled"),
                timeout=timeout)
    return node.queue.get(task_id)


async def test_a_device_without_the_right_to_dispatch_runs_its_tasks_itself(nodes):
    nodes = await nodes()
    b = nodes["b"]
    b.views = [alive("b", local=True), alive("c", groups=("kitchen",))]
    (tid,) = b.scheduler.submit(spec("p", "command", {"command": "ping"}))
    task = await finished(b, tid)
    assert task.state == "done" and task.placement.device == "b"
    assert task.result["device"] == "b"
    assert b.scheduler.counters["placed_here"] == 1 and b.scheduler.counters["dispatched"] == 0


async def test_placement_follows_groups_and_thresholds_and_runs_there(nodes):
    nodes = await nodes()
    sched, b, c = nodes["sched"], nodes["b"], nodes["c"]
    sched.views = [alive("sched", local=True), alive("b", battery_percent=10, plugged=False),
                   alive("c", groups=("kitchen",), battery_percent=90, plugged=False)]
    kitchen = spec("k", "command", {"command": "ping"}, constraints={"groups": ["kitchen"]})
    anywhere_but_here = spec("m", "command", {"command": "ping"},
                                 constraints={"max_cpu_percent": 50})
    sched.views[0] = alive("sched", local=True, cpu_percent=95)
    ids = [sched.scheduler.submit(spec)[0] for spec in (kitchen, anywhere_but_here)]
    done = [await finished(sched, tid) for tid in ids]
    assert [t.state for t in done] == ["done", "done"]
    assert done[0].placement.device == "c" and done[0].result["device"] == "c"
    assert "b: not in group 'kitchen'" in done[0].placement.reasons
    # b's battery is under the policy's 25 % and sched's CPU over the task's 50 %.
    assert done[1].placement.device == "c"
    assert any(r.startswith("b: battery 10") for r in done[1].placement.reasons)
    assert any(r.startswith("sched: cpu 95") for r in done[1].placement.reasons)
    assert c.scheduler.counters["served"] == 2 and b.scheduler.counters["served"] == 0
    # Each run on c is a command execution in c's ledger, by the scheduler.
    assert [body["by"] for kind, body in c.records
            if kind == "command" and body["cmd"] == TASK_RUN] == ["sched", "sched"]


async def test_a_plan_runs_in_dependency_order_across_devices(nodes):
    nodes = await nodes()
    sched, c = nodes["sched"], nodes["c"]
    sched.views = [alive("b"), alive("c", groups=("kitchen",))]
    plan = Plan.from_dict({"goal": "sample then read back", "tasks": [
        {"id": "sample", "kind": "sample", "args": {"pool": "env", "prefix": "kitchen/"},
         "constraints": {"device": "c"}},
        {"id": "check", "kind": "command", "args": {"command": "health"}, "after": ["sample"],
         "constraints": {"device": "b"}}]})
    first, second = sched.scheduler.submit(plan)
    tasks = [await finished(sched, tid) for tid in (first, second)]
    assert [t.state for t in tasks] == ["done", "done"]
    assert tasks[0].result == {"pool": "env", "key": "kitchen/c",
                               "status": tasks[0].result["status"]}
    assert c.store.get("env", "kitchen/c").value["memory_total_mb"] > 0  # written on c
    assert tasks[1].placement.device == "b"
    assert tasks[1].submitted_ms <= tasks[0].updated_ms <= tasks[1].updated_ms


async def test_no_node_fits_fails_with_the_reasons_then_goes_dead(nodes):
    nodes = await nodes()
    sched = nodes["sched"]
    sched.views = [alive("sched", local=True), alive("b")]
    (tid,) = sched.scheduler.submit(spec("x", "command", {"command": "ping"},
                                             constraints={"caps": ["gpu"]}, retries=1))
    task = await finished(sched, tid)
    assert task.state == "dead" and task.attempts == 2
    assert "no node fits" in task.error and "b: missing cap 'gpu'" in task.error
    assert sched.scheduler.counters["unplaced"] == 2
    shown = sched.scheduler.decide(task.spec).to_dict()
    assert shown["device"] is None and set(shown["refused"]) == {"sched", "b"}


async def test_refusals_on_the_device_fail_the_attempt_with_their_reason(nodes):
    nodes = await nodes()
    sched = nodes["sched"]
    sched.views = [alive("b")]
    bad = spec("bad", "command", {"command": "gpio.write", "args": {"pin": "nope",
                                                                        "value": True}},
                   retries=0)
    (tid,) = sched.scheduler.submit(bad)
    task = await finished(sched, tid)
    assert task.state == "dead" and "on b:" in task.error and "gpio.write" in task.error


async def test_a_device_that_times_a_task_out_says_so_within_the_grace(nodes):
    nodes = await nodes()
    sched = nodes["sched"]
    sched.views = [alive("b")]
    (tid,) = sched.scheduler.submit(spec("s", "command", {"command": "stall"},
                                         timeout_s=0.3, retries=0))
    task = await finished(sched, tid)
    # b's own timeout answered, within the grace: not the scheduler's "timeout after".
    assert task.state == "dead" and task.error.startswith("on b:")
    assert "did not finish in 0.3 s" in task.error


async def test_a_task_run_here_keeps_its_own_timeout(nodes):
    nodes = await nodes()
    sched = nodes["sched"]  # sees only itself
    started = time.monotonic()
    (tid,) = sched.scheduler.submit(spec("s", "command", {"command": "stall"},
                                         timeout_s=0.3, retries=0))
    task = await finished(sched, tid)
    assert task.error == "timeout after 0.3s" and task.placement.device == "sched"
    assert time.monotonic() - started < 0.3 + GRACE_S  # not the dispatch's grace on top
    assert sched.scheduler.runner.counters()["timeouts"] == 1


async def test_task_run_is_refused_to_a_device_role_caller(nodes):
    nodes = await nodes()
    b = nodes["b"]
    result = await b.bus.request("c", TASK_RUN, {"id": "1/x", "attempt": 1, "task": {"id": "x",
                                                                       "kind": "command"}},
                                 mode="first", timeout=2)
    assert result.replies["c"].error["code"] == "forbidden"
    assert nodes["c"].scheduler.counters["served"] == 0


async def test_a_device_that_stops_answering_loses_the_task_to_another(nodes):
    nodes = await nodes()
    sched = nodes["sched"]
    await nodes["c"].stop()  # c is gone, but placement still ranks it first
    sched.views = [alive("c", groups=("kitchen",), cpu_percent=1), alive("b", cpu_percent=60)]
    (tid,) = sched.scheduler.submit(spec("t", "command", {"command": "ping"},
                                             timeout_s=0.3, retries=3))
    await until(lambda: sched.queue.get(tid).attempts >= 1, timeout=5)
    sched.views = [alive("b", cpu_percent=60)]  # membership now says c is dead
    task = await finished(sched, tid)
    assert task.state == "done" and task.placement.device == "b" and task.attempts >= 2


async def test_a_repeated_attempt_gets_its_outcome_without_running_again(nodes):
    nodes = await nodes()
    sched, c = nodes["sched"], nodes["c"]
    args = {"id": "7/s", "attempt": 1,
            "task": {"id": "s", "kind": "sample", "args": {"pool": "env"}}}
    first = await sched.bus.request_one("c", TASK_RUN, args, timeout=5)
    version = c.store.get("env", "c").version
    again = await sched.bus.request_one("c", TASK_RUN, args, timeout=5)
    assert again == first and c.store.get("env", "c").version == version
    assert c.scheduler.counters["served"] == 1 and c.scheduler.counters["repeats"] == 1
    # The next attempt of the same task is a new run.
    await sched.bus.request_one("c", TASK_RUN, {**args, "attempt": 2}, timeout=5)
    assert c.store.get("env", "c").version == version + 1


async def test_a_restarted_scheduler_takes_back_its_leases_at_once(nodes):
    nodes = await nodes()
    sched = nodes["sched"]
    sched.views = [alive("b")]
    await sched.scheduler.stop()
    # As a run killed mid-dispatch leaves it: leased by this device for five minutes.
    (tid,) = sched.queue.submit(spec("p", "command", {"command": "ping"}))
    (leased,) = sched.queue.lease("sched", lease_s=300)
    assert leased.id == tid and leased.attempts == 1
    await sched.scheduler.start()
    task = await finished(sched, tid)
    assert task.state == "done" and task.attempts == 1
    assert sched.scheduler.counters["reclaimed"] == 1


async def test_a_task_runs_commands_with_its_senders_authority_only(nodes):
    nodes = await nodes()
    sched, c = nodes["sched"], nodes["c"]

    async def secret(_call):
        return {"ran": True}

    c.registry.add(CommandSpec("op.only", secret, "for operators", mutates=True,
                               roles=("operator",)))
    sched.views = [alive("c", groups=("kitchen",))]
    # Sent by a scheduler: it may not reach a command only operators may run.
    (tid,) = sched.scheduler.submit(spec("x", "command", {"command": "op.only"}, retries=0))
    task = await finished(sched, tid)
    assert task.state == "dead" and "op.only needs role operator" in task.error
    # Queued on the device itself (its owner, through the control socket): it may.
    (own,) = c.scheduler.submit(spec("y", "command", {"command": "op.only"}))
    assert (await finished(c, own)).result == {"ran": True}
