"""Task kinds: what running a task of each kind does on the device it was placed on.

Four are built in: ``infer`` (a request through the AI router), ``sample``
(a health and sensor sample written into a memory pool), ``command`` (a
command of this device's command registry) and ``action`` (a named action
from the policy, through ``action.run``). Installed packages add kinds
through the ``igris.task_kinds`` entry point group: each entry point is
named after its kind and loads a factory ``factory(context) -> handler``.

The handlers get everything through :class:`KindContext`, which the runtime
fills with its parts; a handler takes the task's spec, returns its JSON
result and raises to fail the attempt.

>>> kinds = builtin_kinds(KindContext(device_id="pi-01", ...))     # doctest: +SKIP
>>> await kinds["sample"](TaskSpec("s1", "sample", {"pool": "env"}))  # doctest: +SKIP
{'pool': 'env', 'key': 'pi-01', 'status': 'healthy'}
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from agent.ai.backend import InferRequest
from agent.errors import TaskFailed, TaskInvalid
from agent.memory import MemoryStore
from agent.orchestrator.models import BUILTIN_KINDS, TaskSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "igris.task_kinds"

TASK_ROLE: ContextVar[str] = ContextVar("igris_task_role", default="operator")
"""The authority a running task has for the commands it runs: ``operator`` for the local
queue (filled through the control socket by the device's owner), the caller's role for a
task another scheduler sent (set by ``task.run``)."""

KindHandler = Callable[[TaskSpec], Awaitable[Any]]
"""Runs one task of its kind here; returns the JSON result, raises to fail the attempt."""


@dataclass(frozen=True, slots=True)
class KindContext:
    """What the built-in kinds use, handed over by the runtime."""

    device_id: str
    infer: Callable[[InferRequest], Awaitable[dict[str, Any]]]
    """Route one request (``AiService.infer``)."""
    sample: Callable[[], Awaitable[dict[str, Any]]]
    """A fresh health sample, as ``HealthReport.to_dict()`` (GPIO inputs included)."""
    memory: MemoryStore
    run_command: Callable[[str, dict[str, Any], str], Awaitable[dict[str, Any]]]
    """Run a registered command here with a role's authority; the reply ``{"ok", "result" |
    "error"}``."""


def _arg(spec: TaskSpec, name: str, kind: type | tuple[type, ...], *, required: bool = True,
         default: Any = None) -> Any:
    value = spec.args.get(name, default)
    if value is None and not required:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        what = " or ".join(k.__name__ for k in kinds)
        raise TaskInvalid(f"task {spec.id!r} ({spec.kind}): argument {name!r} must be {what}, "
                          f"got {value!r:.60}")
    return value


def _place(spec: TaskSpec, name: str) -> tuple[str, str] | None:
    """A ``{"pool", "key"}`` argument (where a document is read or written)."""
    where = _arg(spec, name, dict, required=False)
    if where is None:
        return None
    pool, key = where.get("pool"), where.get("key")
    if not (isinstance(pool, str) and isinstance(key, str)):
        raise TaskInvalid(f"task {spec.id!r}: argument {name!r} must be "
                          f'{{"pool": ..., "key": ...}}, got {where!r:.60}')
    return pool, key


def builtin_kinds(ctx: KindContext) -> dict[str, KindHandler]:
    """``infer``, ``sample``, ``command`` and ``action``."""

    async def infer(spec: TaskSpec) -> dict[str, Any]:
        inputs, text = spec.args.get("inputs"), _arg(spec, "text", str, required=False)
        source = _place(spec, "input")
        if source is not None:  # the input is a document of the memory store
            document = ctx.memory.get(*source)
            if document is None:
                raise TaskFailed(f"task {spec.id!r}: no document {source[1]!r} in pool "
                                 f"{source[0]!r} on {ctx.device_id}")
            value = document.value
            if isinstance(value, dict):
                inputs, text = value.get("inputs", inputs), value.get("text", text)
            elif isinstance(value, str):
                text = value
            else:
                inputs = value
        accuracy = _arg(spec, "min_accuracy", (int, float), required=False)
        result = await ctx.infer(InferRequest(
            _arg(spec, "model", str), inputs=inputs, text=text,
            min_accuracy=None if accuracy is None else float(accuracy)))
        target = _place(spec, "output")
        if target is not None:
            ctx.memory.put(*target, {"outputs": result.get("outputs"),
                                     "backend": result.get("backend"), "task": spec.id})
        return result

    async def sample(spec: TaskSpec) -> dict[str, Any]:
        pool = _arg(spec, "pool", str)
        key = _arg(spec, "prefix", str, default="") + ctx.device_id
        ttl_s = _arg(spec, "ttl_s", (int, float), required=False)
        health = await ctx.sample()
        ctx.memory.put(pool, key, health, ttl_s=ttl_s)
        return {"pool": pool, "key": key, "status": health.get("status")}

    async def command(spec: TaskSpec) -> Any:
        return await _run(spec, _arg(spec, "command", str),
                          _arg(spec, "args", dict, default={}))

    async def action(spec: TaskSpec) -> Any:
        return await _run(spec, "action.run", {"name": _arg(spec, "name", str)})

    async def _run(spec: TaskSpec, name: str, args: dict[str, Any]) -> Any:
        reply = await ctx.run_command(name, args, TASK_ROLE.get())
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise TaskFailed(f"{name} refused: {error.get('code')}: {error.get('message', '')}")
        return reply.get("result")

    return {"infer": infer, "sample": sample, "command": command, "action": action}


def plugin_kinds(ctx: KindContext, group: str = ENTRY_POINT_GROUP) -> dict[str, KindHandler]:
    """Kinds from installed packages; one that does not load is logged and left out, and
    none replaces a built-in kind.

    Called when a kind that is not built in first turns up, not at start:
    scanning the installed distributions costs time and (importlib.metadata)
    memory that a device running only the built-in kinds never needs.
    """
    from importlib.metadata import entry_points

    kinds: dict[str, KindHandler] = {}
    for point in entry_points(group=group):
        if point.name in BUILTIN_KINDS:
            log.error("task kind %r from %s ignored: the built-in kind keeps it", point.name,
                      point.value)
            continue
        try:
            handler = point.load()(ctx)
            if not callable(handler):
                raise TypeError(f"the factory returned {handler!r}, not a handler")
        except Exception as exc:  # a broken plugin must not stop the agent
            log.error("task kind %r from %s not loaded: %s", point.name, point.value, exc)
            continue
        kinds[point.name] = handler
    return kinds


