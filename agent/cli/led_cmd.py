"""``igris led test``: cycle the health LED through every pattern."""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, emit
from agent.config import load_config
from agent.control import SOCKET_NAME, call
from agent.device import HealthLed, load_profile
from agent.device.pins import make_pin_factory
from agent.errors import AgentNotRunning

HELP = "cycle the health LED through booting, healthy, degraded, offline and error"


def register(sub: argparse._SubParsersAction) -> None:
    led = sub.add_parser("led", help="the health LED", description="the health LED")
    led_sub = led.add_subparsers(dest="led_command", required=True, metavar="COMMAND")
    test = led_sub.add_parser(
        "test", help=HELP,
        description=HELP + ". A running agent shows them on its LED (it owns the pin); "
                    "with no agent running, this command drives the profile's LED itself.",
    )
    add_root_option(test)
    test.add_argument("--dwell", type=float, default=2.0, help="seconds per pattern")
    add_json_flag(test)
    test.set_defaults(func=led_test)


async def _cycle_locally(args: argparse.Namespace) -> list[str]:
    config = load_config(resolve_root(args))
    profile = load_profile(config.agent.target)
    led = HealthLed(profile.led.pin, active_high=profile.led.active_high,
                    pin_factory=make_pin_factory(config.health.pin_factory))
    shown = []
    try:
        async for state in led.cycle(args.dwell):
            if not args.json:
                print(f"showing {state.value}", file=sys.stderr)
            shown.append(state.value)
    finally:
        led.close()
    return shown


def led_test(args: argparse.Namespace) -> int:
    root = resolve_root(args)
    try:
        shown = call(root / SOCKET_NAME, "led.test", {"dwell_s": args.dwell},
                     timeout=args.dwell * 8 + 5)
        where = "agent"
    except AgentNotRunning:
        shown = asyncio.run(_cycle_locally(args))
        where = "local"
    emit({"shown": shown, "by": where}, as_json=args.json)
    return 0
