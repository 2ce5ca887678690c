"""Planners: an operator's goal in, a validated :class:`Plan` out.

Two ways to plan, one contract. :class:`TemplatePlanner` expands a named
template (``sensor-sweep group=kitchen``): no network, the same plan every
time. :class:`LlmPlanner` asks an OpenAI-compatible chat model for goals no
template covers. Either way the result goes through ``Plan.from_dict``,
and a plan that fails it is refused with every reason (:class:`PlanInvalid`),
never repaired behind the operator's back: a model that invents a task
kind or a cycle should be seen doing so. :class:`Planner` picks between
them the way ``igris plan`` does.

>>> planner = Planner(TemplateSet.shipped(), LlmPlanner(chat))   # doctest: +SKIP
>>> plan = await planner.plan("sensor-sweep group=kitchen")      # doctest: +SKIP
>>> plan = await planner.plan("check every kitchen board, then sample them")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from agent.ai.backend import Backend, InferenceError, InferRequest
from agent.errors import PlanInvalid, PlannerError
from agent.orchestrator.models import BUILTIN_KINDS, MAX_PLAN_TASKS, Plan
from agent.orchestrator.templates import Template, TemplateSet

log = logging.getLogger(__name__)

DEFAULT_MAX_TASKS = 32
"""Plans a model writes stay small enough for an operator to read before running them."""

BACKENDS = ("auto", "templates", "llm")
LLM_HOWTO = ('set [ai] remote_url, remote_kind = "chat" and remote_model in the agent config '
             "(docs/configuration.md)")

# A fence labelled json (or not labelled); the reply's first one is the plan.
_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\r?\n(.*?)```", re.DOTALL)
_KIND_HINTS = {
    "infer": "run a model through the AI router (local, a peer, or the remote API)",
    "sample": "read a device's sensors into a memory pool",
    "command": "run a command-bus command (e.g. health, status) on the chosen device",
    "action": "run a named action that the signed policy lists",
}


class TemplatePlanner:
    """Plans from templates: the goal's first word names one, ``name=value`` words follow.

    >>> planner = TemplatePlanner(TemplateSet.shipped())
    >>> [t.id for t in planner.plan("zone-survey group=kitchen gateway=pi-02").tasks]
    ['check.health', 'sweep.sample']
    """

    def __init__(self, templates: TemplateSet):
        self.templates = templates

    def names_template(self, goal: str) -> bool:
        """Whether ``goal`` starts with the name of one of the templates."""
        words = goal.split(maxsplit=1)
        return bool(words) and words[0] in self.templates

    def plan(self, goal: str, params: Mapping[str, Any] | None = None) -> Plan:
        """The plan the named template makes from the goal's and ``params``' values.

        Raises :class:`PlannerError` when no template has that name (with a
        suggestion) and :class:`PlanInvalid` listing every parameter problem.
        """
        words = _goal_words(goal)
        if words[0] not in self.templates:
            raise self.templates.unknown(words[0])
        name, given = words[0], _goal_params(words)
        problems = []
        for key, value in (params or {}).items():
            if key in given and given[key] != value:
                problems.append(f"param {key!r} is given twice: {given[key]!r} in the goal "
                                f"and {value!r} in params")
            given[key] = value
        if problems:
            raise PlanInvalid(problems)
        return Plan.from_dict(self.templates.expand(name, given, goal=goal.strip()))


class LlmPlanner:
    """Plans from a chat model (:class:`agent.ai.remote.RemoteChat`, or any text backend).

    The prompt gives the plan contract, the task kinds this fleet runs and
    the templates as examples; the reply's JSON object (bare, in a
    ```` ```json ```` fence, or amid prose) must pass ``Plan.from_dict``,
    use only ``kinds`` and hold at most ``max_tasks`` tasks. ``task`` is the
    request model the backend serves for text (``[ai] remote_serves``).

    >>> chat = RemoteChat("remote:openai", "https://api.openai.com", "gpt-4o-mini")
    ...                                                                  # doctest: +SKIP
    >>> plan = await LlmPlanner(chat, TemplateSet.shipped()).plan("sample the kitchen")
    ...                                                                  # doctest: +SKIP
    """

    def __init__(
        self,
        chat: Backend,
        templates: TemplateSet | None = None,
        *,
        max_tasks: int = DEFAULT_MAX_TASKS,
        kinds: Sequence[str] = BUILTIN_KINDS,
        task: str = "text",
        timeout_s: float = 30.0,
    ):
        if not 1 <= max_tasks <= MAX_PLAN_TASKS:
            raise ValueError(f"max_tasks must be 1..{MAX_PLAN_TASKS}, got {max_tasks!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if not kinds:
            raise ValueError("kinds must name at least one task kind, e.g. BUILTIN_KINDS")
        self.chat = chat
        self.templates = templates
        self.max_tasks = max_tasks
        self.kinds = tuple(kinds)
        self._task = task
        self._timeout_s = timeout_s

    @property
    def name(self) -> str:
        return self.chat.name

    def prompt(self, goal: str, params: Mapping[str, Any] | None = None) -> str:
        """The text sent to the model: the contract, the kinds, templates, then the goal."""
        kinds = "\n".join(f"- {kind}: {_KIND_HINTS.get(kind, 'an extension task kind')}"
                          for kind in self.kinds)
        parts = [
            "You plan work for Igris, an agent running on a fleet of Raspberry Pi and Jetson "
            "boards. Turn the operator's goal into a plan: a DAG of tasks the fleet's "
            "scheduler runs. Answer with exactly one JSON object and nothing else.",
            'The plan: {"goal": "<the goal, verbatim>", "tasks": [<task>, ...]} with 1 to '
            f"{self.max_tasks} tasks. A task (only these keys; all but id and kind optional):",
            '{"id": "fetch-1", "kind": "command", "args": {}, "after": ["<earlier task id>"], '
            '"constraints": {"device": "pi-02", "groups": ["kitchen"], "caps": ["tflite"], '
            '"min_battery_percent": 30, "max_celsius": 70, "max_cpu_percent": 80}, '
            '"priority": 5, "deadline_s": 120, "retries": 2, "timeout_s": 60}',
            "Rules: id is 1-64 of A-Z a-z 0-9 . _ - and unique in the plan; after names tasks "
            "of this plan that must finish first, and must not form a cycle; args is a JSON "
            "object of at most 16 KiB; priority 0..9 (higher runs first); retries 0..10; "
            "0 < timeout_s <= 3600; deadline_s is seconds after submission. Leave out "
            "constraints the goal does not ask for.",
            f"Task kinds (use no other):\n{kinds}",
        ]
        if self.templates is not None:
            parts.append("Plans operators already use, as examples of args ({name} marks a "
                         "parameter; write tasks out in full, a plan cannot refer to these):\n"
                         + "\n".join(_template_example(t) for t in self.templates))
        if params:
            parts.append("Parameters: " + json.dumps(dict(params), sort_keys=True, default=str))
        parts.append(f"Goal: {goal.strip()}")
        return "\n\n".join(parts)

    async def plan(self, goal: str, params: Mapping[str, Any] | None = None) -> Plan:
        """Ask the model; the plan if it is valid, else :class:`PlanInvalid` with the reasons.

        :class:`PlannerError` when the backend fails, times out
        (``timeout_s``) or answers with something other than text.
        """
        if not goal.strip():
            raise PlannerError("the goal is empty; describe what the fleet should do")
        request = InferRequest(self._task, text=self.prompt(goal, params),
                               deadline_ms=self._timeout_s * 1000)
        try:
            result = await self.chat.infer(request)
        except InferenceError as exc:
            raise PlannerError(f"planner backend {self.name!r} failed: {exc}") from exc
        if not isinstance(result.outputs, str):
            raise PlannerError(f"planner backend {self.name!r} answered without text "
                               f"({type(result.outputs).__name__})")
        try:
            return self._checked(result.outputs)
        except PlanInvalid as exc:
            log.warning("plan from %s refused: %s", self.name, "; ".join(exc.reasons))
            raise

    def _checked(self, reply: str) -> Plan:
        doc = _plan_object(reply, self.name)
        reasons = self._fleet_reasons(doc)
        try:
            plan = Plan.from_dict(doc)
        except PlanInvalid as exc:
            raise PlanInvalid([*exc.reasons, *reasons]) from None
        if reasons:
            raise PlanInvalid(reasons)
        return plan

    def _fleet_reasons(self, doc: Any) -> list[str]:
        """What ``Plan.from_dict`` allows but this planner does not: other kinds, more tasks."""
        tasks = doc.get("tasks") if isinstance(doc, dict) else None
        if not isinstance(tasks, list):
            return []
        reasons = [f"tasks[{i}] task {t.get('id')!r}: kind {t['kind']!r} is not one this "
                   f"planner may use; use {', '.join(self.kinds)}"
                   for i, t in enumerate(tasks)
                   if isinstance(t, dict) and isinstance(t.get("kind"), str)
                   and t["kind"] not in self.kinds]
        if len(tasks) > self.max_tasks:
            reasons.append(f"plan: {len(tasks)} tasks, over this planner's limit of "
                           f"{self.max_tasks}")
        return reasons


class Planner:
    """The planner ``igris plan`` uses: templates when the goal names one, else the model.

    ``backend`` forces one: ``"templates"`` or ``"llm"``; ``"auto"`` (the
    default) uses the template the goal's first word names, else the LLM
    planner if there is one, else raises :class:`PlannerError` saying how
    to configure one.
    """

    def __init__(self, templates: TemplateSet, llm: LlmPlanner | None = None):
        self.template_planner = TemplatePlanner(templates)
        self.llm = llm

    async def plan(self, goal: str, params: Mapping[str, Any] | None = None, *,
                   backend: str = "auto") -> Plan:
        if backend not in BACKENDS:
            raise PlannerError(f"unknown planner backend {backend!r}; use one of "
                               f"{', '.join(BACKENDS)}")
        by_template = self.template_planner
        if backend == "templates" or (backend == "auto" and by_template.names_template(goal)):
            return by_template.plan(goal, params)
        if self.llm is not None:
            return await self.llm.plan(goal, params)
        words = goal.split(maxsplit=1)
        if backend == "llm" or not words:
            raise PlannerError(f"no LLM planner is configured; {LLM_HOWTO}")
        unknown = by_template.templates.unknown(words[0])
        raise PlannerError(f"{unknown}. No LLM planner is configured for other goals; "
                           f"{LLM_HOWTO}")


def _goal_words(goal: str) -> list[str]:
    """The goal's words, quoted as in a shell (``note='two words'``)."""
    try:
        words = shlex.split(goal)
    except ValueError as exc:
        raise PlanInvalid([f"goal {goal!r}: {exc} (quote values like note='two words')"]
                          ) from None
    if not words:
        raise PlannerError("the goal is empty; name a template, e.g. 'sensor-sweep "
                           "group=kitchen'")
    return words


def _goal_params(words: list[str]) -> dict[str, Any]:
    """The ``name=value`` words after a template's name; :class:`PlanInvalid` for others."""
    given: dict[str, Any] = {}
    problems = []
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or not key:
            problems.append(f"goal word {word!r} is not name=value (after the template "
                            f"name {words[0]!r}, the goal holds only its params)")
        elif key in given:
            problems.append(f"param {key!r} is given twice in the goal")
        else:
            given[key] = value
    if problems:
        raise PlanInvalid(problems)
    return given


def _plan_object(reply: str, backend: str) -> Any:
    """The JSON object in ``reply``: its first ```json fence, else the first ``{`` on.

    Prose around the object is fine; the object itself is parsed as sent.
    """
    fence = _FENCE.search(reply)
    body = fence.group(1) if fence else reply
    start = body.find("{")
    try:
        if start < 0:
            raise ValueError("no '{' in the reply")
        doc, end = json.JSONDecoder().raw_decode(body, start)
        if fence and body[end:].strip():
            raise ValueError("text after the object inside the ``` fence")
    except ValueError as exc:
        raise PlanInvalid([f"{backend} did not answer with a JSON plan object ({exc}); "
                           f"reply began {reply[:120]!r}"]) from None
    return doc


def _template_example(template: Template) -> str:
    params = ", ".join(p.signature() for p in template.params)
    steps = json.dumps(list(template.steps), separators=(",", ":"))
    return f"- {template.name}({params}): {template.description}\n  steps: {steps}"
