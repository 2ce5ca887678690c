"""``igris run``: start the agent in the foreground (systemd runs it this way too)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import warnings
from pathlib import Path

from agent.cli.common import add_root_option, resolve_root
from agent.config import load_config

HELP = "run the agent in the foreground until SIGTERM/SIGINT"
EPILOG = """\
Every setting can also come from agent.toml in the root or from the
environment as IGRIS_<SECTION>_<KEY> (e.g. IGRIS_MQTT_BROKER). With no
broker, the agent runs alone on the in-process transport. With nothing
enrolled in the root, it makes a development CA and enrolls itself.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_option(p)
    p.add_argument("--config", type=Path,
                   help="config file (default: <root>/agent.toml)")
    p.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT ('' = no broker)")
    p.add_argument("--fleet", help="fleet name (must match the certificate)")
    p.add_argument("--device-id", help="device id (must match the certificate)")
    p.add_argument("--target", help="hardware profile, e.g. rpi4, pi-zero-2w, generic-linux")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default: info)")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    pairs = {
        ("mqtt", "broker"): args.broker,
        ("agent", "fleet"): args.fleet,
        ("agent", "device_id"): args.device_id,
        ("agent", "target"): args.target,
        ("agent", "log_level"): args.log_level,
    }
    out: dict[str, dict[str, str]] = {}
    for (section, key), value in pairs.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def _one_line_warning(message, category, *_args, **_kw) -> str:  # type: ignore[no-untyped-def]
    return f"{category.__name__}: {message}"


def run(args: argparse.Namespace) -> int:
    root = resolve_root(args)
    config = load_config(root, config_file=args.config, overrides=_overrides(args))
    logging.basicConfig(
        level=config.agent.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    warnings.formatwarning = _one_line_warning
    # Imported here so commands that only talk to a running agent stay light.
    from agent.runtime import serve

    return asyncio.run(serve(root, config))
