"""The orchestrator's parts of one agent (queue, kinds, scheduler, planner), put together.

Kept beside the runtime so ``runtime.py`` stays a list of parts: this
module knows how the task kinds reach the AI router, the memory store, the
health monitor and the command registry, which nodes placement sees, and
what the control socket's ``task.*`` and ``plan`` methods do. The planner
and its templates load on the first ``plan`` call (most devices never plan).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent.ai.backend import Backend
from agent.bus import ROLES_MUTATE, Bus, CommandServer
from agent.db import Database
from agent.errors import TaskInvalid
from agent.identity.certificate import Certificate
from agent.memory import MemoryStore
from agent.mesh import Membership, PolicySync
from agent.orchestrator.kinds import KindContext, builtin_kinds, plugin_kinds
from agent.orchestrator.models import Plan, TaskSpec
from agent.orchestrator.placement import NodeView, Thresholds
from agent.orchestrator.queue import DEFAULT_LIST_LIMIT, TaskQueue
from agent.orchestrator.scheduler import Scheduler


class Orchestration:
    """Queue, scheduler and planner of one agent; ``methods()`` for the control socket."""

    def __init__(self, *, db: Database, certificate: Certificate, membership: Membership,
                 policy: PolicySync, bus: Bus, commands: CommandServer, memory: MemoryStore,
                 infer: Callable[..., Awaitable[dict[str, Any]]],
                 sample: Callable[[], Awaitable[dict[str, Any]]],
                 health: Callable[[], dict[str, Any]], remote: Backend | None,
                 now_ms: Callable[[], int]):
        self.certificate = certificate
        self.device_id = certificate.subject
        self._membership = membership
        self._health = health
        self._remote = remote
        self._planner: Any = None
        self.queue = TaskQueue(db, now_ms=now_ms)
        context = KindContext(
            device_id=self.device_id, infer=infer, sample=sample, memory=memory,
            run_command=lambda name, args, role: commands.execute_local(name, args, by="task",
                                                                        role=role))
        dispatches = certificate.role in ROLES_MUTATE  # those task.run accepts
        self.scheduler = Scheduler(
            self.queue, builtin_kinds(context), device_id=self.device_id, nodes=self.nodes,
            thresholds=lambda: Thresholds.from_policy(policy.section("orchestration")),
            dispatch=bus.request_one if dispatches else None, now_ms=now_ms,
            plugins=lambda: plugin_kinds(context), concurrency=8 if dispatches else 2)

    def nodes(self) -> list[NodeView]:
        """This device, then every peer membership knows (placement filters the dead)."""
        me = NodeView.from_health(self.device_id, "alive", self._health(),
                                  groups=self.certificate.groups, caps=self.certificate.caps,
                                  local=True)
        return [me, *(NodeView.from_peer(peer) for peer in self._membership.peers())]

    def methods(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {"task.submit": self._submit, "task.list": self._list, "task.show": self._show,
                "task.cancel": self._cancel, "plan": self._plan}

    async def _submit(self, params: dict[str, Any]) -> dict[str, Any]:
        if "plan" in params:
            work: TaskSpec | Plan = Plan.from_dict(params["plan"])
        elif "task" in params:
            work = TaskSpec.from_dict(params["task"])
        else:
            raise TaskInvalid("task.submit takes a 'task' (a task spec) or a 'plan'")
        return {"ids": self.scheduler.submit(work)}

    async def _list(self, params: dict[str, Any]) -> dict[str, Any]:
        tasks = self.queue.list(params.get("state"), params.get("plan"),
                                int(params.get("limit", DEFAULT_LIST_LIMIT)))
        return {"tasks": [task.to_dict() for task in tasks], "counts": self.queue.counts()}

    async def _show(self, params: dict[str, Any]) -> dict[str, Any]:
        task = self.queue.get(str(params.get("id")))
        shown = task.to_dict()
        if task.state in ("pending", "ready", "failed"):  # where it would go now, and why
            shown["would_place"] = self.scheduler.decide(task.spec).to_dict()
        return shown

    async def _cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"cancelled": self.scheduler.cancel(str(params.get("id")))}

    async def _plan(self, params: dict[str, Any]) -> dict[str, Any]:
        plan = await self.planner().plan(str(params.get("goal", "")), params.get("params"),
                                         backend=str(params.get("backend", "auto")))
        ids = None if params.get("dry_run") else self.scheduler.submit(plan)
        return {"plan": plan.to_dict(), "ids": ids}

    def planner(self) -> Any:
        """The planner: the shipped templates, and the LLM when ``[ai]`` names a chat API."""
        if self._planner is None:
            from agent.ai.remote import RemoteChat
            from agent.orchestrator.planner import LlmPlanner, Planner
            from agent.orchestrator.templates import TemplateSet

            templates = TemplateSet.shipped()
            llm = (LlmPlanner(self._remote, templates)
                   if isinstance(self._remote, RemoteChat) else None)
            self._planner = Planner(templates, llm)
        return self._planner

    def stats(self) -> dict[str, Any]:
        return self.scheduler.stats()
