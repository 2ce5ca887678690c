"""The local runner: leases tasks from the queue and runs them with their kind's handler.

One dispatch loop per runner leases as many ready tasks as it has free slots
(``concurrency``), only of the kinds it has handlers for, and runs each as a
named asyncio task, cancelled if it outlives its ``timeout_s`` (plus ``grace_s``, for
handlers that enforce the timeout themselves and need time to say so). While handlers
run, one keeper task extends their leases every third of ``lease_s``, so a live
runner keeps its work and a dead one's leases expire. The outcome is reported
to the queue: the handler's return value completes the task; an exception (an
Igris error's message, any other's ``repr``) or a timeout (``timeout after
60s``) fails the attempt, which retries or goes dead as the queue decides.
If the lease is lost mid-run (the task was cancelled, or the lease expired
while the loop stalled), the handler is cancelled and nothing is reported:
the outcome is no longer this runner's.

The loop sleeps until :meth:`TaskRunner.notify` (call it after submitting),
a slot frees up, or ``poll_s`` passes (failed tasks' backoff ends with no
event to say so). While the queue holds no open task at all, nothing can
become ready by the clock alone, so it sleeps ``idle_poll_s`` instead: an
idle device does not wake every second to ask its database for work. Every
``expire_every_s`` it returns expired leases, of any owner, to the queue.

>>> async def blink(task: Task) -> dict:                            # doctest: +SKIP
...     return {"blinked": task.spec.args["times"]}
>>> runner = TaskRunner(queue, {"blink": blink}, owner="pi-01", now_ms=wall_ms)  # doctest: +SKIP
>>> await runner.start()                                            # doctest: +SKIP
>>> queue.submit(TaskSpec("b1", "blink", {"times": 3})); runner.notify()          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent.errors import IgrisError, TaskInvalid, TaskTimedOut
from agent.orchestrator.models import Task
from agent.orchestrator.queue import TaskQueue

log = logging.getLogger(__name__)

Handler = Callable[[Task], Awaitable[Any]]
"""Runs one task of its kind; returns the JSON result, raises to fail the attempt."""

COUNTERS = ("started", "done", "failed", "timeouts", "lost", "expired", "errors")
"""started/done/failed: attempts; timeouts: failed by timeout_s (the runner's or a handler's
``TaskTimedOut``); lost: leases lost mid-run;
expired: other leases this runner's sweeps returned to the queue; errors: dispatch errors."""


class TaskRunner:
    """Runs queued tasks of the kinds in ``handlers``; see the module docstring."""

    def __init__(self, queue: TaskQueue, handlers: Mapping[str, Handler], *, owner: str,
                 now_ms: Callable[[], int], concurrency: int = 2, lease_s: float = 30.0,
                 poll_s: float = 1.0, idle_poll_s: float = 30.0,
                 expire_every_s: float = 5.0, grace_s: float = 0.0) -> None:
        if not isinstance(owner, str) or not owner:
            raise TaskInvalid(f"a runner needs an owner name (its device id), got {owner!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise TaskInvalid(f"concurrency must be a positive integer, got {concurrency!r}")
        for name, value in (("lease_s", lease_s), ("poll_s", poll_s),
                            ("idle_poll_s", idle_poll_s), ("expire_every_s", expire_every_s)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise TaskInvalid(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(grace_s, (int, float)) or grace_s < 0:
            raise TaskInvalid(f"grace_s must be a number of seconds >= 0, got {grace_s!r}")
        self._queue = queue
        self._handlers = dict(handlers)
        self._owner = owner
        self._now_ms = now_ms
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._idle_poll_s = idle_poll_s
        self._expire_every_ms = round(expire_every_s * 1000)
        self._grace_s = grace_s
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        # Why a run was cancelled, when it was not stop(): "timeout" or "lost".
        self._stopped_because: dict[str, str] = {}
        self._counters = dict.fromkeys(COUNTERS, 0)

    async def start(self) -> None:
        """Start the dispatch loop and the lease keeper (named tasks); returns at once."""
        if not self._loops:
            self._loops = [
                asyncio.create_task(self._dispatch(),
                                    name=f"igris.orchestrator.runner[{self._owner}]"),
                asyncio.create_task(self._keep_leases(),
                                    name=f"igris.orchestrator.leases[{self._owner}]"),
            ]

    async def stop(self) -> None:
        """Stop leasing; cancel running handlers and give their tasks back to the queue."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        running = list(self._running.values())
        for run in running:
            run.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def add_handlers(self, handlers: Mapping[str, Handler]) -> None:
        """Run tasks of these kinds too (kinds a plugin brought once it loaded)."""
        self._handlers.update(handlers)
        self._wake.set()

    def notify(self) -> None:
        """Wake the dispatch loop now: call after submitting work."""
        self._wake.set()

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    @property
    def running(self) -> list[str]:
        """Ids of the tasks this runner is running now."""
        return list(self._running)

    # ------------------------------------------------------------------ loops

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        next_expiry_ms = self._now_ms()
        while True:
            # Clear first: a notify() that arrives while we lease is not lost.
            self._wake.clear()
            wait_s = self._poll_s
            try:
                if self._now_ms() >= next_expiry_ms:
                    self._counters["expired"] += len(self._queue.expire_leases())
                    next_expiry_ms = self._now_ms() + self._expire_every_ms
                self._lease_into_free_slots()
                if not self._running and not self._queue.has_open():
                    wait_s = self._idle_poll_s
            except Exception:
                self._counters["errors"] += 1
                log.exception("runner %s: leasing failed; trying again in %ss",
                              self._owner, self._poll_s)
            # Not wait_for: on Python < 3.12 it can swallow the cancel that stop() sends
            # when the event is set at the same moment, and the loop would never end.
            timer = loop.call_later(wait_s, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _lease_into_free_slots(self) -> None:
        free = self._concurrency - len(self._running)
        if free <= 0 or not self._handlers:
            return
        loop = asyncio.get_running_loop()
        for task in self._queue.lease(self._owner, limit=free, lease_s=self._lease_s,
                                      kinds=self._handlers):
            run = asyncio.create_task(self._run(task), name=f"igris.orchestrator.task[{task.id}]")
            self._running[task.id] = run
            # A timer, not wait_for: no extra task per run, and one cancel path for all.
            timer = loop.call_later(task.spec.timeout_s + self._grace_s, self._cancel_run,
                                    task.id, "timeout")
            run.add_done_callback(lambda _, timer=timer: timer.cancel())

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            for task_id in list(self._running):
                try:
                    self._queue.heartbeat(task_id, self._owner, self._lease_s)
                except TaskInvalid as exc:
                    self._counters["lost"] += 1
                    log.warning("runner %s: lost the lease on %s, stopping it: %s",
                                self._owner, task_id, exc)
                    self._cancel_run(task_id, "lost")
                except Exception:
                    self._counters["errors"] += 1
                    log.exception("runner %s: extending the lease on %s failed",
                                  self._owner, task_id)

    def _cancel_run(self, task_id: str, reason: str) -> None:
        run = self._running.get(task_id)
        if run is not None and task_id not in self._stopped_because:
            self._stopped_because[task_id] = reason
            run.cancel()

    # ------------------------------------------------------------------ one attempt

    async def _run(self, task: Task) -> None:
        self._counters["started"] += 1
        try:
            error = await self._attempt(task)
        except asyncio.CancelledError:
            reason = self._stopped_because.get(task.id)
            if reason is None:  # stop(): the task was not at fault, give it back
                self._give_back(task)
                raise
            if reason == "lost":
                return  # no longer ours: report nothing
            self._counters["timeouts"] += 1
            error = f"timeout after {task.spec.timeout_s:g}s"
        finally:
            self._stopped_because.pop(task.id, None)
            del self._running[task.id]
            self._wake.set()
        if error is not None:
            self._report_failure(task, error)

    async def _attempt(self, task: Task) -> str | None:
        """Run the handler and report success; the error text if the attempt failed."""
        try:
            result = await self._handlers[task.spec.kind](task)
        except TaskTimedOut as exc:
            self._counters["timeouts"] += 1
            return str(exc)
        except IgrisError as exc:  # says what went wrong in its own words
            return str(exc)
        except Exception as exc:  # a bug or a plugin's error: keep its type
            return repr(exc)
        try:
            self._queue.complete(task.id, self._owner, result)
        except TaskInvalid as exc:
            # Either the result cannot be stored or the lease was lost; failing the
            # attempt stores the reason in the first case and is refused in the second.
            return f"result refused: {exc}"
        self._counters["done"] += 1
        return None

    def _report_failure(self, task: Task, error: str) -> None:
        try:
            self._queue.fail(task.id, self._owner, error)
        except TaskInvalid as exc:
            self._counters["lost"] += 1
            log.warning("runner %s: outcome of %s not recorded: %s", self._owner, task.id, exc)
            return
        self._counters["failed"] += 1

    def _give_back(self, task: Task) -> None:
        try:
            self._queue.release(task.id, self._owner)
        except TaskInvalid as exc:
            log.info("runner %s: %s was not given back: %s", self._owner, task.id, exc)
