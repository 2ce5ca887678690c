"""``igris cmd TARGET COMMAND [key=value ...]``: a signed command to the fleet, replies shown.

Signs with the operator enrolled in ``--root`` and talks to the broker
directly (no running agent needed). It first reads the fleet's retained
presence, so it knows who should answer: the command returns as soon as
every expected device has answered (or the mode is met), and lists the
devices that did not, with the reason. Exit status: 0 complete, 2 not
complete (some device missing or refusing), 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, columns, emit
from agent.errors import CommandError

HELP = "send a signed command to a device, group:<name> or all, and show the replies"
INCOMPLETE = 2
_SETTLE_QUIET_S = 0.15
_SETTLE_MAX_S = 2.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cmd", help=HELP,
        description=HELP + ". Arguments are key=value; values are JSON when they parse as "
                    "JSON (numbers, true/false, objects), text otherwise. Exit status 0 when "
                    "the request is complete, 2 when a device is missing or refused.",
    )
    p.add_argument("target", metavar="TARGET", help="a device id, group:<name>, or all")
    p.add_argument("command", metavar="COMMAND", help="e.g. ping, status, gpio.write")
    p.add_argument("args", nargs="*", metavar="key=value", help="command arguments")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    p.add_argument("--mode", default="all",
                   help="all (default), first, any, or quorum:N")
    add_root_option(p)
    p.add_argument("--broker", help="mqtt://HOST:PORT (default: [mqtt] broker of --root)")
    add_json_flag(p)
    p.set_defaults(func=cmd)


def parse_args(pairs: list[str]) -> dict[str, Any]:
    """``["pin=relay", "on=true"]`` → ``{"pin": "relay", "on": True}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"argument {pair!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


async def _request(root: Path, broker: str | None, args: argparse.Namespace,
                   command_args: dict[str, Any]) -> dict[str, Any]:
    from agent.bus import Bus, parse_mode
    from agent.cli.operator_session import operator_session
    from agent.compat import wall_ms
    from agent.db import Database
    from agent.mesh import Membership

    parse_mode(args.mode)  # a bad mode fails before anything is sent
    async with operator_session(root, broker=broker) as session:
        db = Database.open(Path(":memory:"))
        try:
            membership = Membership(session.channel, session.topics, db, scope="fleet",
                                    suspect_after_s=30, dead_after_s=90,
                                    now_ms=wall_ms, announce=False)
            heard = asyncio.Event()
            membership.add_listener(lambda _peer: heard.set())
            await membership.start()
            await _settle(heard)
            bus = Bus(session.channel, session.topics, membership=membership,
                      serves_commands=False)
            await bus.start()
            progress = _Progress(enabled=not args.json and sys.stderr.isatty())
            result = await bus.request(args.target, args.command, command_args,
                                       timeout=args.timeout, mode=args.mode,
                                       on_reply=progress.reply)
            progress.clear()
            await membership.stop()
        finally:
            db.close()
    return result.to_dict()


async def _settle(heard: asyncio.Event) -> None:
    # Retained presence streams in right after the subscription; it has no end
    # marker, so wait until it has been quiet for a moment (bounded).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SETTLE_MAX_S
    while loop.time() < deadline:
        heard.clear()
        try:
            await asyncio.wait_for(heard.wait(), _SETTLE_QUIET_S)
        except asyncio.TimeoutError:
            return


class _Progress:
    """A one-line count of replies on stderr while waiting (only on a terminal)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.count = 0

    def reply(self, reply: Any) -> None:
        self.count += 1
        if self.enabled:
            sys.stderr.write(f"\r{self.count} replies (last: {reply.device})   ")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled and self.count:
            sys.stderr.write("\r" + " " * 60 + "\r")


def table(result: dict[str, Any]) -> str:
    rows = [("DEVICE", "OK", "MS", "RESULT")]
    for dev, reply in result["replies"].items():
        shown = reply["result"] if reply["ok"] else reply["error"]
        text = json.dumps(shown, sort_keys=True, default=str)
        rows.append((dev, "yes" if reply["ok"] else "no", f"{reply['ms']:.1f}",
                     text if len(text) <= 70 else text[:67] + "..."))
    lines = [columns(rows)]
    for dev, why in result["missing"].items():
        if dev not in result["replies"]:
            lines.append(f"{dev}  missing: {why}")
    answered = sum(1 for r in result["replies"].values() if r["ok"])
    lines.append(f"({'complete' if result['complete'] else 'NOT complete'}: {answered} ok of "
                 f"{len(result['expected'])} expected, {result['elapsed_ms']:.0f} ms, "
                 f"mode {result['mode']})")
    return "\n".join(lines)


def cmd(args: argparse.Namespace) -> int:
    command_args = parse_args(args.args)
    result = asyncio.run(_request(resolve_root(args), args.broker, args, command_args))
    emit(result, as_json=args.json, human=table)
    return 0 if result["complete"] else INCOMPLETE
