"""``igris plan GOAL...``: the running agent turns a goal into a plan, shows it, and queues it.

The goal's words stay one goal line, ``name=value`` words included: the
template planner reads a template's parameters from that line itself
(``sensor-sweep group=kitchen``), and the LLM planner reads the whole
line as the operator's words, so the plan keeps the goal as it was asked.
A value the shell has already unquoted is quoted again (``note='two
words'``), so the planner splits the line back into the same words.
"""

from __future__ import annotations

import argparse
import re
import shlex
from typing import Any

from agent.cli.common import add_root_option, ask_agent
from agent.cli.output import add_json_flag, columns, emit, short
from agent.cli.task_cmd import where
from agent.orchestrator.planner import BACKENDS

HELP = "turn a goal into a plan (from a template or the LLM planner), show it and queue it"
DESCRIPTION = (
    HELP + ". GOAL is a template name and its name=value parameters "
    "(igris plan sensor-sweep group=kitchen), or, with an LLM planner configured, "
    "any text (igris plan check every kitchen board, then sample them).")
PLAN_TIMEOUT_S = 45.0
"""How long to wait for the agent: longer than the LLM planner's own 30 s limit."""
_NAME_VALUE = re.compile(r"([A-Za-z0-9_.-]+)=(.*)\Z", re.DOTALL)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help=HELP, description=DESCRIPTION)
    p.add_argument("goal", metavar="GOAL", nargs="+",
                   help="the goal's words, name=value parameters included")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="templates, llm, or auto (default): the template the goal's first "
                        "word names, else the LLM planner")
    p.add_argument("--dry-run", action="store_true",
                   help="show the plan without queueing it")
    add_root_option(p)
    add_json_flag(p)
    p.set_defaults(func=plan_cmd)


def goal_line(words: list[str]) -> str:
    """The goal's words as one line, each ``name=value`` value quoted as a shell would need.

    >>> goal_line(["sensor-sweep", "group=kitchen", "note=two words"])
    "sensor-sweep group=kitchen note='two words'"
    """
    out = []
    for word in words:
        match = _NAME_VALUE.match(word)
        out.append(f"{match.group(1)}={shlex.quote(match.group(2))}" if match else word)
    return " ".join(out)


def plan_cmd(args: argparse.Namespace) -> int:
    result = ask_agent(args, "plan", {"goal": goal_line(args.goal), "backend": args.backend,
                                "dry_run": args.dry_run}, timeout=PLAN_TIMEOUT_S)
    emit(result, as_json=args.json, human=plan_table)
    return 0


def plan_table(result: dict[str, Any]) -> str:
    """The goal, a row per task with what it waits for, then what was queued."""
    plan = result["plan"]
    table = columns([("TASK", "KIND", "AFTER", "WHERE", "ARGS"), *(
        (spec["id"], spec["kind"], ", ".join(spec["after"]) or "-", where(spec),
         short(spec["args"]))
        for spec in plan["tasks"])])
    ids = result["ids"]
    queued = ("dry run: nothing queued" if ids is None
              else "queued: " + ", ".join(ids))
    return f"goal: {plan['goal']}\n{table}\n{queued}"
