"""The ``igris`` command: parse, dispatch, and turn Igris errors into one clear line.

A thin shell over the library (sqlite-utils style): every command calls the
same functions the agent uses, or asks the running agent over its control
socket.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import (
    ai_cmd,
    bench_cmd,
    block_cmd,
    cmd_cmd,
    identity_cmd,
    led_cmd,
    ledger_cmd,
    mem_cmd,
    peers_cmd,
    plan_cmd,
    policy_cmd,
    run_cmd,
    status_cmd,
    task_cmd,
    version_cmd,
)
from agent.errors import IgrisError

COMMANDS = (
    run_cmd, status_cmd, peers_cmd, cmd_cmd, policy_cmd, ledger_cmd, block_cmd, mem_cmd,
    identity_cmd, led_cmd, ai_cmd, task_cmd, plan_cmd, bench_cmd, version_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igris",
        description="Igris: an embedded-first edge agent for Raspberry Pi and Jetson fleets.",
    )
    parser.add_argument("--version", action="version", version=f"igris {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``igris`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IgrisError as exc:
        print(f"igris: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
