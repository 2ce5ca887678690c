"""``igris task submit|ls|show|cancel``: the running agent's task queue.

The queue lives in the agent (its scheduler leases, places and retries the
work), so every command asks it over the control socket. ``submit`` reads
and checks the spec here first, with the same :mod:`agent.orchestrator.models`
the agent uses: a bad spec or plan file is refused with every reason before
anything is sent, and even when no agent is running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.cmd_cmd import parse_args
from agent.cli.common import add_root_option, ask_agent
from agent.cli.output import add_json_flag, columns, emit, rows, when
from agent.errors import TaskInvalid
from agent.orchestrator.models import Plan, TaskSpec, TaskState

HELP = "the running agent's task queue: submit tasks or plans, list, show and cancel them"
SUBMIT_HELP = ("queue one task (KIND and key=value arguments), or a plan or task spec from "
               "a JSON file; prints the task ids")
LS_HELP = "list tasks, newest first, and how many are in each state"
SHOW_HELP = ("show one task: its spec, state, attempts, result or error, where it ran and "
             "why other nodes were refused (for a task not yet run: where it would go now)")
CANCEL_HELP = "cancel an unfinished task and every task waiting on it"
SUBMIT_EPILOG = (
    "Arguments are key=value; values are JSON when they parse as JSON (numbers, true/false, "
    "objects), text otherwise. Examples:\n"
    "  igris task submit command command=health\n"
    "  igris task submit sample pool=env ttl_s=3600 --group kitchen\n"
    "  igris task submit --file plan.json   (a {\"goal\", \"tasks\"} plan or one task spec; "
    "- reads stdin)\n"
    "Task kinds: infer, sample, command, action, and those installed through entry points.")
_SPEC_OPTIONS = ("id", "priority", "retries", "timeout", "deadline", "device", "group", "cap")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("task", help=HELP, description=HELP)
    task_sub = p.add_subparsers(dest="task_command", required=True, metavar="COMMAND")

    submit = task_sub.add_parser("submit", help=SUBMIT_HELP, description=SUBMIT_HELP,
                                 epilog=SUBMIT_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    submit.add_argument("kind", metavar="KIND", nargs="?",
                        help="the task kind, e.g. command, sample, infer, action")
    submit.add_argument("pairs", metavar="key=value", nargs="*", help="the task's arguments")
    submit.add_argument("--file", metavar="FILE",
                        help="read a plan or a task spec (JSON) from FILE, or stdin for '-', "
                             "instead of KIND and its arguments")
    submit.add_argument("--id", help="the task's id in its plan (default: the kind)")
    submit.add_argument("--priority", type=int, metavar="N",
                        help="0..9, higher runs first (default 5)")
    submit.add_argument("--retries", type=int, metavar="N",
                        help="extra attempts after a failure, 0..10 (default 2)")
    submit.add_argument("--timeout", type=float, metavar="S",
                        help="seconds per attempt, at most 3600 (default 60)")
    submit.add_argument("--deadline", type=float, metavar="S",
                        help="not started once S seconds have passed since submission")
    submit.add_argument("--device", metavar="D", help="run only on device D")
    submit.add_argument("--group", action="append", metavar="G",
                        help="run only on a device in group G (repeat for several)")
    submit.add_argument("--cap", action="append", metavar="C",
                        help="run only on a device with capability C (repeat for several)")
    submit.set_defaults(func=submit_cmd)

    ls = task_sub.add_parser("ls", help=LS_HELP, description=LS_HELP)
    ls.add_argument("--state", metavar="S",
                    help=f"only tasks in state S ({', '.join(TaskState.ALL)})")
    ls.add_argument("--plan", type=int, metavar="N", help="only the tasks of plan N")
    ls.add_argument("--limit", type=int, default=100, metavar="N",
                    help="at most N tasks (default 100)")
    ls.set_defaults(func=ls_cmd)

    show = task_sub.add_parser("show", help=SHOW_HELP, description=SHOW_HELP)
    show.add_argument("id", metavar="ID", help="a task id, '<plan>/<task id>' (see task ls)")
    show.set_defaults(func=show_cmd)

    cancel = task_sub.add_parser("cancel", help=CANCEL_HELP, description=CANCEL_HELP)
    cancel.add_argument("id", metavar="ID", help="a task id, '<plan>/<task id>'")
    cancel.set_defaults(func=cancel_cmd)

    for command in (submit, ls, show, cancel):
        add_root_option(command)
        add_json_flag(command)


def submit_cmd(args: argparse.Namespace) -> int:
    if args.file is not None:
        given = [f"--{name}" for name in _SPEC_OPTIONS if getattr(args, name) is not None]
        given += ["KIND"] if args.kind is not None else []
        if given:
            raise TaskInvalid(f"--file holds the whole spec, so {', '.join(given)} cannot "
                              "come with it; write it into the file instead")
    work = read_work(args.file) if args.file is not None else task_from_args(args)
    key = "plan" if isinstance(work, Plan) else "task"
    result = ask_agent(args, "task.submit", {key: work.to_dict()})
    emit(result, as_json=args.json, human=lambda r: "\n".join(r["ids"]))
    return 0


def task_from_args(args: argparse.Namespace) -> TaskSpec:
    """The task spec the command line describes (unset options keep the spec's defaults)."""
    if args.kind is None:
        raise TaskInvalid("give a task KIND (e.g. 'igris task submit command command=health') "
                          "or --file PLAN.json")
    spec: dict[str, Any] = {"id": args.id or args.kind, "kind": args.kind,
                            "args": parse_args(args.pairs)}
    for key, value in (("priority", args.priority), ("retries", args.retries),
                       ("timeout_s", args.timeout), ("deadline_s", args.deadline)):
        if value is not None:
            spec[key] = value
    constraints = {key: value for key, value in (
        ("device", args.device), ("groups", args.group), ("caps", args.cap))
        if value is not None}
    if constraints:
        spec["constraints"] = constraints
    return TaskSpec.from_dict(spec)


def read_work(source: str) -> TaskSpec | Plan:
    """A plan (an object with ``tasks``) or one task spec from a JSON file, or ``-``: stdin."""
    where = "stdin" if source == "-" else repr(source)
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskInvalid(f"cannot read {where}: {exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise TaskInvalid(f"{where} does not hold JSON: {exc}") from None
    if isinstance(doc, dict) and "tasks" in doc:
        return Plan.from_dict(doc)
    return TaskSpec.from_dict(doc)


def ls_cmd(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise TaskInvalid(f"--limit must be at least 1, got {args.limit}")
    params: dict[str, Any] = {"limit": args.limit}
    if args.state is not None:
        params["state"] = args.state
    if args.plan is not None:
        params["plan"] = args.plan
    emit(ask_agent(args, "task.list", params), as_json=args.json, human=task_table)
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    emit(ask_agent(args, "task.show", {"id": args.id}), as_json=args.json, human=task_details)
    return 0


def cancel_cmd(args: argparse.Namespace) -> int:
    result = ask_agent(args, "task.cancel", {"id": args.id})
    emit(result, as_json=args.json,
         human=lambda r: "cancelled " + ", ".join(r["cancelled"]))
    return 0


def task_table(listing: dict[str, Any]) -> str:
    """``task.list``'s result: one row per task, then the count in each non-empty state."""
    tasks = listing["tasks"]
    counts = ", ".join(f"{state} {n}" for state, n in listing["counts"].items() if n)
    table = columns([("ID", "KIND", "STATE", "ATTEMPTS", "PLACED ON", "UPDATED"), *(
        (t["id"], t["spec"]["kind"], t["state"], str(t["attempts"]),
         (t["placement"] or {}).get("device") or "-", when(t["updated_ms"]))
        for t in tasks)]) if tasks else "(no tasks)"
    return f"{table}\n({counts or 'the queue is empty'})"


def task_details(task: dict[str, Any]) -> str:
    """``task.show``'s result as indented rows: spec, life so far, outcome, placement."""
    spec = task["spec"]
    shown: dict[str, Any] = {
        "id": task["id"], "plan": task["plan"], "state": task["state"],
        "attempts": f"{task['attempts']} of {spec['retries'] + 1}",
        "submitted": when(task["submitted_ms"]), "updated": when(task["updated_ms"]),
        "spec": _spec_rows(spec),
    }
    if task["deadline_ms"] is not None:
        shown["deadline"] = when(task["deadline_ms"])
    if task["state"] == TaskState.LEASED:
        shown["lease"] = f"{task['lease_owner']} until {when(task['lease_expires_ms'])}"
    if task["result"] is not None:
        shown["result"] = json.dumps(task["result"], sort_keys=True)
    if task["error"] is not None:
        shown["error"] = task["error"]
    if task["placement"] is not None:
        placement = task["placement"]
        shown["placement"] = {"device": placement["device"], "score": placement["score"],
                              "refused": placement["reasons"]}
    if "would_place" in task:
        shown["would place"] = _decision_rows(task["would_place"])
    return rows(shown)


def _spec_rows(spec: dict[str, Any]) -> dict[str, Any]:
    """A task spec as ``rows`` shows it (empty parts left out)."""
    shown: dict[str, Any] = {"kind": spec["kind"], "args": json.dumps(spec["args"],
                                                                      sort_keys=True)}
    if spec["after"]:
        shown["after"] = spec["after"]
    if spec.get("constraints"):
        shown["where"] = where(spec)
    shown["priority"] = spec["priority"]
    shown["timeout"] = f"{spec['timeout_s']:g} s"
    if spec.get("deadline_s") is not None:
        shown["deadline"] = f"{spec['deadline_s']:g} s after submission"
    return shown


def _decision_rows(decision: dict[str, Any]) -> dict[str, Any]:
    """A placement decision: the chosen node, the ranking, and why each other node was not."""
    shown: dict[str, Any] = {
        "device": decision["device"] or "nowhere (no node fits now)",
        "ranked": [f"{device} {score:g}" for device, score in decision["ranked"]],
    }
    if decision["refused"]:
        shown["refused"] = dict(sorted(decision["refused"].items()))
    return shown


def where(spec: dict[str, Any]) -> str:
    """A spec's constraints in one cell: ``device=pi-02 groups=kitchen``, or ``any``."""
    constraints = spec.get("constraints") or {}
    return " ".join(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
                    for key, value in constraints.items()) or "any"
