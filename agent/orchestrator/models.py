"""Tasks and plans as values: the shared JSON shape, validated once, and the task states.

A *task spec* says what to run and where it may run; a *plan* is a goal and
a DAG of task specs (``after`` names the tasks that must be done first). The
planner, ``igris task submit`` and the queue all read these through
:meth:`TaskSpec.from_dict` and :meth:`Plan.from_dict`, so a spec is checked
in one place, and a plan refused for every problem it has at once (an
operator fixing a generated plan should not meet its errors one by one).

A *stored task* (:class:`Task`) is a spec as the queue holds it: its state in
the machine below, attempts, lease and outcome.

>>> plan = Plan.from_dict({"goal": "resize", "tasks": [
...     {"id": "fetch", "kind": "command", "args": {"name": "fetch"}},
...     {"id": "resize", "kind": "infer", "after": ["fetch"]}]})
>>> [spec.id for spec in plan.order()]
['fetch', 'resize']
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.compat import canonical_json
from agent.errors import PlanInvalid, TaskInvalid
from agent.suggest import did_you_mean

MAX_ARGS_BYTES = 16 * 1024
"""Canonical JSON of a task's ``args``: arguments, not payloads (those go in memory)."""

MAX_PLAN_TASKS = 256
MAX_GOAL_CHARS = 512
MAX_PRIORITY = 9
MAX_RETRIES = 10
MAX_TIMEOUT_S = 3600
MAX_DEADLINE_S = 30 * 24 * 3600
"""A deadline is "not started after"; a month is far beyond any queue's patience."""

DEFAULT_PRIORITY = 5
DEFAULT_RETRIES = 2
DEFAULT_TIMEOUT_S = 60

BUILTIN_KINDS = ("infer", "sample", "command", "action")
"""Kinds the agent knows itself; others come from Python entry points."""

_TASK_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_KIND = re.compile(r"[a-z0-9_.-]{1,64}\Z")
_NAME = _TASK_ID
"""Device ids, groups and capabilities: one topic level each (see agent.wire.topics)."""


class TaskState:
    """The states of a stored task, and which changes between them are allowed.

    ``failed`` is an attempt that failed while retries remain: the task waits
    out its backoff there, then goes back to ``ready``. ``dead`` is the dead
    letter (retries exhausted, or the deadline passed before it started).
    A leased task goes back to ``ready`` when its runner releases it unrun.
    """

    PENDING = "pending"
    READY = "ready"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    ALL = (PENDING, READY, LEASED, DONE, FAILED, DEAD, CANCELLED)
    FINAL = (DONE, DEAD, CANCELLED)
    TRANSITIONS: Mapping[str, tuple[str, ...]] = {
        PENDING: (READY, DEAD, CANCELLED),
        READY: (LEASED, DEAD, CANCELLED),
        LEASED: (DONE, FAILED, DEAD, READY, CANCELLED),
        FAILED: (READY, DEAD, CANCELLED),
        DONE: (),
        DEAD: (),
        CANCELLED: (),
    }


def check_state(state: str) -> str:
    """Return ``state`` if it is a task state, else raise :class:`TaskInvalid`."""
    if state not in TaskState.ALL:
        raise TaskInvalid(
            f"unknown task state {state!r}"
            + did_you_mean(str(state), TaskState.ALL)
            + f"; states are {', '.join(TaskState.ALL)}"
        )
    return state


def check_transition(old: str, new: str) -> None:
    """Raise :class:`TaskInvalid` unless a task may go from ``old`` to ``new``."""
    check_state(old)
    check_state(new)
    if new not in TaskState.TRANSITIONS[old]:
        allowed = ", ".join(TaskState.TRANSITIONS[old]) or "nothing (it is final)"
        raise TaskInvalid(f"a {old!r} task cannot become {new!r}; from {old!r} it may become "
                          f"{allowed}")


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_problem(name: str, value: object, low: float, high: float, *,
                   integer: bool = False, low_open: bool = False) -> str | None:
    ok_type = _is_int(value) if integer else _is_number(value)
    if ok_type:
        assert isinstance(value, (int, float))
        above_low = value > low if low_open else value >= low
        if above_low and value <= high:
            return None
    what = "an integer" if integer else "a number"
    bounds = f"{low} < {name} <= {high}" if low_open else f"{low}..{high}"
    return f"{name} must be {what} ({bounds}), got {value!r}"


def _names_problems(name: str, values: object, pattern: re.Pattern[str]) -> list[str]:
    if not isinstance(values, (list, tuple)):
        return [f"{name} must be a list of names, got {values!r}"]
    problems = [f"{name} entry {v!r} must be 1-64 letters, digits, '.', '_' or '-'"
                for v in values if not isinstance(v, str) or not pattern.match(v)]
    duplicates = sorted({v for v in values if isinstance(v, str) and values.count(v) > 1})
    if duplicates:
        problems.append(f"{name} repeats {', '.join(map(repr, duplicates))}")
    return problems


def _unknown_keys(d: Mapping[str, Any], known: Iterable[str], where: str) -> list[str]:
    known = tuple(known)
    problems = []
    for key in d:
        if key not in known:
            problems.append(f"{where}unknown key {key!r}"
                            + did_you_mean(str(key), known)
                            + f"; keys are {', '.join(known)}")
    return problems


def _object_problem(name: str, value: object) -> str | None:
    if isinstance(value, Mapping):
        return None
    return f"{name} must be a JSON object, got {type(value).__name__} {value!r:.60}"


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where a task may run; every field optional. Thresholds override the policy's.

    >>> Constraints(groups=("kitchen",), max_celsius=70).to_dict()
    {'groups': ['kitchen'], 'max_celsius': 70}
    """

    device: str | None = None
    groups: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    min_battery_percent: float | None = None
    max_celsius: float | None = None
    max_cpu_percent: float | None = None

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise TaskInvalid("constraints: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        if self.device is not None and not (isinstance(self.device, str)
                                            and _NAME.match(self.device)):
            problems.append(f"device must be a device id (1-64 letters, digits, '.', '_' or "
                            f"'-'), got {self.device!r}")
        problems += _names_problems("groups", self.groups, _NAME)
        problems += _names_problems("caps", self.caps, _NAME)
        for name, low, high in (("min_battery_percent", 0, 100), ("max_celsius", -50, 150),
                                ("max_cpu_percent", 0, 100)):
            value = getattr(self, name)
            if value is not None:
                problem = _range_problem(name, value, low, high)
                if problem:
                    problems.append(problem)
        return problems

    @classmethod
    def _read(cls, d: object, problems: list[str]) -> Constraints | None:
        problem = _object_problem("constraints", d)
        if problem:
            problems.append(problem)
            return None
        assert isinstance(d, Mapping)
        found = _unknown_keys(d, _CONSTRAINT_KEYS, "constraints: ")
        if found:
            problems += found
            return None
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except TaskInvalid as exc:
            problems.append(str(exc))
            return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape, leaving out fields that are not set."""
        out: dict[str, Any] = {}
        for key in _CONSTRAINT_KEYS:
            value = getattr(self, key)
            if value is not None and value != ():
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


_CONSTRAINT_KEYS = ("device", "groups", "caps", "min_battery_percent", "max_celsius",
                    "max_cpu_percent")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of a plan: what to run (``kind``, ``args``), when, where and how hard to try.

    Built from JSON with :meth:`from_dict`; constructing one directly checks the
    same rules, so no invalid spec exists.

    >>> TaskSpec.from_dict({"id": "t1", "kind": "infer", "priority": 7}).priority
    7
    """

    id: str
    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    constraints: Constraints = field(default_factory=Constraints)
    priority: int = DEFAULT_PRIORITY
    deadline_s: float | None = None
    retries: int = DEFAULT_RETRIES
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        problems = _spec_problems({name: getattr(self, name) for name in _SPEC_KEYS})
        if problems:
            raise TaskInvalid(_task_message(self.id, problems))

    @classmethod
    def from_dict(cls, d: object) -> TaskSpec:
        """Read a task spec from its JSON shape; :class:`TaskInvalid` lists every problem."""
        spec, problems = _read_spec(d)
        if spec is None:
            raise TaskInvalid(_task_message(_id_of(d), problems))
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: every field, except unset ``deadline_s`` and empty constraints."""
        out: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "args": dict(self.args),
            "after": list(self.after), "priority": self.priority, "retries": self.retries,
            "timeout_s": self.timeout_s,
        }
        constraints = self.constraints.to_dict()
        if constraints:
            out["constraints"] = constraints
        if self.deadline_s is not None:
            out["deadline_s"] = self.deadline_s
        return out


_SPEC_KEYS = ("id", "kind", "args", "after", "constraints", "priority", "deadline_s",
              "retries", "timeout_s")


def _args_problems(args: object) -> list[str]:
    problem = _object_problem("args", args)
    if problem:
        return [problem]
    try:
        size = len(canonical_json(args))
    except (TypeError, ValueError) as exc:
        return [f"args must be plain JSON ({exc})"]
    if size > MAX_ARGS_BYTES:
        return [f"args are {size} bytes of JSON, over the {MAX_ARGS_BYTES}-byte limit; put "
                f"large inputs in the memory store and pass their key"]
    return []


def _id_of(d: object) -> object:
    return d.get("id") if isinstance(d, Mapping) else None


def _task_message(task_id: object, problems: list[str]) -> str:
    where = f"task {task_id!r}" if isinstance(task_id, str) else "task"
    return f"{where}: " + "; ".join(problems)


def _read_spec(d: object) -> tuple[TaskSpec | None, list[str]]:
    """The spec in ``d``, or None and every problem found (not just the first)."""
    problem = _object_problem("a task", d)
    if problem:
        return None, [problem]
    assert isinstance(d, Mapping)
    problems = _unknown_keys(d, _SPEC_KEYS, "")
    fields = {k: v for k, v in d.items() if k in _SPEC_KEYS}
    if "constraints" in fields:
        constraints = Constraints._read(fields.pop("constraints"), problems)
        if constraints is not None:
            fields["constraints"] = constraints
    if isinstance(fields.get("after"), list):
        fields["after"] = tuple(fields["after"])
    if problems or not {"id", "kind"} <= fields.keys():
        return None, problems + _spec_problems(fields)
    try:
        return TaskSpec(**fields), []  # checks the fields once on the way in
    except TaskInvalid:
        return None, _spec_problems(fields)  # every problem, as a list


def _spec_problems(fields: Mapping[str, Any]) -> list[str]:
    """Every problem of a spec with these fields (missing ones take their defaults)."""
    def get(name: str) -> Any:
        return fields.get(name, _SPEC_DEFAULTS.get(name))

    problems = [f"{key!r} is required" for key in ("id", "kind") if key not in fields]
    task_id, kind, after = get("id"), get("kind"), get("after")
    if "id" in fields and (not isinstance(task_id, str) or not _TASK_ID.match(task_id)):
        problems.append(f"id must be 1-64 letters, digits, '.', '_' or '-', got {task_id!r}")
    if "kind" in fields and (not isinstance(kind, str) or not _KIND.match(kind)):
        problems.append(f"kind must be one of {', '.join(BUILTIN_KINDS)} or an entry-point "
                        f"kind name (1-64 of a-z, 0-9, '.', '_', '-'), got {kind!r}")
    problems += _args_problems(get("args"))
    problems += _names_problems("after", after, _TASK_ID)
    if isinstance(task_id, str) and isinstance(after, (list, tuple)) and task_id in after:
        problems.append(f"after names the task itself ({task_id!r})")
    if not isinstance(get("constraints"), Constraints):
        problems.append(f"constraints must be Constraints, got {get('constraints')!r}")
    deadline_s = get("deadline_s")
    for problem in (
        _range_problem("priority", get("priority"), 0, MAX_PRIORITY, integer=True),
        None if deadline_s is None else
        _range_problem("deadline_s", deadline_s, 0, MAX_DEADLINE_S, low_open=True),
        _range_problem("retries", get("retries"), 0, MAX_RETRIES, integer=True),
        _range_problem("timeout_s", get("timeout_s"), 0, MAX_TIMEOUT_S, low_open=True),
    ):
        if problem:
            problems.append(problem)
    return problems


_SPEC_DEFAULTS: dict[str, Any] = {
    "args": {}, "after": (), "constraints": Constraints(), "priority": DEFAULT_PRIORITY,
    "deadline_s": None, "retries": DEFAULT_RETRIES, "timeout_s": DEFAULT_TIMEOUT_S,
}
"""What a spec's optional keys default to (the dataclass's defaults, as data for checks)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A goal and the DAG of tasks that reaches it; constructing one checks the graph.

    >>> Plan("one", (TaskSpec("a", "infer"),)).to_dict()["goal"]
    'one'
    """

    goal: str
    tasks: tuple[TaskSpec, ...]

    def __post_init__(self) -> None:
        problems = _plan_problems(self.goal, self.tasks)
        if problems:
            raise PlanInvalid(problems)

    @classmethod
    def from_dict(cls, d: object) -> Plan:
        """Read a plan from its JSON shape; :class:`PlanInvalid` carries every problem.

        Each task's problems come first (one reason per task), then the plan's:
        task count, repeated ids, ``after`` naming no task of the plan, cycles.
        """
        problem = _object_problem("a plan", d)
        if problem:
            raise PlanInvalid([problem])
        assert isinstance(d, Mapping)
        reasons = _unknown_keys(d, ("goal", "tasks"), "plan: ")
        if "goal" not in d:
            reasons.append("plan: 'goal' is required")
        raw_tasks = d.get("tasks")
        if not isinstance(raw_tasks, list):
            raise PlanInvalid([*reasons, f"plan: tasks must be a list of task objects, got "
                                         f"{raw_tasks!r:.60}"])
        specs = []
        for index, raw in enumerate(raw_tasks):
            spec, problems = _read_spec(raw)
            if spec is None:
                reasons.append(f"tasks[{index}] " + _task_message(_id_of(raw), problems))
            else:
                specs.append(spec)
        # The graph is checked over the tasks that read well; a bad task's id still counts
        # as present, so its dependents are not also blamed for naming it.
        present = {_id_of(raw) for raw in raw_tasks}
        reasons += _plan_problems(d.get("goal", ""), specs, len(raw_tasks), present)
        if reasons:
            raise PlanInvalid(reasons)
        return cls(d["goal"], tuple(specs))

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal, "tasks": [spec.to_dict() for spec in self.tasks]}

    def order(self) -> tuple[TaskSpec, ...]:
        """The tasks in an order where each comes after everything it waits for.

        Among tasks free at the same time, the plan's own order is kept.
        """
        ordered, _ = _topological(self.tasks)
        return ordered


def _plan_problems(goal: object, tasks: Iterable[TaskSpec], count: int | None = None,
                   present: set[object] | None = None) -> list[str]:
    tasks = tuple(tasks)
    count = len(tasks) if count is None else count
    present = {spec.id for spec in tasks} if present is None else present
    problems = []
    if not isinstance(goal, str) or len(goal) > MAX_GOAL_CHARS:
        problems.append(f"plan: goal must be text of at most {MAX_GOAL_CHARS} characters, "
                        f"got {goal!r:.80}")
    if not 1 <= count <= MAX_PLAN_TASKS:
        problems.append(f"plan: must hold 1..{MAX_PLAN_TASKS} tasks, got {count}; split a "
                        f"larger goal into several plans")
    seen: set[str] = set()
    for spec in tasks:
        if spec.id in seen:
            problems.append(f"plan: task id {spec.id!r} is used more than once")
        seen.add(spec.id)
        for dep in spec.after:
            if dep not in present:
                ids = sorted(i for i in present if isinstance(i, str))
                problems.append(f"task {spec.id!r}: after names {dep!r}, not a task of this plan"
                                + did_you_mean(dep, ids))
    _, cycles = _topological(tasks)
    problems += [f"plan: cycle {' -> '.join(cycle)} (each waits on the next)"
                 for cycle in cycles]
    return problems


def _topological(tasks: tuple[TaskSpec, ...]) -> tuple[tuple[TaskSpec, ...], list[list[str]]]:
    """Kahn's order over ``tasks``, and each cycle left over, named from its smallest id."""
    by_id = {spec.id: spec for spec in tasks}
    waiting = {spec.id: {d for d in spec.after if d in by_id} for spec in tasks}
    dependents: dict[str, list[str]] = {task_id: [] for task_id in by_id}
    for task_id, deps in waiting.items():
        for dep in deps:
            dependents[dep].append(task_id)
    ordered: list[TaskSpec] = []
    free = [spec.id for spec in tasks if not waiting[spec.id]]
    while free:
        task_id = free.pop(0)
        ordered.append(by_id[task_id])
        for dependent in dependents[task_id]:
            waiting[dependent].discard(task_id)
            if not waiting[dependent]:
                free.append(dependent)
    stuck = {task_id for task_id, deps in waiting.items() if deps}
    cycles = []
    while stuck:
        # Every stuck task waits on a stuck task, so walking back from one meets a cycle.
        path = [min(stuck)]
        while path[-1] not in path[:-1]:
            path.append(min(waiting[path[-1]] & stuck))
        cycle = path[path.index(path[-1]):]
        cycles.append(cycle)
        stuck -= _downstream(set(cycle), dependents)
    return tuple(ordered), cycles


def _downstream(roots: set[str], dependents: Mapping[str, list[str]]) -> set[str]:
    seen = set(roots)
    todo = list(roots)
    while todo:
        for dependent in dependents[todo.pop()]:
            if dependent not in seen:
                seen.add(dependent)
                todo.append(dependent)
    return seen


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the scheduler put a task, with the score and why (shown by ``igris task show``)."""

    device: str
    score: float
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "score": self.score, "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Placement:
        return cls(d["device"], d["score"], tuple(d.get("reasons", ())))


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the queue holds it: its spec, where it is in its life, and its outcome.

    ``id`` is ``<plan>/<spec id>``. Times are wall milliseconds; ``not_before_ms``
    is when a failed task's backoff ends. ``error`` is the last failure, or why it
    was cancelled or went dead.
    """

    id: str
    plan: int
    spec: TaskSpec
    state: str
    attempts: int
    submitted_ms: int
    updated_ms: int
    not_before_ms: int
    deadline_ms: int | None = None
    lease_owner: str | None = None
    lease_expires_ms: int | None = None
    result: Any = None
    error: str | None = None
    placement: Placement | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``igris task show --json`` and the control socket."""
        return {
            "id": self.id, "plan": self.plan, "spec": self.spec.to_dict(), "state": self.state,
            "attempts": self.attempts, "submitted_ms": self.submitted_ms,
            "updated_ms": self.updated_ms, "not_before_ms": self.not_before_ms,
            "deadline_ms": self.deadline_ms, "lease_owner": self.lease_owner,
            "lease_expires_ms": self.lease_expires_ms, "result": self.result,
            "error": self.error,
            "placement": self.placement.to_dict() if self.placement else None,
        }
