"""``igris peers``: the peers the running agent follows, their state and health."""

from __future__ import annotations

import argparse
import time
from typing import Any

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, columns, emit
from agent.control import SOCKET_NAME, call

HELP = "list the peers this device follows: state, session, groups, last seen, health"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peers", help=HELP, description=HELP)
    add_root_option(p)
    add_json_flag(p)
    p.set_defaults(func=peers)


def _ago(ms: int, now_ms: int) -> str:
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def table(result: dict[str, Any]) -> str:
    """Aligned columns, one peer per line (what a person reads)."""
    now = int(time.time() * 1000)
    header = ("DEVICE", "STATE", "SESSION", "ROLE", "GROUPS", "LAST SEEN", "TARGET", "HEALTH")
    lines = [header]
    for p in result["peers"]:
        info = p.get("info", {})
        lines.append((
            p["device_id"], p["state"], str(p["session"]), p["role"],
            ",".join(p["groups"]) or "-", _ago(p["last_seen_ms"], now),
            info.get("target", "-"), info.get("health", {}).get("status", "-"),
        ))
    out = [columns(lines)]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result["counts"].items()))
    out.append(f"({result['scope']} scope; {counts or 'no peers yet'})")
    return "\n".join(out)


def peers(args: argparse.Namespace) -> int:
    result = call(resolve_root(args) / SOCKET_NAME, "peers")
    emit(result, as_json=args.json, human=table)
    return 0
