"""``igris ca init``, ``igris enroll`` and ``igris keys show``."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, emit
from agent.compat import wall_ms
from agent.identity import FleetCa, Identity, enroll, key_id


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
                    "public key into ROOT; an existing root keeps its keys (renewal)",
    )
    en.add_argument("--root", type=Path, required=True, help="agent root to enroll")
    en.add_argument("--ca", type=Path, required=True, help="fleet CA directory")
    en.add_argument("--device-id", required=True, help="device (or operator) id")
    en.add_argument("--role", choices=["device", "operator", "scheduler"], default="device",
                    help="what the certificate lets it do (default: device)")
    en.add_argument("--group", action="append", default=[], help="group (repeatable)")
    en.add_argument("--cap", action="append", default=[],
                    help="capability, e.g. model:digits (repeatable)")
    en.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
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


def enroll_cmd(args: argparse.Namespace) -> int:
    root = args.root.expanduser().absolute()
    cert = enroll(
        root, FleetCa.load(args.ca.expanduser().absolute()), args.device_id, now_ms=wall_ms(),
        role=args.role, groups=tuple(args.group), caps=tuple(args.cap), days=args.days,
    )
    emit({"root": str(root), "device_id": cert.subject, "role": cert.role,
          "fleet": cert.fleet, "groups": list(cert.groups), "caps": list(cert.caps),
          "sign_key_id": key_id(cert.sign_key), "not_after_ms": cert.not_after_ms},
         as_json=args.json)
    return 0


def keys_show(args: argparse.Namespace) -> int:
    emit(Identity.load(resolve_root(args)).public_summary(), as_json=args.json)
    return 0
