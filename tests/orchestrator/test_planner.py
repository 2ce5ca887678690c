"""The planners: templates from a goal line, and an LLM over a real OpenAI-compatible server."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from agent.ai.remote import RemoteChat
from agent.errors import PlanInvalid, PlannerError
from agent.orchestrator.planner import LlmPlanner, Planner, TemplatePlanner
from agent.orchestrator.templates import TemplateSet
from tests.support.fake_model_api import FakeModelApi

GOAL = "check pi-02, then sample the kitchen into env"
VALID = {"goal": GOAL, "tasks": [
    {"id": "check", "kind": "command", "args": {"command": "health"},
     "constraints": {"device": "pi-02"}},
    {"id": "sweep", "kind": "sample", "args": {"pool": "env", "prefix": "kitchen/"},
     "after": ["check"], "constraints": {"groups": ["kitchen"]}, "priority": 6},
]}


def _chat(api: FakeModelApi) -> RemoteChat:
    return RemoteChat("remote:fake", api.url, "gpt-4o-mini", timeout_s=2.0)


def _fenced(doc: Any) -> str:
    return ("Here is a plan for your fleet.\n\n```json\n" + json.dumps(doc, indent=2)
            + "\n```\n\nThe health check runs first so a sick gateway is caught early.")


def _with(**changes: Any) -> dict[str, Any]:
    """VALID with the second task changed."""
    doc = json.loads(json.dumps(VALID))
    doc["tasks"][1].update(changes)
    return doc


# --- templates ---------------------------------------------------------------------------

def test_a_goal_line_names_the_template_and_its_params():
    planner = TemplatePlanner(TemplateSet.shipped())

    plan = planner.plan("sensor-sweep group=kitchen ttl_s=600 pool='env 2'")

    assert plan.goal == "sensor-sweep group=kitchen ttl_s=600 pool='env 2'"
    (task,) = plan.tasks
    assert dict(task.args) == {"pool": "env 2", "prefix": "kitchen/", "ttl_s": 600}
    assert task.constraints.groups == ("kitchen",)


def test_params_may_come_apart_from_the_goal():
    planner = TemplatePlanner(TemplateSet.shipped())

    plan = planner.plan("classify-image", {"pool": "cam", "key": "door/1", "min_accuracy": 0.5})

    assert dict(plan.tasks[0].args) == {
        "model": "digits-mlp", "min_accuracy": 0.5, "input": {"pool": "cam", "key": "door/1"},
        "output": {"pool": "cam", "key": "door/1.label"}}


def test_an_unknown_template_is_refused_with_a_suggestion():
    planner = TemplatePlanner(TemplateSet.shipped())

    with pytest.raises(PlannerError, match=r"no plan template 'sensor-swep' \(did you mean "
                                           r"'sensor-sweep'\?\); templates: classify-image"):
        planner.plan("sensor-swep group=kitchen")


def test_bad_goal_words_and_params_are_refused_with_every_reason():
    planner = TemplatePlanner(TemplateSet.shipped())

    with pytest.raises(PlanInvalid) as words:
        planner.plan("sensor-sweep kitchen group=a group=b")
    with pytest.raises(PlanInvalid) as params:
        planner.plan("sensor-sweep ttl_s=soon", {"poool": "env"})
    with pytest.raises(PlanInvalid) as twice:
        planner.plan("health-check device=pi-01", {"device": "pi-02"})

    assert words.value.reasons == [
        "goal word 'kitchen' is not name=value (after the template name 'sensor-sweep', the "
        "goal holds only its params)",
        "param 'group' is given twice in the goal"]
    assert params.value.reasons == [
        "template 'sensor-sweep': no param 'poool' (did you mean 'pool'?); its params: group, "
        "pool, ttl_s",
        "template 'sensor-sweep': param 'group' (str) is required",
        "template 'sensor-sweep': param 'ttl_s' must be an int, got 'soon'"]
    assert twice.value.reasons == [
        "param 'device' is given twice: 'pi-01' in the goal and 'pi-02' in params"]


def test_a_template_plan_that_breaks_the_task_contract_is_refused_by_the_validator():
    templates = TemplateSet.from_dict({"version": 1, "templates": {"retry": {
        "params": {"n": {"type": "int"}},
        "steps": [{"id": "t", "kind": "command", "retries": "{n}", "colour": "red"}]}}})

    with pytest.raises(PlanInvalid) as info:
        TemplatePlanner(templates).plan("retry n=99")

    (reason,) = info.value.reasons
    assert "unknown key 'colour'" in reason and "retries must be an integer (0..10)" in reason


# --- the LLM planner, through a real RemoteChat and HTTP -------------------------------------

async def test_a_valid_plan_in_a_fenced_reply_with_prose_comes_through():
    async with FakeModelApi(reply=_fenced(VALID)) as api:
        planner = LlmPlanner(_chat(api), TemplateSet.shipped())
        plan = await planner.plan(GOAL, {"pool": "env"})

    assert plan.to_dict()["goal"] == GOAL
    assert [(t.id, t.kind, t.after) for t in plan.tasks] == [
        ("check", "command", ()), ("sweep", "sample", ("check",))]
    assert plan.tasks[1].priority == 6 and plan.tasks[0].constraints.device == "pi-02"


async def test_the_prompt_gives_the_contract_kinds_templates_and_goal():
    async with FakeModelApi(reply=json.dumps(VALID)) as api:
        await LlmPlanner(_chat(api), TemplateSet.shipped(), max_tasks=12).plan(
            GOAL, {"pool": "env"})

    (request,) = api.requests
    assert request.path == "/v1/chat/completions"
    (message,) = request.body["messages"]
    prompt = message["content"]
    assert message["role"] == "user"
    for needle in ('{"goal": "<the goal, verbatim>", "tasks": [<task>, ...]}',
                   "with 1 to 12 tasks", '"after": ["<earlier task id>"]',
                   '"min_battery_percent": 30', "must not form a cycle",
                   "- infer: ", "- sample: ", "- command: ", "- action: ",
                   "- sensor-sweep(group: str, pool: str = \"env\", ttl_s: int = 3600)",
                   "- zone-survey(", 'Parameters: {"pool": "env"}'):
        assert needle in prompt, needle
    assert prompt.endswith(f"Goal: {GOAL}")


async def test_a_bare_object_amid_prose_is_accepted_without_a_fence():
    async with FakeModelApi(reply=f"Sure! {json.dumps(VALID)} Let me know.") as api:
        plan = await LlmPlanner(_chat(api)).plan(GOAL)

    assert len(plan.tasks) == 2
    assert "Plans operators already use" not in api.requests[0].body["messages"][0]["content"]


@pytest.mark.parametrize(("doc", "reasons"), [
    (_with(id="check", after=[]), ["task id 'check' is used more than once"]),
    ({"goal": GOAL, "tasks": [
        {"id": "a", "kind": "command", "after": ["b"]},
        {"id": "b", "kind": "command", "after": ["a"]}]},
     ["plan: cycle a -> b -> a"]),
    (_with(kind="shell"),
     ["tasks[1] task 'sweep': kind 'shell' is not one this planner may use; use infer, sample, "
      "command, action"]),
    (_with(depends_on=["check"]), ["tasks[1] task 'sweep': unknown key 'depends_on'"]),
    (_with(priorty=3, kind="Run It"),
     ["unknown key 'priorty' (did you mean 'priority'?)",
      "tasks[1] task 'sweep': kind 'Run It' is not one this planner may use"]),
    ({"goal": GOAL, "tasks": [{"id": f"t{i}", "kind": "command"} for i in range(5)]},
     ["plan: 5 tasks, over this planner's limit of 4"]),
], ids=["repeated-id", "cycle", "unknown-kind", "unknown-key", "typo-and-bad-kind",
        "too-many"])
async def test_an_invalid_plan_is_refused_with_the_validators_reasons(doc, reasons):
    async with FakeModelApi(reply=_fenced(doc)) as api:
        planner = LlmPlanner(_chat(api), max_tasks=4)
        with pytest.raises(PlanInvalid) as info:
            await planner.plan(GOAL)

    # One reason per problem, in the validator's order; the validator owns their exact words.
    assert len(info.value.reasons) == len(reasons), info.value.reasons
    for found, expected in zip(info.value.reasons, reasons, strict=True):
        assert expected in found


@pytest.mark.parametrize(("reply", "problem"), [
    ("I cannot plan that.", "no '{' in the reply"),
    ("```json\n{\"goal\": \"x\", \"tasks\": [],}\n```", "Expecting property name"),
    ("```json\n{\"goal\": \"x\", \"tasks\": []}\nand then\n```", "text after the object"),
])
async def test_a_reply_without_one_clean_json_object_is_refused(reply, problem):
    async with FakeModelApi(reply=reply) as api:
        with pytest.raises(PlanInvalid) as info:
            await LlmPlanner(_chat(api)).plan(GOAL)

    (reason,) = info.value.reasons
    assert reason.startswith("remote:fake did not answer with a JSON plan object (")
    assert problem in reason


@pytest.mark.async_timeout(5)
async def test_a_stalled_server_is_a_planner_error_within_the_planners_deadline():
    async with FakeModelApi(behaviour="stall") as api:
        planner = LlmPlanner(_chat(api), timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(PlannerError, match="planner backend 'remote:fake' failed: timeout"):
            await planner.plan(GOAL)

    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(("settings", "code"), [
    ({"behaviour": "close"}, "bad_response"),
    ({"behaviour": "truncate"}, "bad_response"),
    ({"api_key": "sk-other"}, "http_401"),
])
async def test_a_failing_server_is_a_planner_error_naming_the_backend(settings, code):
    async with FakeModelApi(**settings) as api:
        with pytest.raises(PlannerError) as info:
            await LlmPlanner(_chat(api)).plan(GOAL)

    assert str(info.value).startswith(f"planner backend 'remote:fake' failed: {code}")


async def test_a_closed_port_is_a_planner_error():
    async with FakeModelApi() as api:
        url = api.url
    with pytest.raises(PlannerError, match="'remote:fake' failed: unreachable"):
        await LlmPlanner(RemoteChat("remote:fake", url, "gpt-4o-mini", timeout_s=1)).plan(GOAL)


def test_planner_settings_out_of_range_are_refused():
    chat = RemoteChat("remote:fake", "http://127.0.0.1:9", "gpt-4o-mini")

    with pytest.raises(ValueError, match=r"max_tasks must be 1\.\.256, got 0"):
        LlmPlanner(chat, max_tasks=0)
    with pytest.raises(ValueError, match="timeout_s must be positive, got -1"):
        LlmPlanner(chat, timeout_s=-1)


# --- the facade -------------------------------------------------------------------------

async def test_auto_uses_a_named_template_and_the_llm_for_other_goals():
    async with FakeModelApi(reply=_fenced(VALID)) as api:
        planner = Planner(TemplateSet.shipped(), LlmPlanner(_chat(api)))
        from_template = await planner.plan("health-check device=pi-07")
        assert api.requests == []
        from_model = await planner.plan(GOAL)
        forced = await planner.plan("health-check device=pi-07", backend="llm")

    assert [t.id for t in from_template.tasks] == ["health"]
    assert from_template.tasks[0].constraints.device == "pi-07"
    assert [t.id for t in from_model.tasks] == [t.id for t in forced.tasks] == ["check", "sweep"]
    assert len(api.requests) == 2


async def test_without_an_llm_other_goals_say_how_to_configure_one():
    planner = Planner(TemplateSet.shipped())

    with pytest.raises(PlannerError) as auto:
        await planner.plan("healthcheck device=pi-02")
    with pytest.raises(PlannerError, match="no LLM planner is configured; set \\[ai\\] remote_url"):
        await planner.plan("sensor-sweep group=kitchen", backend="llm")
    with pytest.raises(PlannerError, match="no plan template 'sweep'"):
        await planner.plan("sweep the kitchen", backend="templates")
    with pytest.raises(PlannerError, match="unknown planner backend 'gpt'; use one of auto, "):
        await planner.plan("sensor-sweep group=kitchen", backend="gpt")

    message = str(auto.value)
    assert "no plan template 'healthcheck' (did you mean 'health-check'?)" in message
    assert 'remote_kind = "chat"' in message and "remote_model" in message
