"""The ``igris`` command: parse, dispatch, and turn Igris errors into one clear line.

A thin shell over the library (sqlite-utils style): every command calls the
same functions the agent uses, or asks the running agent over its control
socket.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import IgrisError

COMMANDS: dict[str, str] = {
    "run": "run_cmd", "status": "status_cmd", "peers": "peers_cmd", "cmd": "cmd_cmd",
    "policy": "policy_cmd", "ledger": "ledger_cmd", "block": "block_cmd", "mem": "mem_cmd",
    "task": "task_cmd", "plan": "plan_cmd", "ca": "identity_cmd", "enroll": "identity_cmd",
    "keys": "identity_cmd", "led": "led_cmd", "infer": "ai_cmd", "route": "ai_cmd",
    "bench": "bench_cmd", "update": "update_cmd", "version": "version_cmd",
}
"""Each top-level command and the module (in ``agent.cli``) that registers it."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or, when ``argv`` names one, of that one only.

    Each command's module is imported only when its command runs: ``igris
    run`` stays free of the other commands' imports (the planner's templates,
    the bench, ...), which would otherwise sit in the agent's memory for good.
    """
    parser = argparse.ArgumentParser(
        prog="igris",
        description="Igris: an embedded-first edge agent for Raspberry Pi and Jetson fleets.",
    )
    parser.add_argument("--version", action="version", version=f"igris {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((arg for arg in argv or () if not arg.startswith("-")), None)
    modules = [COMMANDS[named]] if named in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(f"agent.cli.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``igris`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except IgrisError as exc:
        print(f"igris: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
