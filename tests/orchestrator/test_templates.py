"""Plan templates: loading checks, placeholder filling, composite expansion and its wiring."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.errors import ConfigInvalid, PlanInvalid, PlannerError
from agent.orchestrator.models import Plan
from agent.orchestrator.templates import MAX_DEPTH, TemplateSet


def _set(**templates: Any) -> TemplateSet:
    return TemplateSet.from_dict({"version": 1, "templates": templates}, "test.json")


def _task(step_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "command", "args": {"command": "ping"}, **fields}


def _wiring(doc: dict[str, Any]) -> dict[str, list[str]]:
    return {task["id"]: task["after"] for task in doc["tasks"]}


def test_placeholders_keep_their_type_when_alone_and_become_text_inside_a_string():
    templates = _set(probe={
        "params": {"dev": {"type": "str"}, "n": {"type": "int"},
                   "ratio": {"type": "number", "default": 0.5},
                   "loud": {"type": "bool", "default": False}},
        "steps": [_task("t", args={"count": "{n}", "ratio": "{ratio}", "loud": "{loud}",
                                   "label": "{dev}/n={n} r={ratio} loud={loud}",
                                   "nested": [{"who": "{dev}"}], "raw": "{{dev}}"},
                        constraints={"device": "{dev}"}, priority="{n}")]})

    doc = templates.expand("probe", {"dev": "pi-02", "n": 3, "loud": True})

    (task,) = doc["tasks"]
    assert task["args"] == {"count": 3, "ratio": 0.5, "loud": True,
                            "label": "pi-02/n=3 r=0.5 loud=true",
                            "nested": [{"who": "pi-02"}], "raw": "{dev}"}
    assert task["constraints"] == {"device": "pi-02"} and task["priority"] == 3
    assert doc["goal"] == "probe"
    assert Plan.from_dict(doc).tasks[0].priority == 3


def test_text_values_are_parsed_for_int_number_and_bool_params():
    templates = _set(probe={
        "params": {"n": {"type": "int"}, "x": {"type": "number"}, "b": {"type": "bool"}},
        "steps": [_task("t", args={"n": "{n}", "x": "{x}", "b": "{b}"})]})

    doc = templates.expand("probe", {"n": "12", "x": "2.5", "b": "FALSE"})

    assert doc["tasks"][0]["args"] == {"n": 12, "x": 2.5, "b": False}


def test_every_parameter_problem_is_reported_at_once_with_a_suggestion():
    templates = _set(probe={
        "params": {"group": {"type": "str"}, "count": {"type": "int"},
                   "fast": {"type": "bool", "default": True}},
        "steps": [_task("t")]})

    with pytest.raises(PlanInvalid) as info:
        templates.expand("probe", {"gruop": "kitchen", "count": "three", "fast": 1})

    reasons = info.value.reasons
    assert len(reasons) == 4, reasons
    assert "no param 'gruop' (did you mean 'group'?)" in reasons[0]
    assert "param 'group' (str) is required" in reasons[1]
    assert "param 'count' must be an int, got 'three'" in reasons[2]
    assert "param 'fast' must be a bool, got 1" in reasons[3]


def test_an_unknown_template_is_a_planner_error_with_a_suggestion():
    templates = _set(**{"sensor-sweep": {"steps": [_task("t")]}})

    with pytest.raises(PlannerError, match=r"'sensor-swep' \(did you mean 'sensor-sweep'\?\)"):
        templates.expand("sensor-swep", {})


def test_composites_nest_three_levels_with_prefixed_ids_and_wired_dependencies():
    templates = _set(
        # diamond: one root (a), two leaves (b, c)
        leaf={"params": {"dev": {"type": "str"}},
              "steps": [_task("a", constraints={"device": "{dev}"}),
                        _task("b", after=["a"]), _task("c", after=["a"])]},
        middle={"params": {"dev": {"type": "str"}},
                "steps": [_task("start"),
                          {"id": "inner", "use": "leaf", "with": {"dev": "{dev}"},
                           "after": ["start"]},
                          _task("end", after=["inner"])]},
        top={"params": {"dev": {"type": "str"}},
             "steps": [{"id": "first", "use": "leaf", "with": {"dev": "pi-01"}},
                       {"id": "second", "use": "middle", "with": {"dev": "{dev}"},
                        "after": ["first"]},
                       _task("last", after=["second"])]})

    doc = templates.expand("top", {"dev": "pi-09"})

    assert _wiring(doc) == {
        "first.a": [],
        "first.b": ["first.a"],
        "first.c": ["first.a"],
        "second.start": ["first.b", "first.c"],  # the composite's after -> the sub-plan's roots
        "second.inner.a": ["second.start"],
        "second.inner.b": ["second.inner.a"],
        "second.inner.c": ["second.inner.a"],
        "second.end": ["second.inner.b", "second.inner.c"],  # waits for the leaves
        "last": ["second.end"],
    }
    devices = {t["id"]: t.get("constraints", {}).get("device") for t in doc["tasks"]}
    assert devices["first.a"] == "pi-01" and devices["second.inner.a"] == "pi-09"
    plan = Plan.from_dict(doc)
    order = [t.id for t in plan.order()]
    assert (order[0], order[-1], len(order)) == ("first.a", "last", 9)


def test_a_composite_with_several_roots_passes_its_after_to_each_root():
    templates = _set(
        pair={"steps": [_task("x"), _task("y")]},
        top={"steps": [_task("go"), {"id": "both", "use": "pair", "after": ["go"]},
                       _task("done", after=["both"])]})

    assert _wiring(templates.expand("top", {})) == {
        "go": [], "both.x": ["go"], "both.y": ["go"], "done": ["both.x", "both.y"]}


def test_an_ill_typed_value_passed_down_is_refused_naming_the_step():
    templates = _set(
        inner={"params": {"n": {"type": "int"}}, "steps": [_task("t", priority="{n}")]},
        outer={"params": {"word": {"type": "str"}},
               "steps": [{"id": "sub", "use": "inner", "with": {"n": "{word}"}}]})

    assert templates.expand("outer", {"word": "4"})["tasks"][0]["priority"] == 4
    with pytest.raises(PlanInvalid) as info:
        templates.expand("outer", {"word": "four"})
    assert info.value.reasons == [
        "step 'sub' (template 'inner'): param 'n' must be an int, got 'four'"]


def _chain(length: int) -> dict[str, Any]:
    """Templates t1 -> t2 -> ... -> t<length>, each using the next."""
    templates = {f"t{i}": {"steps": [{"id": "s", "use": f"t{i + 1}"}]} for i in range(1, length)}
    templates[f"t{length}"] = {"steps": [_task("work")]}
    return templates


def test_nesting_is_allowed_up_to_the_depth_limit():
    doc = _set(**_chain(MAX_DEPTH)).expand("t1", {})

    assert [t["id"] for t in doc["tasks"]] == ["s." * (MAX_DEPTH - 1) + "work"]


def test_nesting_past_the_depth_limit_is_refused_when_the_file_loads():
    with pytest.raises(ConfigInvalid) as info:
        _set(**_chain(MAX_DEPTH + 1))

    message = str(info.value)
    assert f"nests {MAX_DEPTH + 1} levels deep" in message
    assert "t1 -> t2 -> t3 -> t4 -> t5 -> t6 -> t7 -> t8 -> t9" in message
    assert f"the limit is {MAX_DEPTH}" in message


@pytest.mark.parametrize(("templates", "cycle"), [
    ({"a": {"steps": [{"id": "s", "use": "b"}]}, "b": {"steps": [{"id": "s", "use": "a"}]}},
     "a -> b -> a"),
    ({"solo": {"steps": [_task("t"), {"id": "again", "use": "solo", "after": ["t"]}]}},
     "solo -> solo"),
    ({"a": {"steps": [{"id": "s", "use": "b"}]}, "b": {"steps": [{"id": "s", "use": "c"}]},
      "c": {"steps": [_task("t"), {"id": "back", "use": "b"}]}}, "b -> c -> b"),
])
def test_templates_using_each_other_in_a_cycle_are_refused_naming_the_cycle(templates, cycle):
    with pytest.raises(ConfigInvalid) as info:
        _set(**templates)
    assert str(info.value).endswith("templates use each other in a cycle: " + cycle)


@pytest.mark.parametrize(("templates", "message"), [
    ({"x": {"steps": [{"id": "s", "use": "nope"}]}, "nope2": {"steps": [_task("t")]}},
     "step 's' uses unknown template 'nope' (did you mean 'nope2'?)"),
    ({"x": {"steps": [{"id": "s", "use": "y", "with": {"devce": "pi"}}]},
      "y": {"params": {"device": {"type": "str"}}, "steps": [_task("t")]}},
     "template 'y' has no param 'devce' (did you mean 'device'?)"),
    ({"x": {"steps": [{"id": "s", "use": "y"}]},
      "y": {"params": {"device": {"type": "str"}}, "steps": [_task("t")]}},
     "'with' lacks required param(s) device of template 'y'"),
    ({"x": {"steps": [_task("a", after=["b"]), _task("b")]}},
     "after names 'b', which is not an earlier step"),
    ({"x": {"steps": [_task("a"), _task("a")]}}, "the id is used by an earlier step"),
    ({"x": {"params": {"dev": {"type": "str"}}, "steps": [_task("a", args={"d": "{dve}"})]}},
     "placeholder {dve} names no param (did you mean 'dev'?)"),
    ({"x": {"steps": [{"id": "a", "command": "ping"}]}},
     "a step is a task (with 'kind') or uses a template"),
    ({"x": {"steps": [{"id": "a", "use": "x", "after": [], "whith": {}}]}},
     "unknown key 'whith' (did you mean 'with'?)"),
    ({"x": {"descripton": "typo", "steps": [_task("a")]}},
     "unknown key 'descripton' (did you mean 'description'?)"),
    ({"x": {"params": {"n": {"type": "integer"}}, "steps": [_task("a")]}},
     "param 'n' has type 'integer'; use one of str, int, number, bool"),
    ({"x": {"params": {"n": {"type": "int", "default": "many"}}, "steps": [_task("a")]}},
     "param 'n': default must be an int, got 'many'"),
    ({"x": {"steps": []}}, "steps must be a non-empty list"),
    ({"Bad Name": {"steps": [_task("a")]}}, "a template name is 1-64 of"),
])
def test_a_malformed_template_is_refused_when_it_loads(templates, message):
    with pytest.raises(ConfigInvalid) as info:
        _set(**templates)
    assert message in str(info.value) and str(info.value).startswith("test.json: ")


def test_a_template_that_would_exceed_a_plan_is_refused_when_it_loads():
    ten = {"steps": [_task(f"t{i}") for i in range(10)]}
    fan = {"steps": [{"id": f"u{i}", "use": "ten"} for i in range(26)]}

    with pytest.raises(ConfigInvalid, match="'fan' expands to 260 tasks; a plan holds at most 256"):
        _set(ten=ten, fan=fan)


def test_a_templates_file_is_read_and_its_errors_name_the_file(tmp_path):
    good = tmp_path / "plans.json"
    good.write_text(json.dumps({"version": 1, "templates": {"one": {"steps": [_task("t")]}}}))
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")

    assert TemplateSet.load(good).names() == ["one"]
    with pytest.raises(ConfigInvalid, match=f"{bad}: not a JSON templates file"):
        TemplateSet.load(bad)
    with pytest.raises(ConfigInvalid, match="cannot read the templates file"):
        TemplateSet.load(tmp_path / "missing.json")
    with pytest.raises(ConfigInvalid, match="reads templates format 1"):
        TemplateSet.from_dict({"version": 2, "templates": {}})


_SAMPLE_VALUES = {"str": "pi-02", "int": 7, "number": 0.75, "bool": True}


@pytest.mark.parametrize("name", TemplateSet.shipped().names())
def test_every_shipped_template_expands_to_a_valid_plan(name):
    templates = TemplateSet.shipped()
    template = templates.get(name)
    required = {p.name: _SAMPLE_VALUES[p.type] for p in template.params if p.required}

    plan = Plan.from_dict(templates.expand(name, required, goal=f"{name} (test)"))

    assert plan.goal == f"{name} (test)" and plan.tasks
    assert {t.kind for t in plan.tasks} <= {"infer", "sample", "command", "action"}
    rendered = json.dumps(plan.to_dict())
    assert not any("{" + p.name + "}" in rendered for p in template.params)


def test_the_shipped_templates_cover_the_products_jobs_and_one_composite():
    templates = TemplateSet.shipped()

    assert {"sensor-sweep", "classify-image", "health-check", "zone-survey"} <= set(
        templates.names())
    doc = templates.expand("zone-survey", {"group": "kitchen", "gateway": "pi-02"})
    assert _wiring(doc) == {"check.health": [], "sweep.sample": ["check.health"]}
    sample = doc["tasks"][1]
    assert sample["constraints"] == {"groups": ["kitchen"]}
    assert sample["args"] == {"pool": "env", "prefix": "kitchen/", "ttl_s": 3600}
