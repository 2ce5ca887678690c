"""Orchestrator: tasks and plans, the durable local task queue and the local runner."""

from agent.orchestrator.models import (
    BUILTIN_KINDS,
    MAX_ARGS_BYTES,
    MAX_PLAN_TASKS,
    Constraints,
    Placement,
    Plan,
    Task,
    TaskSpec,
    TaskState,
    check_state,
    check_transition,
)
from agent.orchestrator.queue import MAX_RESULT_BYTES, TaskQueue
from agent.orchestrator.runner import Handler, TaskRunner

__all__ = [
    "BUILTIN_KINDS", "MAX_ARGS_BYTES", "MAX_PLAN_TASKS", "MAX_RESULT_BYTES", "Constraints",
    "Handler", "Placement", "Plan", "Task", "TaskQueue", "TaskRunner", "TaskSpec", "TaskState",
    "check_state", "check_transition",
]
