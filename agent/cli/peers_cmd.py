"""``igris peers``: the peers the running agent follows, their state and health."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from agent.cli.common import add_root_option, ask_agent
from agent.cli.output import add_json_flag, columns, emit

HELP = ("list the peers this device follows (and lite devices relayed by gateways): "
        "state, session, groups, last seen, health")


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
    """Aligned columns, one peer per line (what a person reads): the peers that sign for
    themselves, then the lite devices gateways relay (``LITE`` yes, ``VIA`` the gateway)."""
    now = int(time.time() * 1000)
    header = ("DEVICE", "STATE", "SESSION", "ROLE", "GROUPS", "LITE", "VIA", "LAST SEEN",
              "TARGET", "HEALTH")
    lines = [header]
    lite = result.get("lite", [])
    for p in [*result["peers"], *lite]:
        info = p.get("info", {})
        lines.append((
            p["device_id"], p["state"], str(p["session"]), p["role"],
            ",".join(p.get("groups", [])) or "-", "yes" if p.get("lite") else "-",
            p.get("via") or "-", _ago(p["last_seen_ms"], now),
            info.get("target", "-"), info.get("health", {}).get("status", "-"),
        ))
    out = [columns(lines)]
    notes = [_counts(result["counts"]) or "no peers yet"]
    if lite:
        notes.append("lite: " + _counts(Counter(p["state"] for p in lite)))
    ignored = result.get("ignored", {})
    if ignored.get("not_gateway"):
        notes.append(f"{ignored['not_gateway']} relays dropped from non-gateways")
    out.append(f"({result['scope']} scope; {'; '.join(notes)})")
    return "\n".join(out)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def peers(args: argparse.Namespace) -> int:
    result = ask_agent(args, "peers")
    emit(result, as_json=args.json, human=table)
    return 0
