"""Task specs, plans and the task state machine: round trips, and one test per refusal class."""

import json

import pytest

from agent.errors import OrchestratorError, PlanInvalid, TaskInvalid
from agent.orchestrator import (
    MAX_ARGS_BYTES,
    MAX_PLAN_TASKS,
    Constraints,
    Plan,
    TaskSpec,
    TaskState,
    check_transition,
)

FULL_SPEC = {
    "id": "resize-1", "kind": "infer", "args": {"model": "mobilenet", "size": [224, 224]},
    "after": ["fetch-1"],
    "constraints": {"device": "pi-02", "groups": ["kitchen"], "caps": ["tflite"],
                    "min_battery_percent": 30, "max_celsius": 70, "max_cpu_percent": 80},
    "priority": 7, "deadline_s": 120, "retries": 3, "timeout_s": 12.5,
}


def plan_of(*tasks, goal="g"):
    return {"goal": goal, "tasks": list(tasks)}


def refusal(d):
    with pytest.raises(TaskInvalid) as caught:
        TaskSpec.from_dict(d)
    return str(caught.value)


def plan_reasons(d):
    with pytest.raises(PlanInvalid) as caught:
        Plan.from_dict(d)
    return caught.value.reasons


# ---------------------------------------------------------------- specs


def test_a_full_spec_round_trips_through_json():
    spec = TaskSpec.from_dict(FULL_SPEC)
    assert spec.constraints == Constraints("pi-02", ("kitchen",), ("tflite",), 30, 70, 80)
    assert spec.after == ("fetch-1",)
    assert json.loads(json.dumps(spec.to_dict())) == FULL_SPEC
    assert TaskSpec.from_dict(spec.to_dict()) == spec


def test_a_minimal_spec_takes_the_contract_defaults():
    spec = TaskSpec.from_dict({"id": "t", "kind": "sample"})
    assert (spec.args, spec.after, spec.priority, spec.retries, spec.timeout_s,
            spec.deadline_s) == ({}, (), 5, 2, 60, None)
    assert spec.constraints.to_dict() == {}
    assert "constraints" not in spec.to_dict() and "deadline_s" not in spec.to_dict()


def test_an_entry_point_kind_name_is_accepted():
    assert TaskSpec.from_dict({"id": "t", "kind": "camera.snap_v2"}).kind == "camera.snap_v2"


def test_unknown_keys_are_refused_with_a_suggestion():
    message = refusal({"id": "t", "kind": "infer", "priorty": 3})
    assert "unknown key 'priorty'" in message and "did you mean 'priority'?" in message
    message = refusal({"id": "t", "kind": "infer", "constraints": {"group": ["k"]}})
    assert "constraints: unknown key 'group'" in message and "'groups'" in message


def test_missing_id_and_kind_are_both_named():
    message = refusal({"args": {}})
    assert "'id' is required" in message and "'kind' is required" in message


@pytest.mark.parametrize("field,value", [
    ("id", "has space"), ("id", "x" * 65), ("id", 7),
    ("kind", "Infer"), ("kind", ""),
])
def test_bad_id_and_kind_syntax_is_refused(field, value):
    message = refusal({"id": "t", "kind": "infer", field: value})
    assert f"{field} must be" in message and repr(value) in message


@pytest.mark.parametrize("field,value", [
    ("priority", 10), ("priority", -1), ("priority", 5.0), ("priority", True),
    ("retries", 11), ("retries", "2"),
    ("timeout_s", 0), ("timeout_s", 3601), ("timeout_s", float("nan")),
    ("deadline_s", 0), ("deadline_s", -5),
])
def test_out_of_range_numbers_are_refused_naming_the_value(field, value):
    message = refusal({"id": "t", "kind": "infer", field: value})
    assert f"{field} must be" in message and repr(value) in message


def test_every_problem_of_a_spec_is_reported_at_once():
    message = refusal({"id": "t", "kind": "infer", "priority": 10, "retries": -1,
                       "timeout_s": 0})
    assert message.startswith("task 't': ")
    assert all(f"{f} must be" in message for f in ("priority", "retries", "timeout_s"))


def test_args_must_be_a_json_object_within_the_size_limit():
    assert "args must be a JSON object" in refusal({"id": "t", "kind": "infer", "args": [1]})
    assert "plain JSON" in refusal({"id": "t", "kind": "infer", "args": {"x": float("inf")}})
    big = {"blob": "x" * MAX_ARGS_BYTES}
    message = refusal({"id": "t", "kind": "infer", "args": big})
    assert f"over the {MAX_ARGS_BYTES}-byte limit" in message and "memory store" in message
    just_fits = {"blob": "x" * (MAX_ARGS_BYTES - len('{"blob":""}'))}
    assert TaskSpec.from_dict({"id": "t", "kind": "infer", "args": just_fits}).args == just_fits


@pytest.mark.parametrize("constraints,expected", [
    ({"device": "no/slash"}, "device must be a device id"),
    ({"device": 7}, "device must be a device id (1-64 letters, digits, '.', '_' or '-'), got 7"),
    ({"groups": "kitchen"}, "groups must be a list"),
    ({"groups": ["kitchen", 3]}, "groups entry 3 must be 1-64 letters"),
    ({"caps": ["tflite", "tflite"]}, "caps repeats 'tflite'"),
    ({"min_battery_percent": 101}, "min_battery_percent must be a number"),
    ({"max_celsius": "hot"}, "max_celsius must be a number"),
    ({"max_cpu_percent": -1}, "max_cpu_percent must be a number"),
    ({"max_cpu_percent": True}, "max_cpu_percent must be a number (0..100), got True"),
    ({"zone": "x"}, "constraints: unknown key 'zone'; keys are device, groups, caps"),
    ([], "constraints must be a JSON object"),
])
def test_bad_constraints_are_refused(constraints, expected):
    assert expected in refusal({"id": "t", "kind": "infer", "constraints": constraints})


def test_after_must_name_task_ids_once_each_and_not_itself():
    assert "after repeats 'a'" in refusal({"id": "t", "kind": "infer", "after": ["a", "a"]})
    assert "names the task itself" in refusal({"id": "t", "kind": "infer", "after": ["t"]})
    assert "after must be a list" in refusal({"id": "t", "kind": "infer", "after": "a"})


def test_a_spec_built_directly_is_checked_too():
    with pytest.raises(TaskInvalid, match="priority must be"):
        TaskSpec("t", "infer", priority=12)
    with pytest.raises(TaskInvalid, match="max_celsius"):
        Constraints(max_celsius=500)


def test_a_spec_that_is_not_an_object_is_refused():
    assert "a task must be a JSON object" in refusal(["id", "t"])


def test_orchestrator_errors_subclass_the_matching_builtins():
    assert issubclass(TaskInvalid, ValueError) and issubclass(TaskInvalid, OrchestratorError)
    assert issubclass(PlanInvalid, TaskInvalid)


# ---------------------------------------------------------------- plans


def test_a_plan_round_trips_and_orders_dependencies_first():
    d = plan_of({"id": "c", "kind": "infer", "after": ["a", "b"]},
                {"id": "b", "kind": "infer", "after": ["a"]},
                {"id": "a", "kind": "command"},
                {"id": "z", "kind": "sample"})
    plan = Plan.from_dict(d)
    assert [s.id for s in plan.order()] == ["a", "z", "b", "c"]
    assert Plan.from_dict(plan.to_dict()) == plan
    assert [s.id for s in plan.tasks] == ["c", "b", "a", "z"]


def test_a_plan_names_repeated_ids():
    reasons = plan_reasons(plan_of({"id": "a", "kind": "infer"}, {"id": "a", "kind": "sample"}))
    assert reasons == ["plan: task id 'a' is used more than once"]


def test_a_plan_names_after_ids_that_are_not_in_it_with_a_suggestion():
    reasons = plan_reasons(plan_of({"id": "fetch", "kind": "command"},
                                   {"id": "resize", "kind": "infer", "after": ["fech"]}))
    assert reasons == ["task 'resize': after names 'fech', not a task of this plan "
                       "(did you mean 'fetch'?)"]


def test_a_plan_names_each_cycle():
    reasons = plan_reasons(plan_of(
        {"id": "a", "kind": "infer", "after": ["c"]},
        {"id": "b", "kind": "infer", "after": ["a"]},
        {"id": "c", "kind": "infer", "after": ["b"]},
        {"id": "d", "kind": "infer", "after": ["e"]},
        {"id": "e", "kind": "infer", "after": ["d"]},
        {"id": "tail", "kind": "infer", "after": ["e"]},   # downstream of a cycle, not in one
        {"id": "free", "kind": "infer"},
    ))
    assert reasons == ["plan: cycle a -> c -> b -> a (each waits on the next)",
                       "plan: cycle d -> e -> d (each waits on the next)"]


@pytest.mark.parametrize("count", [0, MAX_PLAN_TASKS + 1])
def test_a_plan_holds_1_to_256_tasks(count):
    tasks = [{"id": f"t{i}", "kind": "infer"} for i in range(count)]
    reasons = plan_reasons(plan_of(*tasks))
    assert reasons == [f"plan: must hold 1..{MAX_PLAN_TASKS} tasks, got {count}; split a "
                       "larger goal into several plans"]


def test_a_plan_goal_is_text_of_at_most_512_characters():
    assert "goal must be text" in plan_reasons(plan_of({"id": "t", "kind": "x"},
                                                       goal="g" * 513))[0]
    assert "'goal' is required" in plan_reasons({"tasks": [{"id": "t", "kind": "x"}]})[0]


def test_a_plan_refuses_unknown_keys_and_non_list_tasks():
    reasons = plan_reasons({"goal": "g", "task": []})
    assert "plan: unknown key 'task' (did you mean 'tasks'?)" in reasons[0]
    assert "tasks must be a list" in reasons[1]
    assert plan_reasons("goal") == ["a plan must be a JSON object, got str 'goal'"]


def test_a_plan_reports_every_problem_at_once():
    reasons = plan_reasons(plan_of(
        {"id": "a", "kind": "infer", "priority": 99},
        {"id": "b", "kind": "infer", "after": ["a", "nope"]},
        {"id": "b", "kind": "infer"},
        {"id": "c", "kind": "infer", "after": ["c2"]},
        {"id": "c2", "kind": "infer", "after": ["c"]},
    ))
    assert len(reasons) == 4, reasons
    assert reasons[0].startswith("tasks[0] task 'a': priority must be")
    assert reasons[1].startswith("task 'b': after names 'nope'")  # 'a' is bad but present
    assert "'b' is used more than once" in reasons[2]
    assert "cycle c -> c2 -> c" in reasons[3]
    assert "plan refused: tasks[0]" in str(PlanInvalid(reasons))


def test_a_plan_built_directly_is_checked_too():
    with pytest.raises(PlanInvalid, match="cycle"):
        Plan("g", (TaskSpec("a", "infer", after=("b",)), TaskSpec("b", "infer", after=("a",))))


# ---------------------------------------------------------------- states


def test_the_allowed_transitions_are_exactly_the_table():
    allowed = {
        ("pending", "ready"), ("pending", "dead"), ("pending", "cancelled"),
        ("ready", "leased"), ("ready", "dead"), ("ready", "cancelled"),
        ("leased", "done"), ("leased", "failed"), ("leased", "dead"), ("leased", "ready"),
        ("leased", "cancelled"),
        ("failed", "ready"), ("failed", "dead"), ("failed", "cancelled"),
    }
    for old in TaskState.ALL:
        for new in TaskState.ALL:
            if (old, new) in allowed:
                check_transition(old, new)
            else:
                with pytest.raises(TaskInvalid, match=f"a '{old}' task cannot become '{new}'"):
                    check_transition(old, new)


def test_an_unknown_state_is_refused_with_a_suggestion():
    with pytest.raises(TaskInvalid, match="unknown task state 'redy' \\(did you mean 'ready'"):
        check_transition("redy", "leased")
