"""``igris version``."""

from __future__ import annotations

import argparse

from agent.cli.output import add_json_flag, emit
from agent.versions import versions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the agent's version",
                       description="print the agent's version")
    add_json_flag(p)
    p.set_defaults(func=version)


def version(args: argparse.Namespace) -> int:
    emit(versions(), as_json=args.json)
    return 0
