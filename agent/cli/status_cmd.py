"""``igris status``: what the running agent says about itself."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.common import add_root_option, ask_agent
from agent.cli.output import add_json_flag, emit, rows

HELP = "show the running agent's device, health, LED, broker and uptime"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help=HELP, description=HELP)
    add_root_option(p)
    add_json_flag(p)
    p.set_defaults(func=status)


def _human(s: dict[str, Any]) -> str:
    broker = s["broker"]
    link = ("no broker (alone)" if broker["url"] is None
            else f"{broker['url']} ({'connected' if broker['connected'] else 'DISCONNECTED'})")
    health = s["health"]
    summary = {
        "device": f"{s['device_id']} ({s['role']}, fleet {s['fleet']})",
        "target": s["target"],
        "health": health.get("status", "-") + (
            f" ({'; '.join(health['reasons'])})" if health.get("reasons") else ""),
        "led": s["led"],
        "broker": link,
        "uptime": f"{s['uptime_s']:.0f} s (session {s['session']}, pid {s['pid']})",
        "messages": (f"{s['messages']['accepted']} accepted, "
                     f"{sum(s['messages']['dropped'].values())} dropped"),
        "peers": ", ".join(f"{n} {state}" for state, n in sorted(s["peers"].items()))
                 or "none yet",
        "policy": f"version {s['policy_version']}",
        "ledger": f"{s['ledger']['size']} entries, {s['ledger']['verified']['state']}"
                  + (f", flags {s['ledger']['checkpoint_flags']}"
                     if s["ledger"]["checkpoint_flags"] else ""),
        "error": s["error"],
        "versions": s["versions"],
    }
    return rows(summary)


def status(args: argparse.Namespace) -> int:
    result = ask_agent(args, "status")
    emit(result, as_json=args.json, human=_human)
    return 0
