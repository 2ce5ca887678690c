"""The scheduler: places each queued task on a node and runs it there.

It is a :class:`TaskRunner` over the durable queue whose handler, for every
kind this device knows, first places the task (:func:`place` over the nodes
membership knows, filtered by the task's constraints and the policy's
``orchestration`` thresholds, scored by load, battery, heat and locality),
records the placement in the queue, then runs it: here, through the kind's
handler, or on the chosen device through the signed command ``task.run``.

A node that dies while it runs a task stops the wait at once (the bus hears
from membership that the device is dead), the attempt fails, and the queue's
retry places the task again among the nodes still alive. A scheduler that
restarts takes back at once the tasks it had leased (its old leases would
otherwise hold them until they expire) and sends them again with the same
attempt number; a device that already runs or ran that attempt answers with
the same outcome instead of running it twice. A node that is
running tasks scores lower for the next one, so work spreads. A device
without the right to send ``task.run`` (only operators and schedulers have
it) places tasks on itself alone.

>>> scheduler = Scheduler(queue, kinds, device_id="sched-1", nodes=nodes,      # doctest: +SKIP
...                       thresholds=limits, dispatch=bus.request_one, now_ms=wall_ms)
>>> registry.add(scheduler.run_command())                                    # doctest: +SKIP
>>> await scheduler.start(); scheduler.submit(plan)                          # doctest: +SKIP
['1/fetch', '1/classify']
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from agent.bus import ROLES_MUTATE, Arg, CommandCall, CommandSpec
from agent.errors import CommandFailed, CommandRefused, TaskFailed, TaskInvalid, TaskTimedOut
from agent.orchestrator.kinds import TASK_ROLE, KindHandler
from agent.orchestrator.models import MAX_TIMEOUT_S, Placement, Plan, Task, TaskSpec
from agent.orchestrator.placement import Decision, NodeView, Thresholds, place
from agent.orchestrator.queue import TaskQueue
from agent.orchestrator.runner import TaskRunner

log = logging.getLogger(__name__)

TASK_RUN = "task.run"
DISPATCH_GRACE_S = 5.0
"""A dispatched task's request waits this much beyond the task's timeout for the reply: the
device enforces the timeout and answers why; only silence fails the attempt here."""
SERVED_KEPT = 256
"""Attempts a device remembers (running or finished) to answer a repeat with their outcome."""

Dispatch = Callable[..., Awaitable[Any]]
"""``await dispatch(device, command, args, timeout=s)``: the result, or ``CommandFailed``
(``Bus.request_one``)."""


class Scheduler:
    """Place and run the queue's tasks; serve ``task.run`` for other schedulers.

    ``nodes()`` gives what is known of every node, this device included
    (``local=True``); ``thresholds()`` the policy's current limits;
    ``dispatch`` sends ``task.run`` (None: this device may not, so it runs
    everything itself).
    """

    def __init__(self, queue: TaskQueue, kinds: Mapping[str, KindHandler], *, device_id: str,
                 nodes: Callable[[], Iterable[NodeView]], thresholds: Callable[[], Thresholds],
                 dispatch: Dispatch | None, now_ms: Callable[[], int],
                 plugins: Callable[[], Mapping[str, KindHandler]] | None = None,
                 concurrency: int = 8, lease_s: float = 30.0, poll_s: float = 1.0,
                 dispatch_grace_s: float = DISPATCH_GRACE_S):
        self.queue = queue
        self.kinds = dict(kinds)
        self._plugins = plugins
        self.device_id = device_id
        self._nodes = nodes
        self._thresholds = thresholds
        self._dispatch = dispatch
        self._grace_s = dispatch_grace_s
        self._running_on: Counter[str] = Counter()
        self._served: OrderedDict[tuple[str, str, int], asyncio.Task[Any]] = OrderedDict()
        self.counters: Counter[str] = Counter(placed_here=0, dispatched=0, unplaced=0,
                                              lost=0, reclaimed=0, served=0, repeats=0)
        self.runner = TaskRunner(queue, dict.fromkeys(self.kinds, self._run), owner=device_id,
                                 now_ms=now_ms, concurrency=concurrency, lease_s=lease_s,
                                 poll_s=poll_s, grace_s=dispatch_grace_s)

    async def start(self) -> None:
        """Take back the leases a previous run of this device left, then start placing."""
        self.counters["reclaimed"] += self.queue.release_all(self.device_id)
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    def submit(self, work: TaskSpec | Plan) -> list[str]:
        """Queue a task or a plan (committed when this returns); the task ids.

        A kind this device does not run is refused (``TaskInvalid``): it could
        never be leased here, so it would wait in the queue for good.
        """
        specs = work.tasks if isinstance(work, Plan) else (work,)
        unknown = sorted({spec.kind for spec in specs if not self.knows(spec.kind)})
        if unknown:
            raise TaskInvalid(f"{self.device_id} runs no task kind {', '.join(unknown)}; it "
                              f"runs {', '.join(sorted(self.kinds))} (more come from packages "
                              "with igris.task_kinds entry points)")
        ids = self.queue.submit(work)
        self.runner.notify()
        return ids

    def cancel(self, task_id: str) -> list[str]:
        """Cancel a task and its dependents; a running one is stopped where it runs here."""
        cancelled = self.queue.cancel(task_id)
        self.runner.notify()
        return cancelled

    def knows(self, kind: str) -> bool:
        """Whether this device runs ``kind``; the first kind not built in loads the plugins."""
        if kind not in self.kinds and self._plugins is not None:
            loaded = {name: handler for name, handler in self._plugins().items()
                      if name not in self.kinds}
            self._plugins = None
            self.kinds.update(loaded)
            self.runner.add_handlers(dict.fromkeys(loaded, self._run))
        return kind in self.kinds

    def decide(self, spec: TaskSpec) -> Decision:
        """Where ``spec`` would run now, and why the other nodes would not do."""
        nodes = [replace(node, running=self._running_on[node.device_id])
                 if self._running_on[node.device_id] else node for node in self._nodes()]
        if self._dispatch is None:
            nodes = [node for node in nodes if node.local]
        return place(spec.constraints, nodes, self._thresholds())

    def stats(self) -> dict[str, Any]:
        """For ``igris status``: the queue's counts, the runner's and this scheduler's."""
        return {"queue": self.queue.counts(), "runner": self.runner.counters(),
                "running_on": {dev: n for dev, n in self._running_on.items() if n},
                "dispatches": self._dispatch is not None, "kinds": sorted(self.kinds),
                **self.counters}

    async def _run(self, task: Task) -> Any:
        decision = self.decide(task.spec)
        device = decision.device
        if device is None:
            self.counters["unplaced"] += 1
            why = "; ".join(f"{dev}: {reason}" for dev, reason in sorted(decision.refused.items()))
            raise TaskFailed(f"no node fits task {task.id}: {why or 'no node known'}")
        refused = tuple(f"{dev}: {reason}" for dev, reason in sorted(decision.refused.items()))
        self.queue.place(task.id, self.device_id,
                         Placement(device, round(float(decision.score or 0.0), 4), refused))
        self._running_on[device] += 1
        try:
            if device == self.device_id:
                self.counters["placed_here"] += 1
                # The runner waits timeout_s plus the dispatch grace: here the task
                # keeps its own timeout_s.
                return await _within_timeout(task.spec, self.kinds[task.spec.kind])
            self.counters["dispatched"] += 1
            return await self._run_on(device, task)
        finally:
            self._running_on[device] -= 1

    async def _run_on(self, device: str, task: Task) -> Any:
        assert self._dispatch is not None  # decide() placed remotely only with a dispatcher
        try:
            return await self._dispatch(
                device, TASK_RUN,
                {"id": task.id, "attempt": task.attempts, "task": task.spec.to_dict()},
                timeout=task.spec.timeout_s + self._grace_s)
        except CommandFailed as exc:
            if exc.code in ("dead", "left", "blocked", "timeout"):
                self.counters["lost"] += 1
                log.warning("task %s lost on %s (%s); it will be placed again", task.id,
                            device, exc.code)
            raise TaskFailed(f"on {device}: {exc}") from None

    # ------------------------------------------------------------------ serving

    def run_command(self) -> CommandSpec:
        """``task.run``: run a task a scheduler placed on this device (operators and
        schedulers only; idempotent by command id, as every command)."""

        async def run(call: CommandCall) -> Any:
            try:
                spec = TaskSpec.from_dict(call.args["task"])
            except TaskInvalid as exc:
                raise CommandRefused("bad_args", str(exc)) from None
            handler = self.kinds.get(spec.kind) if self.knows(spec.kind) else None
            if handler is None:
                raise CommandRefused("unknown_kind", f"{self.device_id} runs no task kind "
                                                     f"{spec.kind!r} (it has {sorted(self.kinds)})")
            key = (call.caller, call.args["id"], call.args["attempt"])
            attempt = self._served.get(key)
            if attempt is None:  # a repeat of an attempt gets its outcome, not a second run
                self.counters["served"] += 1
                TASK_ROLE.set(call.role)  # the task runs commands with its sender's authority
                attempt = asyncio.create_task(self._serve(call.args["id"], spec, handler),
                                              name=f"igris.task.{call.args['id']}")
                self._served[key] = attempt
                while len(self._served) > SERVED_KEPT:
                    self._served.popitem(last=False)
            else:
                self.counters["repeats"] += 1
            return await asyncio.shield(attempt)

        return CommandSpec(
            TASK_RUN, run, "run a task a scheduler placed on this device",
            args={"id": Arg(str, help="the task's id in the scheduler's queue"),
                  "attempt": Arg(int, help="the attempt's number (a repeat is not run again)"),
                  "task": Arg(dict, help="the task spec")},
            mutates=True, roles=ROLES_MUTATE, timeout_s=MAX_TIMEOUT_S + DISPATCH_GRACE_S,
        )

    @staticmethod
    async def _serve(task_id: str, spec: TaskSpec, handler: KindHandler) -> Any:
        try:
            return await _within_timeout(spec, handler)
        except TaskTimedOut:
            raise CommandRefused("timeout", f"task {task_id} did not finish in "
                                            f"{spec.timeout_s:g} s") from None
        except (TaskFailed, TaskInvalid) as exc:
            raise CommandRefused("failed", str(exc)) from None


async def _within_timeout(spec: TaskSpec, handler: KindHandler) -> Any:
    """``handler(spec)``, or :class:`TaskTimedOut` once it outlives ``spec.timeout_s``."""
    try:
        return await asyncio.wait_for(handler(spec), spec.timeout_s)
    except asyncio.TimeoutError:
        raise TaskTimedOut(f"timeout after {spec.timeout_s:g}s") from None
