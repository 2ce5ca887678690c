"""Plan templates: named, declarative recipes that expand into a plan.

Operators ask for the same few jobs again and again ("sample the kitchen
sensors", "check pi-02's health"). A template writes such a job down once,
as data, so a goal like ``sensor-sweep group=kitchen`` becomes a plan
without a model in the loop. A templates file (``ai_assistant_config/
plans.json`` ships the defaults) is::

    {"version": 1,
     "templates": {
       "health-check": {
         "description": "run the health command on one device",
         "params": {"device": {"type": "str", "description": "device id"},
                    "priority": {"type": "int", "default": 7}},
         "steps": [
           {"id": "health", "kind": "command", "args": {"command": "health"},
            "constraints": {"device": "{device}"}, "priority": "{priority}"}]},
       "device-survey": {
         "description": "health first, then a sensor sweep",
         "params": {"device": {"type": "str"}},
         "steps": [
           {"id": "check", "use": "health-check", "with": {"device": "{device}"}},
           {"id": "sweep", "use": "sensor-sweep", "with": {"group": "lab"},
            "after": ["check"]}]}}}

- A parameter has a ``type`` (``str``, ``int``, ``number``, ``bool``), an
  optional ``description`` and an optional ``default``; without a default
  it is required. Strings given for ``int``, ``number`` and ``bool``
  parameters are parsed (a goal line holds only text).
- A *task step* is a task spec of the plan contract. Any string value in it
  may hold ``{param}`` placeholders (``{{`` and ``}}`` are literal braces):
  a string that is exactly one placeholder becomes the parameter's value
  with its type (``"{count}"`` -> ``3``); otherwise the value is written
  into the text (``"{group}/temp"`` -> ``"kitchen/temp"``). ``id`` and
  ``after`` are literal.
- A *composite step* (``id``, ``use``, ``with``, ``after``) expands into
  the used template's steps, their ids prefixed ``<step id>.``, their own
  ``after`` links kept. The composite's ``after`` applies to the sub-plan's
  roots, and a step after the composite waits for the sub-plan's leaves.
- ``after`` names earlier steps of the same template (steps are listed in
  order), so a template alone cannot hold a cycle. Templates may not use
  each other in a cycle, nest more than :data:`MAX_DEPTH` levels, or
  expand to more tasks than a plan may hold: a file that does is refused
  whole when it loads (:class:`ConfigInvalid` naming the file, template and
  step), never when an operator is waiting for a plan.

>>> templates = TemplateSet.shipped()
>>> templates.expand("health-check", {"device": "pi-02"})["tasks"][0]["constraints"]
{'device': 'pi-02'}
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from agent.errors import ConfigInvalid, PlanInvalid, PlannerError
from agent.orchestrator.models import MAX_PLAN_TASKS
from agent.suggest import did_you_mean

MAX_DEPTH = 8
"""How many levels of templates may nest (a template using none is one level)."""

FORMAT_VERSION = 1
PARAM_TYPES = ("str", "int", "number", "bool")
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
_COMPOSITE_KEYS = ("id", "use", "with", "after")
_LITERAL_KEYS = ("id", "after")
_BOOL_WORDS = {"true": True, "false": False}


@dataclass(frozen=True, slots=True)
class Param:
    """One template parameter: its type, and its default unless it is required."""

    name: str
    type: str
    required: bool = True
    default: Any = None
    description: str = ""

    @classmethod
    def from_dict(cls, name: str, doc: Any, where: str) -> Param:
        if not _PARAM_NAME.match(name):
            raise ConfigInvalid(f"{where}: param name {name!r} must be a letter or '_' "
                                "then letters, digits or '_'")
        if not isinstance(doc, dict):
            raise ConfigInvalid(f"{where}: param {name!r} must be an object like "
                                '{"type": "str", "default": "env"}')
        _refuse_unknown(doc, ("type", "default", "description"), f"{where}: param {name!r}")
        kind = doc.get("type")
        if kind not in PARAM_TYPES:
            raise ConfigInvalid(f"{where}: param {name!r} has type {kind!r}; "
                                f"use one of {', '.join(PARAM_TYPES)}")
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise ConfigInvalid(f"{where}: param {name!r}: description must be a string")
        param = cls(name, kind, "default" not in doc, None, description)
        if "default" in doc:
            default, problem = param.coerce(doc["default"])
            if problem:
                raise ConfigInvalid(f"{where}: param {name!r}: default {problem}")
            param = cls(name, kind, False, default, description)
        return param

    def coerce(self, value: Any) -> tuple[Any, str | None]:
        """``value`` as this parameter's type, or a problem saying what was expected.

        Text is parsed for numbers and booleans because goals and the CLI
        only carry text; any other value must already have the type.
        """
        if self.type == "str":
            return (value, None) if isinstance(value, str) else (None, self._wanted(value))
        if self.type == "bool":
            if isinstance(value, str) and value.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.lower()], None
            return (value, None) if isinstance(value, bool) else (None, self._wanted(value))
        if isinstance(value, str):
            value = _parse_number(value.strip())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, self._wanted(value)
        if self.type == "int":
            return (value, None) if isinstance(value, int) else (None, self._wanted(value))
        return (value, None) if math.isfinite(value) else (None, self._wanted(value))

    def _wanted(self, value: Any) -> str:
        article = "an" if self.type == "int" else "a"
        return f"must be {article} {self.type}, got {value!r:.60}"

    def signature(self) -> str:
        """``name: type`` or ``name: type = default``, as prompts and listings show it."""
        return (f"{self.name}: {self.type}" if self.required
                else f"{self.name}: {self.type} = {json.dumps(self.default)}")


@dataclass(frozen=True, slots=True)
class Template:
    """One recipe: its parameters and its steps (task specs or composite steps)."""

    name: str
    description: str
    params: tuple[Param, ...]
    steps: tuple[dict[str, Any], ...]

    @classmethod
    def from_dict(cls, name: str, doc: Any, source: str) -> Template:
        """Check one template on its own; :class:`TemplateSet` checks the links between them."""
        where = f"{source}: template {name!r}"
        if not isinstance(name, str) or not TEMPLATE_NAME.match(name):
            raise ConfigInvalid(f"{where}: a template name is 1-64 of [a-z0-9_.-], "
                                "starting with a letter or digit")
        if not isinstance(doc, dict):
            raise ConfigInvalid(f"{where} must be an object with description, params, steps")
        _refuse_unknown(doc, ("description", "params", "steps"), where)
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise ConfigInvalid(f"{where}: description must be a string")
        raw_params = doc.get("params", {})
        if not isinstance(raw_params, dict):
            raise ConfigInvalid(f"{where}: params must be an object of name -> param")
        params = tuple(Param.from_dict(p, spec, where) for p, spec in raw_params.items())
        steps = doc.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ConfigInvalid(f"{where}: steps must be a non-empty list")
        names = {p.name for p in params}
        seen: set[str] = set()
        for index, step in enumerate(steps):
            _check_step(step, index, seen, names, where)
        return cls(name, description, params, tuple(copy.deepcopy(steps)))

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def bind(self, given: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
        """Every parameter's value (given, parsed, or default) and the problems found."""
        values: dict[str, Any] = {}
        problems = []
        for name in given:
            if self.param(name) is None:
                known = ", ".join(p.name for p in self.params) or "none"
                problems.append(f"{where}: no param {name!r}"
                                + did_you_mean(name, [p.name for p in self.params])
                                + f"; its params: {known}")
        for param in self.params:
            if param.name not in given:
                if param.required:
                    problems.append(f"{where}: param {param.name!r} ({param.type}) is required")
                else:
                    values[param.name] = param.default
                continue
            value, problem = param.coerce(given[param.name])
            if problem:
                problems.append(f"{where}: param {param.name!r} {problem}")
            else:
                values[param.name] = value
        return values, problems

    def uses(self) -> list[str]:
        """The templates this one's composite steps use, in step order."""
        return [step["use"] for step in self.steps if "use" in step]


class TemplateSet:
    """The templates a planner may expand, checked together when they load.

    >>> templates = TemplateSet.load("my-plans.json")                # doctest: +SKIP
    >>> plan_doc = templates.expand("sensor-sweep", {"group": "kitchen"})  # doctest: +SKIP
    """

    def __init__(self, templates: Iterable[Template], source: str = "templates"):
        self._templates: dict[str, Template] = {}
        for template in templates:
            if template.name in self._templates:
                raise ConfigInvalid(f"{source}: template {template.name!r} is defined twice")
            self._templates[template.name] = template
        self._check_links(source)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "templates") -> TemplateSet:
        if not isinstance(doc, dict):
            raise ConfigInvalid(f"{source}: expected an object with version and templates")
        _refuse_unknown(doc, ("version", "description", "templates"), source)
        if doc.get("version") != FORMAT_VERSION:
            raise ConfigInvalid(f"{source}: version is {doc.get('version')!r}; this Igris "
                                f"reads templates format {FORMAT_VERSION}")
        raw = doc.get("templates")
        if not isinstance(raw, dict):
            raise ConfigInvalid(f"{source}: templates must be an object of name -> template")
        return cls((Template.from_dict(name, spec, source) for name, spec in raw.items()),
                   source)

    @classmethod
    def load(cls, path: str | Path) -> TemplateSet:
        """A templates file an operator wrote (JSON)."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigInvalid(f"{path}: cannot read the templates file: "
                                f"{exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigInvalid(f"{path}: not a JSON templates file: {exc}") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def shipped(cls) -> TemplateSet:
        """The default templates that ship in the wheel (``ai_assistant_config/plans.json``)."""
        try:
            text = files("agent.policy_default").joinpath("plans.json").read_text("utf-8")
        except ModuleNotFoundError:
            # setuptools maps ai_assistant_config/ to agent.policy_default only when
            # installing; in an uninstalled source checkout it sits beside agent/.
            path = Path(__file__).resolve().parents[2] / "ai_assistant_config" / "plans.json"
            text = path.read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text), "plans.json (shipped)")

    def names(self) -> list[str]:
        return sorted(self._templates)

    def __contains__(self, name: object) -> bool:
        return name in self._templates

    def __iter__(self) -> Iterator[Template]:
        return iter(self._templates[name] for name in self.names())

    def get(self, name: str) -> Template:
        """The template called ``name``; :class:`PlannerError` with a suggestion if none is."""
        try:
            return self._templates[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: str) -> PlannerError:
        """The error for a goal naming no template: the closest name, and every name."""
        return PlannerError(
            f"no plan template {name!r}" + did_you_mean(name, self._templates)
            + f"; templates: {', '.join(self.names()) or 'none'}")

    def expand(self, name: str, params: Mapping[str, Any], *, goal: str | None = None
               ) -> dict[str, Any]:
        """The plan document (``{"goal", "tasks"}``) that template ``name`` makes from ``params``.

        Raises :class:`PlannerError` for an unknown template and
        :class:`PlanInvalid` with every parameter problem. The document
        still has to pass ``Plan.from_dict``, which checks the task specs.
        """
        template = self.get(name)
        values, problems = template.bind(params, f"template {name!r}")
        tasks: list[dict[str, Any]] = []
        if not problems:
            tasks, _ = self._expand(template, values, "", problems)
        if problems:
            raise PlanInvalid(problems)
        return {"goal": goal if goal is not None else name, "tasks": tasks}

    def _expand(self, template: Template, values: Mapping[str, Any], prefix: str,
                problems: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
        """The tasks of ``template`` with ids under ``prefix``, and the ids of its leaves."""
        tasks: list[dict[str, Any]] = []
        exits: dict[str, list[str]] = {}  # step id -> the task ids a later step waits for
        for step in template.steps:
            waits = [task_id for before in step.get("after", []) for task_id in exits[before]]
            step_id = prefix + step["id"]
            if "use" not in step:
                task = {key: (value if key in _LITERAL_KEYS else _render(value, values))
                        for key, value in step.items()}
                task.update(id=step_id, after=waits)
                tasks.append(task)
                exits[step["id"]] = [step_id]
                continue
            used = self._templates[step["use"]]
            given = {k: _render(v, values) for k, v in step.get("with", {}).items()}
            where = f"step {step_id!r} (template {used.name!r})"
            sub_values, sub_problems = used.bind(given, where)
            problems.extend(sub_problems)
            if sub_problems:
                exits[step["id"]] = []
                continue
            sub_tasks, leaves = self._expand(used, sub_values, step_id + ".", problems)
            for task in sub_tasks:
                if not task["after"]:
                    task["after"] = list(waits)
            tasks.extend(sub_tasks)
            exits[step["id"]] = leaves
        waited_on = {before for task in tasks for before in task["after"]}
        return tasks, [task["id"] for task in tasks if task["id"] not in waited_on]

    def _check_links(self, source: str) -> None:
        """Refuse unknown templates and parameters in composite steps, cycles, depth, size."""
        for template in self._templates.values():
            for step in template.steps:
                if "use" in step:
                    self._check_use(template, step, source)
        depth: dict[str, int] = {}
        size: dict[str, int] = {}
        for name in self._templates:
            self._measure(name, [], depth, size, source)

    def _check_use(self, template: Template, step: dict[str, Any], source: str) -> None:
        where = f"{source}: template {template.name!r} step {step['id']!r}"
        used = self._templates.get(step["use"])
        if used is None:
            raise ConfigInvalid(f"{where} uses unknown template {step['use']!r}"
                                + did_you_mean(step["use"], self._templates))
        given = step.get("with", {})
        for name in given:
            if used.param(name) is None:
                raise ConfigInvalid(f"{where}: template {used.name!r} has no param {name!r}"
                                    + did_you_mean(name, [p.name for p in used.params]))
        missing = [p.name for p in used.params if p.required and p.name not in given]
        if missing:
            raise ConfigInvalid(f"{where}: 'with' lacks required param(s) "
                                f"{', '.join(missing)} of template {used.name!r}")

    def _measure(self, name: str, path: list[str], depth: dict[str, int],
                 size: dict[str, int], source: str) -> None:
        """Fill ``depth`` and ``size`` for ``name`` (depth first), refusing cycles and excess."""
        if name in depth:
            return
        if name in path:
            cycle = " -> ".join([*path[path.index(name):], name])
            raise ConfigInvalid(f"{source}: templates use each other in a cycle: {cycle}")
        template = self._templates[name]
        for used in template.uses():
            self._measure(used, [*path, name], depth, size, source)
        depth[name] = 1 + max((depth[u] for u in template.uses()), default=0)
        if depth[name] > MAX_DEPTH:
            chain = [name]
            while uses := self._templates[chain[-1]].uses():
                chain.append(max(uses, key=depth.__getitem__))
            raise ConfigInvalid(f"{source}: template {name!r} nests {depth[name]} levels deep "
                                f"({' -> '.join(chain)}); the limit is {MAX_DEPTH}")
        size[name] = sum(size[s["use"]] if "use" in s else 1 for s in template.steps)
        if size[name] > MAX_PLAN_TASKS:
            raise ConfigInvalid(f"{source}: template {name!r} expands to {size[name]} tasks; "
                                f"a plan holds at most {MAX_PLAN_TASKS}")


def _check_step(step: Any, index: int, seen: set[str], params: set[str], where: str) -> None:
    """One step's shape: its id, its ``after`` links and the placeholders it uses."""
    if not isinstance(step, dict):
        raise ConfigInvalid(f"{where}: step {index} must be an object (a task or a 'use' step)")
    step_id = step.get("id")
    if not isinstance(step_id, str) or not step_id or "{" in step_id:
        raise ConfigInvalid(f"{where}: step {index} needs an 'id': a literal, non-empty string")
    here = f"{where} step {step_id!r}"
    if step_id in seen:
        raise ConfigInvalid(f"{here}: the id is used by an earlier step")
    after = step.get("after", [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise ConfigInvalid(f"{here}: after must be a list of step ids")
    for before in after:
        if before not in seen:
            raise ConfigInvalid(f"{here}: after names {before!r}, which is not an earlier "
                                "step (steps are listed in order)")
    if "use" in step:
        _refuse_unknown(step, _COMPOSITE_KEYS, here)
        if not isinstance(step["use"], str):
            raise ConfigInvalid(f"{here}: use must name a template")
        if not isinstance(step.get("with", {}), dict):
            raise ConfigInvalid(f"{here}: with must be an object of param -> value")
    elif "kind" not in step:
        raise ConfigInvalid(f"{here}: a step is a task (with 'kind') or uses a template "
                            "(with 'use')")
    for value in (v for k, v in step.items() if k not in (*_LITERAL_KEYS, "use")):
        for name in _placeholders(value):
            if name not in params:
                raise ConfigInvalid(f"{here}: placeholder {{{name}}} names no param"
                                    + did_you_mean(name, params))
    seen.add(step_id)


def _placeholders(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield from (m.group(1) for m in _PLACEHOLDER.finditer(value) if m.group(1))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _placeholders(item)
    elif isinstance(value, list):
        for item in value:
            yield from _placeholders(item)


def _render(value: Any, values: Mapping[str, Any]) -> Any:
    """``value`` with its placeholders filled; a lone placeholder keeps the value's type."""
    if isinstance(value, str):
        whole = _WHOLE_PLACEHOLDER.match(value)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: _as_text(m, values), value)
    if isinstance(value, dict):
        return {key: _render(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, values) for item in value]
    return value


def _as_text(match: re.Match[str], values: Mapping[str, Any]) -> str:
    if not match.group(1):
        return match.group(0)[0]  # "{{" -> "{", "}}" -> "}"
    value = values[match.group(1)]
    return value if isinstance(value, str) else json.dumps(value)


def _parse_number(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def _refuse_unknown(doc: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for key in doc:
        if key not in known:
            raise ConfigInvalid(f"{where}: unknown key {key!r}"
                                + did_you_mean(key, known)
                                + f"; known keys: {', '.join(known)}")
