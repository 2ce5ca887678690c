"""Options shared by several commands (root, config) and how they resolve."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.config import default_root


def add_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=None,
        help="agent root (default: $IGRIS_ROOT, /var/lib/igris as root, "
             "else ~/.local/share/igris)",
    )


def resolve_root(args: argparse.Namespace) -> Path:
    return (args.root or default_root()).expanduser().absolute()
