"""The durable local task queue: plans in, leases out, every state change one commit.

Tasks live in the ``tasks`` table of the agent's SQLite file (migration 11),
their DAG in ``task_deps``. A runner *leases* ready tasks (highest priority,
then oldest), keeps the lease alive with :meth:`TaskQueue.heartbeat` while it
works, and reports the outcome with :meth:`~TaskQueue.complete` or
:meth:`~TaskQueue.fail`. Only the lease holder may report, so a runner that
lost its lease (it stalled, the lease expired and another runner took the
task) cannot overwrite the outcome: the late report is refused and changes
nothing.

Each method that changes state is one ``Database.transaction()`` and returns
after its commit. With WAL and ``synchronous=NORMAL`` a kill -9 at any point
loses nothing a method returned for; a task leased but not reported stays
leased until its lease expires, then counts as a failed attempt and runs
again. So a task whose handler ran but whose ``complete`` was not committed
may run twice: handlers should be idempotent (at-least-once delivery); a task
reported done never runs again.

Failures retry after an exponential backoff with full jitter
(``rand() * min(cap, base * 2 ** (attempt - 1))``); when retries run out, or
the deadline passes before a task starts, it goes ``dead`` (the dead letter),
and every task waiting on it, directly or not, is ``cancelled``.

>>> queue = TaskQueue(db, now_ms=wall_ms)                           # doctest: +SKIP
>>> [task_id] = queue.submit(TaskSpec("blink", "command"))          # doctest: +SKIP
>>> [task] = queue.lease("runner-1", lease_s=30)                    # doctest: +SKIP
>>> queue.complete(task.id, "runner-1", {"ok": True})               # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable, Collection, Iterable
from typing import Any

from agent.compat import canonical_json
from agent.db import Database
from agent.errors import TaskInvalid, TaskNotFound
from agent.orchestrator.models import (
    Placement,
    Plan,
    Task,
    TaskSpec,
    TaskState,
    check_state,
    check_transition,
)

MAX_RESULT_BYTES = 64 * 1024
"""Canonical JSON of a task's result; larger outputs belong in the memory store."""

MAX_ERROR_CHARS = 1000
"""Errors are kept for people to read; a traceback-sized one is cut."""

DEFAULT_LIST_LIMIT = 100

_ROW = ("SELECT id, plan, spec, state, attempts, submitted_ms, updated_ms, not_before_ms, "
        "deadline_ms, lease_owner, lease_expires_ms, result, error, placement FROM tasks ")
_INSERT = ("INSERT INTO tasks (id, plan, kind, spec, state, priority, retries, waiting, "
           "attempts, submitted_ms, updated_ms, not_before_ms, deadline_ms) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)")


def _sources(new: str) -> str:
    """SQL list of the states a task may reach ``new`` from (TaskState.TRANSITIONS)."""
    return ", ".join(f"'{old}'" for old, targets in TaskState.TRANSITIONS.items()
                     if new in targets)


_TO_LEASED = _sources(TaskState.LEASED)
_TO_DONE = _sources(TaskState.DONE)
_TO_DEAD_BY_DEADLINE = "'pending', 'ready', 'failed'"
"""Not started yet (a deadline never stops a leased task); the tasks_deadline index's states."""
_OPEN = ", ".join(f"'{state}'" for state in TaskState.ALL if state not in TaskState.FINAL)
"""Not final (:meth:`TaskQueue.has_open`)."""
# Back to ready, the attempt not counted: a lease given back unrun.
_RELEASE = ("UPDATE tasks SET state = 'ready', attempts = attempts - 1, lease_owner = NULL, "
            "lease_expires_ms = NULL, updated_ms = ? WHERE state = 'leased' AND lease_owner = ?")


class TaskQueue:
    """Durable task queue over the agent's database; see the module docstring.

    ``now_ms`` gives wall milliseconds (leases, backoff, deadlines) and ``rand``
    a float in [0, 1) for the backoff jitter; tests inject both.
    """

    def __init__(self, db: Database, *, now_ms: Callable[[], int],
                 rand: Callable[[], float] | None = None, backoff_base_s: float = 1.0,
                 backoff_cap_s: float = 60.0) -> None:
        self._db = db
        self._now_ms = now_ms
        self._rand = rand or random.Random().random
        self._backoff_base_ms = backoff_base_s * 1000
        self._backoff_cap_ms = backoff_cap_s * 1000

    # ------------------------------------------------------------------ submit

    def submit(self, work: TaskSpec | Plan) -> list[str]:
        """Store a plan (or one task, as a plan of its own); its task ids, in plan order.

        Tasks without dependencies are ``ready`` at once, the others ``pending``.
        """
        if isinstance(work, TaskSpec):
            work = Plan(work.id, (work,))
        if not isinstance(work, Plan):
            raise TaskInvalid(f"submit takes a TaskSpec or a Plan, got {type(work).__name__}; "
                              "read JSON with TaskSpec.from_dict or Plan.from_dict")
        now = self._now_ms()
        with self._db.transaction() as conn:
            plan_id = conn.execute("INSERT INTO task_plans (goal, submitted_ms) VALUES (?, ?)",
                                   (work.goal, now)).lastrowid
            assert plan_id is not None
            seqs: dict[str, int] = {}
            for spec in work.order():  # dependencies first, so their seqs are known
                deadline = (None if spec.deadline_s is None
                            else now + round(spec.deadline_s * 1000))
                state = TaskState.PENDING if spec.after else TaskState.READY
                seq = conn.execute(_INSERT, (
                    f"{plan_id}/{spec.id}", plan_id, spec.kind,
                    canonical_json(spec.to_dict()).decode(), state, spec.priority,
                    spec.retries, len(spec.after), now, now, now, deadline,
                )).lastrowid
                assert seq is not None
                seqs[spec.id] = seq
                if spec.after:
                    conn.executemany("INSERT INTO task_deps (dep, task) VALUES (?, ?)",
                                     [(seqs[dep], seq) for dep in spec.after])
        return [f"{plan_id}/{spec.id}" for spec in work.tasks]

    # ------------------------------------------------------------------ leases

    def lease(self, owner: str, *, limit: int = 1, lease_s: float,
              kinds: Collection[str] | None = None) -> list[Task]:
        """Lease up to ``limit`` ready tasks to ``owner`` for ``lease_s`` seconds.

        Highest priority first, then oldest. Before choosing, failed tasks whose
        backoff has ended become ready again and tasks past their deadline go
        dead. ``kinds`` limits the lease to the kinds the caller can run.
        """
        _check_owner(owner)
        if not isinstance(limit, int) or limit < 1:
            raise TaskInvalid(f"lease limit must be a positive integer, got {limit!r}")
        lease_ms = _lease_ms(lease_s)
        kinds = tuple(kinds) if kinds is not None else None
        if kinds == ():
            return []
        now = self._now_ms()
        with self._db.transaction() as conn:
            self._expire_deadlines(conn, now)
            conn.execute(
                "UPDATE tasks SET state = 'ready', updated_ms = ? "
                "WHERE state = 'failed' AND not_before_ms <= ?", (now, now))
            kind_filter = f"AND kind IN ({', '.join('?' * len(kinds))}) " if kinds else ""
            seqs = [row[0] for row in conn.execute(
                f"SELECT seq FROM tasks WHERE state IN ({_TO_LEASED}) {kind_filter}"
                "ORDER BY priority DESC, seq LIMIT ?", (*(kinds or ()), limit))]
            if not seqs:
                return []
            marks = ", ".join("?" * len(seqs))
            conn.execute(
                "UPDATE tasks SET state = 'leased', lease_owner = ?, lease_expires_ms = ?, "
                f"attempts = attempts + 1, updated_ms = ? WHERE seq IN ({marks})",
                (owner, now + lease_ms, now, *seqs))
            rows = conn.execute(_ROW + f"WHERE seq IN ({marks}) ORDER BY priority DESC, seq",
                                seqs).fetchall()
        return [_task(row) for row in rows]

    def heartbeat(self, task_id: str, owner: str, lease_s: float) -> int:
        """Extend ``owner``'s lease on a task to ``lease_s`` from now; the new expiry (ms).

        Refused (:class:`TaskInvalid`) when ``owner`` does not hold the lease.
        """
        lease_ms = _lease_ms(lease_s)
        now = self._now_ms()
        expires = now + lease_ms
        with self._db.transaction() as conn:
            changed = conn.execute(
                "UPDATE tasks SET lease_expires_ms = ?, updated_ms = ? "
                "WHERE id = ? AND state = 'leased' AND lease_owner = ?",
                (expires, now, task_id, owner)).rowcount
            if not changed:
                raise _not_held(conn, task_id, owner, "extend its lease")
        return expires

    def expire_leases(self) -> list[str]:
        """Leases past their expiry count as a failed attempt; the ids of those tasks.

        They retry after the usual backoff, or go dead when no retries remain.
        """
        now = self._now_ms()
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT seq, id, attempts, retries, lease_owner FROM tasks "
                "WHERE state = 'leased' AND lease_expires_ms <= ? ORDER BY seq",
                (now,)).fetchall()
            for seq, _, attempts, retries, owner in rows:
                self._failed(conn, seq, attempts, retries,
                             f"lease of {owner!r} expired before it reported", now)
        return [row[1] for row in rows]

    def release(self, task_id: str, owner: str) -> None:
        """Give a leased task back unrun (a runner stopping): ready again, attempt not counted."""
        with self._db.transaction() as conn:
            changed = conn.execute(_RELEASE + " AND id = ?",
                                   (self._now_ms(), owner, task_id)).rowcount
            if not changed:
                raise _not_held(conn, task_id, owner, "release it")

    def release_all(self, owner: str) -> int:
        """Give back every lease ``owner`` holds (its previous run's); how many there were."""
        _check_owner(owner)
        with self._db.transaction() as conn:
            return conn.execute(_RELEASE, (self._now_ms(), owner)).rowcount

    def place(self, task_id: str, owner: str, placement: Placement) -> None:
        """Record where the lease holder sent a task to run (shown by ``igris task show``)."""
        text = canonical_json(placement.to_dict()).decode()
        with self._db.transaction() as conn:
            changed = conn.execute(
                "UPDATE tasks SET placement = ? WHERE id = ? AND state = 'leased' "
                "AND lease_owner = ?", (text, task_id, owner)).rowcount
            if not changed:
                raise _not_held(conn, task_id, owner, "place it")

    # ------------------------------------------------------------------ outcomes

    def complete(self, task_id: str, owner: str, result: Any = None) -> None:
        """Record ``owner``'s task as done with ``result`` (JSON); dependents may start.

        Refused, changing nothing, when ``owner`` no longer holds the lease.
        """
        text = _result_json(task_id, result)
        now = self._now_ms()
        with self._db.transaction() as conn:
            row = conn.execute(
                f"SELECT seq FROM tasks WHERE id = ? AND state IN ({_TO_DONE}) "
                "AND lease_owner = ?", (task_id, owner)).fetchone()
            if row is None:
                raise _not_held(conn, task_id, owner, "complete it")
            conn.execute(
                "UPDATE tasks SET state = 'done', result = ?, error = NULL, "
                "lease_expires_ms = NULL, updated_ms = ? WHERE seq = ?", (text, now, row[0]))
            # A dependent is ready once its last dependency is done.
            conn.execute(
                "UPDATE tasks SET waiting = waiting - 1, updated_ms = ?, state = CASE "
                "WHEN waiting = 1 AND state = 'pending' THEN 'ready' ELSE state END "
                "WHERE seq IN (SELECT task FROM task_deps WHERE dep = ?)", (now, row[0]))

    def fail(self, task_id: str, owner: str, error: str) -> str:
        """Record a failed attempt of ``owner``'s task; its new state (``failed`` or ``dead``).

        ``failed`` retries after the backoff; ``dead`` means no retries remain.
        """
        now = self._now_ms()
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT seq, attempts, retries FROM tasks "
                "WHERE id = ? AND state = 'leased' AND lease_owner = ?",
                (task_id, owner)).fetchone()
            if row is None:
                raise _not_held(conn, task_id, owner, "fail it")
            return self._failed(conn, *row, str(error), now)

    def cancel(self, task_id: str) -> list[str]:
        """Cancel an unfinished task and every task waiting on it; the ids cancelled."""
        now = self._now_ms()
        with self._db.transaction() as conn:
            row = conn.execute("SELECT seq, state FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
            if row is None:
                raise _no_task(task_id)
            try:
                check_transition(row[1], TaskState.CANCELLED)
            except TaskInvalid:
                raise TaskInvalid(f"task {task_id!r} is already {row[1]}; only unfinished "
                                  "tasks can be cancelled") from None
            return _end(conn, row[0], TaskState.CANCELLED, "cancelled by request", now)

    # ------------------------------------------------------------------ reading

    def get(self, task_id: str) -> Task:
        """The task with this id; :class:`TaskNotFound` if there is none."""
        row = self._db.conn.execute(_ROW + "WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise _no_task(task_id)
        return _task(row)

    def list(self, state: str | None = None, plan: int | None = None,
             limit: int = DEFAULT_LIST_LIMIT) -> list[Task]:
        """Tasks, newest first, optionally only those in ``state`` or of ``plan``."""
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(check_state(state))
        if plan is not None:
            # A plan's ids share the prefix "<plan>/" and "0" sorts right after "/":
            # a range on the id index, so no index of its own to keep up on every submit.
            where.append("id >= ? AND id < ?")
            params += [f"{plan}/", f"{plan}0"]
        sql = _ROW + (f"WHERE {' AND '.join(where)} " if where else "")
        rows = self._db.conn.execute(sql + "ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [_task(row) for row in rows]

    def has_open(self) -> bool:
        """Whether any task is not final yet: pending, ready, leased or failed."""
        return self._db.conn.execute(
            f"SELECT 1 FROM tasks WHERE state IN ({_OPEN}) LIMIT 1").fetchone() is not None

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state (every state listed, zeros included)."""
        counts = dict.fromkeys(TaskState.ALL, 0)
        counts.update(self._db.conn.execute("SELECT state, count(*) FROM tasks GROUP BY state"))
        return counts

    # ------------------------------------------------------------------ internals

    def _failed(self, conn: sqlite3.Connection, seq: int, attempts: int, retries: int,
                error: str, now: int) -> str:
        error = error[:MAX_ERROR_CHARS]
        if attempts > retries:
            _end(conn, seq, TaskState.DEAD, error, now)
            return TaskState.DEAD
        ceiling = min(self._backoff_cap_ms, self._backoff_base_ms * 2 ** (attempts - 1))
        conn.execute(
            "UPDATE tasks SET state = 'failed', error = ?, lease_expires_ms = NULL, "
            "not_before_ms = ?, updated_ms = ? WHERE seq = ?",
            (error, now + round(self._rand() * ceiling), now, seq))
        return TaskState.FAILED

    def _expire_deadlines(self, conn: sqlite3.Connection, now: int) -> None:
        # INDEXED BY: without ANALYZE figures SQLite picks tasks_state, which would scan
        # the whole backlog on every lease; the partial index holds only open deadlines.
        late = conn.execute(
            "SELECT seq FROM tasks INDEXED BY tasks_deadline WHERE deadline_ms IS NOT NULL "
            f"AND deadline_ms <= ? AND state IN ({_TO_DEAD_BY_DEADLINE})", (now,)).fetchall()
        for (seq,) in late:
            _end(conn, seq, TaskState.DEAD, "deadline passed before it started", now)


def _end(conn: sqlite3.Connection, seq: int, state: str, reason: str, now: int) -> list[str]:
    """Put a task in a final state and cancel everything waiting on it; the ids ended."""
    ended: list[str] = []
    todo = [(seq, state, reason)]
    while todo:
        seq, state, reason = todo.pop()
        row = conn.execute("SELECT id, state FROM tasks WHERE seq = ?", (seq,)).fetchone()
        if row is None or row[1] in TaskState.FINAL:
            continue
        check_transition(row[1], state)
        conn.execute(
            "UPDATE tasks SET state = ?, error = ?, lease_expires_ms = NULL, updated_ms = ? "
            "WHERE seq = ?", (state, reason, now, seq))
        ended.append(row[0])
        todo.extend((dependent, TaskState.CANCELLED, f"dependency {row[0]} {state}")
                    for (dependent,) in conn.execute(
                        "SELECT task FROM task_deps WHERE dep = ?", (seq,)))
    return ended


def _task(row: Iterable[Any]) -> Task:
    (task_id, plan, spec, state, attempts, submitted_ms, updated_ms, not_before_ms,
     deadline_ms, lease_owner, lease_expires_ms, result, error, placement) = row
    return Task(
        id=task_id, plan=plan, spec=TaskSpec.from_dict(json.loads(spec)), state=state,
        attempts=attempts, submitted_ms=submitted_ms, updated_ms=updated_ms,
        not_before_ms=not_before_ms, deadline_ms=deadline_ms, lease_owner=lease_owner,
        lease_expires_ms=lease_expires_ms,
        result=None if result is None else json.loads(result), error=error,
        placement=None if placement is None else Placement.from_dict(json.loads(placement)),
    )


def _check_owner(owner: object) -> None:
    if not isinstance(owner, str) or not owner:
        raise TaskInvalid(f"a lease owner must be a non-empty string, got {owner!r}")


def _lease_ms(lease_s: object) -> int:
    if (not isinstance(lease_s, (int, float)) or isinstance(lease_s, bool)
            or not 0 < lease_s <= 24 * 3600):
        raise TaskInvalid(f"lease_s must be a number of seconds (0 < lease_s <= 86400), "
                          f"got {lease_s!r}")
    return max(1, round(lease_s * 1000))


def _result_json(task_id: str, result: Any) -> str:
    try:
        text = canonical_json(result)
    except (TypeError, ValueError) as exc:
        raise TaskInvalid(f"task {task_id!r}: result must be plain JSON ({exc})") from None
    if len(text) > MAX_RESULT_BYTES:
        raise TaskInvalid(f"task {task_id!r}: result is {len(text)} bytes of JSON, over the "
                          f"{MAX_RESULT_BYTES}-byte limit; store large outputs in the memory "
                          "store and return their key")
    return text.decode()


def _no_task(task_id: str) -> TaskNotFound:
    return TaskNotFound(f"no task {task_id!r} in the queue (ids are '<plan>/<task id>'; "
                        "`igris task ls` lists them)")


def _not_held(conn: sqlite3.Connection, task_id: str, owner: str, what: str) -> Exception:
    row = conn.execute("SELECT state, lease_owner FROM tasks WHERE id = ?",
                       (task_id,)).fetchone()
    if row is None:
        return _no_task(task_id)
    state, holder = row
    now_held = f" by {holder!r}" if state == TaskState.LEASED else ""
    return TaskInvalid(f"task {task_id!r} is {state}{now_held}, not leased by {owner!r}, so "
                       f"{owner!r} cannot {what}: its lease expired or it was cancelled, and "
                       "its outcome is no longer this owner's to report")
