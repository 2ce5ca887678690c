"""``igris ca init``, ``igris enroll`` and ``igris keys show``."""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlsplit

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, emit
from agent.compat import wall_ms
from agent.errors import ConfigInvalid
from agent.identity import FleetCa, Identity, enroll, key_id
from agent.identity.lite import enroll_lite


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="fleet CA (kept off the devices)",
                        description="fleet CA (kept off the devices)")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    init = ca_sub.add_parser("init", help="make a new fleet CA key pair in DIR",
                             description="make a new fleet CA key pair in DIR")
    init.add_argument("dir", type=Path, help="directory for ca.key (0600), ca.pub, ca.json")
    init.add_argument("--fleet", default="default", help="fleet name (default: default)")
    add_json_flag(init)
    init.set_defaults(func=ca_init)

    en = sub.add_parser(
        "enroll", help="write keys and a CA-signed certificate into an agent root",
        description="write keys (0600), a certificate signed by the fleet CA and the CA's "
                    "public key into ROOT; an existing root keeps its keys (renewal). With "
                    "--lite: a new HMAC key and the config.json of a MicroPython lite device "
                    "into ROOT, and its record into the gateway's root (docs/lite.md)",
    )
    en.add_argument("--root", type=Path, required=True, help="agent root to enroll")
    en.add_argument("--ca", type=Path, help="fleet CA directory (not with --lite)")
    en.add_argument("--device-id", required=True, help="device (or operator) id")
    en.add_argument("--role", choices=["device", "operator", "scheduler"], default="device",
                    help="what the certificate lets it do (default: device)")
    en.add_argument("--group", action="append", default=[], help="group (repeatable)")
    en.add_argument("--cap", action="append", default=[],
                    help="capability, e.g. model:digits (repeatable)")
    en.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    _add_lite_options(en)
    add_json_flag(en)
    en.set_defaults(func=enroll_cmd)

    keys = sub.add_parser("keys", help="this root's identity",
                          description="this root's identity")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    show = keys_sub.add_parser("show", help="print the public keys and certificate fields",
                               description="print the public keys and certificate fields")
    add_root_option(show)
    add_json_flag(show)
    show.set_defaults(func=keys_show)


def ca_init(args: argparse.Namespace) -> int:
    ca = FleetCa.init(args.dir.expanduser().absolute(), args.fleet)
    emit({"dir": str(ca.directory), "fleet": ca.fleet, "ca_key_id": key_id(ca.public_key)},
         as_json=args.json)
    return 0


def _add_lite_options(en: argparse.ArgumentParser) -> None:
    lite = en.add_argument_group("lite devices (--lite)")
    lite.add_argument("--lite", action="store_true",
                      help="enroll a MicroPython lite device (HMAC key, no certificate)")
    lite.add_argument("--gateway", help="the gateway's device id (default: --gateway-root's)")
    lite.add_argument("--gateway-root", type=Path,
                      help="the gateway agent's root: its record goes into ROOT/lite/<id>.json")
    lite.add_argument("--fleet", help="fleet name (default: --gateway-root's)")
    lite.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                      help="the broker the board connects to, mqtt://HOST:PORT")
    lite.add_argument("--pin", action="append", default=[], metavar="NAME=GPIO",
                      help="a pin the board may read (repeatable), e.g. relay=5")
    lite.add_argument("--writable", action="append", default=[], metavar="NAME",
                      help="a pin gpio.write may drive (repeatable; must be a --pin)")
    lite.add_argument("--heartbeat-s", type=float, default=10.0, help="default 10")
    lite.add_argument("--telemetry-s", type=float, default=30.0, help="default 30")


def enroll_cmd(args: argparse.Namespace) -> int:
    root = args.root.expanduser().absolute()
    if args.lite:
        return _enroll_lite(root, args)
    if args.ca is None:
        raise ConfigInvalid("igris enroll: --ca CA_DIR is required (or --lite for a lite "
                            "device)")
    cert = enroll(
        root, FleetCa.load(args.ca.expanduser().absolute()), args.device_id, now_ms=wall_ms(),
        role=args.role, groups=tuple(args.group), caps=tuple(args.cap), days=args.days,
    )
    emit({"root": str(root), "device_id": cert.subject, "role": cert.role,
          "fleet": cert.fleet, "groups": list(cert.groups), "caps": list(cert.caps),
          "sign_key_id": key_id(cert.sign_key), "not_after_ms": cert.not_after_ms},
         as_json=args.json)
    return 0


def _enroll_lite(root: Path, args: argparse.Namespace) -> int:
    gateway, fleet = args.gateway, args.fleet
    gateway_root = args.gateway_root.expanduser().absolute() if args.gateway_root else None
    if gateway_root is not None:
        gw = Identity.load(gateway_root)
        if gateway not in (None, gw.device_id):
            raise ConfigInvalid(f"--gateway {gateway!r} but {gateway_root} is enrolled as "
                                f"{gw.device_id!r}; drop --gateway or fix --gateway-root")
        gateway, fleet = gw.device_id, fleet or gw.fleet
    if gateway is None or fleet is None:
        raise ConfigInvalid("igris enroll --lite needs --gateway-root GATEWAY_ROOT (or both "
                            "--gateway ID and --fleet NAME)")
    url = urlsplit(args.broker)
    if url.scheme != "mqtt" or not url.hostname:
        raise ConfigInvalid(f"--broker {args.broker!r}: expected mqtt://HOST:PORT (lite "
                            "boards speak plain MQTT)")
    done = enroll_lite(root, device_id=args.device_id, fleet=fleet, gateway=gateway,
                       now_ms=wall_ms(), gateway_root=gateway_root,
                       broker_host=url.hostname, broker_port=url.port or 1883,
                       pins=_pins(args.pin), writable=tuple(args.writable),
                       heartbeat_s=args.heartbeat_s, telemetry_s=args.telemetry_s)
    emit({"device_id": done.record.device_id, "fleet": fleet, "gateway": gateway,
          "config": str(done.config_path),
          "record": str(done.record_path) if done.record_path else None}, as_json=args.json)
    return 0


def _pins(pairs: list[str]) -> dict[str, int]:
    pins = {}
    for pair in pairs:
        name, _, gpio = pair.partition("=")
        if not gpio.isdigit():
            raise ConfigInvalid(f"--pin {pair!r}: expected NAME=GPIO, e.g. relay=5")
        pins[name] = int(gpio)
    return pins


def keys_show(args: argparse.Namespace) -> int:
    emit(Identity.load(resolve_root(args)).public_summary(), as_json=args.json)
    return 0
