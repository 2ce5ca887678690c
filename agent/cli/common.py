"""Options shared by several commands (root, config), how they resolve, and asking the
agent of a root."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.config import default_root


def add_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=None,
        help="agent root (default: $IGRIS_ROOT, /var/lib/igris as root, "
             "else ~/.local/share/igris)",
    )


def resolve_root(args: argparse.Namespace) -> Path:
    return (args.root or default_root()).expanduser().absolute()


def ask_agent(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None,
              *, timeout: float = 10.0) -> Any:
    """Call ``method`` on the control socket of the agent running in ``--root``."""
    # Here, not at the top: commands that never ask an agent (ledger, enroll, ...)
    # do not load the control package (its server side brings asyncio).
    from agent.control import SOCKET_NAME, call

    return call(resolve_root(args) / SOCKET_NAME, method, params, timeout=timeout)
