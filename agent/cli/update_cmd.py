"""``igris update apply|status``: over-the-air updates of this device's A/B slots.

``apply`` installs a signed bundle into the slot not running and switches to
it (``firmware_tools/slots.py``), then asks the running agent to restart; the
new version has to prove itself healthy before its deadline or the device
rolls back by itself. For a group or the fleet, send the bus command
instead: ``igris cmd group:kitchen ota.apply url=... sha256=...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import agent
from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, emit, rows
from agent.config import load_config
from agent.control import SOCKET_NAME, call
from agent.errors import AgentNotRunning, ConfigInvalid
from agent.identity import Identity

HELP = "over-the-air updates of this device (A/B slots with automatic rollback)"
DEFAULT_BASE = Path("/opt/igris")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("update", help=HELP, description=HELP)
    update_sub = p.add_subparsers(dest="update_command", required=True, metavar="COMMAND")
    apply = update_sub.add_parser(
        "apply", help="install a signed bundle into the other slot and restart into it",
        description="install a signed bundle (a path, file:// or http(s):// URL) into the slot "
                    "not running, switch to it and restart the agent; the new version must "
                    "prove healthy before --deadline or the device rolls back by itself")
    apply.add_argument("source", metavar="BUNDLE_OR_URL", help="the bundle (igris-fw bundle "
                                                               "build makes one)")
    apply.add_argument("--sha256", required=True, help="the bundle's SHA-256 (hex)")
    apply.add_argument("--allow-downgrade", action="store_true",
                       help="install a version older than the running one")
    apply.add_argument("--deadline", type=float, default=120.0, metavar="S",
                       help="seconds the new version has to prove healthy (default 120)")
    apply.add_argument("--config", type=Path,
                       help="the agent's agent.toml, for its target profile (default: "
                            "$IGRIS_CONFIG or <root>/agent.toml)")
    apply.add_argument("--no-restart", action="store_true",
                       help="switch only; the agent runs the new slot at its next start")
    _common(apply)
    apply.set_defaults(func=apply_cmd)
    status = update_sub.add_parser("status", help="the slots, the pending update, the last "
                                                  "outcome", description="the A/B slots: their "
                                   "versions, which runs, a pending update and the last outcome")
    _common(status)
    status.set_defaults(func=status_cmd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, help="where the slots are (default: the slots this "
                                             f"igris runs from, else {DEFAULT_BASE})")
    add_root_option(p)
    add_json_flag(p)


def _base(args: argparse.Namespace) -> Path:
    from agent.runtime.ota import slot_of_this_agent

    if args.base is not None:
        return args.base
    where = slot_of_this_agent()
    return where[0] if where else DEFAULT_BASE


def apply_cmd(args: argparse.Namespace) -> int:
    from agent.compat import wall_ms
    from firmware_tools import slots

    if args.deadline <= 0:
        raise ConfigInvalid(f"--deadline must be above 0 seconds, got {args.deadline}")
    root, base = resolve_root(args), _base(args)
    state = slots.status(base)
    running = state["slots"].get(state["current"] or "", {}).get("version", agent.__version__)
    done: dict[str, Any] = slots.apply(
        base, args.source, sha256=args.sha256, ca_public=Identity.load(root).ca_public,
        target=load_config(root, config_file=args.config).agent.target,
        current_version=running, now_ms=wall_ms,
        allow_downgrade=args.allow_downgrade, deadline_s=args.deadline)
    done["restarting"] = False
    if not args.no_restart:
        try:
            call(root / SOCKET_NAME, "restart", timeout=5)
            done["restarting"] = True
        except AgentNotRunning:
            done["note"] = "no agent running on this root: the new slot runs at its next start"
    emit(done, as_json=args.json, human=rows)
    return 0


def status_cmd(args: argparse.Namespace) -> int:
    from firmware_tools import slots

    emit(slots.status(_base(args)), as_json=args.json, human=rows)
    return 0
