"""The ``igris-fw`` command: a thin shell over the bundle, image, slots and MicroPython tools.

Exit status: 0 done, 1 refused or failed (one line on stderr, and with
``--json`` a ``{"ok": false, "reason": ...}`` object on stdout), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, emit
from agent.compat import wall_ms
from agent.config import default_root
from agent.errors import IgrisError
from agent.identity import FleetCa, Identity, read_public_key
from agent.identity.layout import RootLayout
from firmware_tools import micropython
from firmware_tools.bundle import build_bundle, verify_bundle, wheel_version
from firmware_tools.errors import BundleRejected
from firmware_tools.firstboot import DEFAULT_DEVICE_PATHS, DevicePaths
from firmware_tools.image import MqttTls, prepare_image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igris-fw",
        description="Igris firmware tools: signed OTA bundles and first-boot images.",
    )
    parser.add_argument("--version", action="version", version=f"igris-fw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bundle = sub.add_parser("bundle", help="build or verify a signed OTA bundle",
                            description="build or verify a signed OTA bundle")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    _register_build(bundle_sub)
    _register_verify(bundle_sub)
    slot = sub.add_parser("slots", help="A/B slots on a device (first install)",
                          description="A/B slots on a device (see docs/firmware.md)")
    slot_sub = slot.add_subparsers(dest="slots_command", required=True, metavar="COMMAND")
    init = slot_sub.add_parser(
        "init", help="install the first agent wheel into slot a and point current at it",
        description="make BASE/slots/a from the wheel, point BASE/current at it and write the "
                    "boot check; later versions come as bundles (igris update apply)")
    init.add_argument("--base", type=Path, required=True, help="where the slots go")
    init.add_argument("--wheel", type=Path, required=True, help="the agent wheel")
    init.add_argument("--deps", type=Path,
                      help="site-packages holding the agent's dependencies (default: this "
                           "interpreter's)")
    add_json_flag(init)
    init.set_defaults(func=slots_init)
    micropython.register(sub)
    image = sub.add_parser("image", help="prepare a boot partition for first boot",
                           description="prepare a boot partition for first boot")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    _register_prepare(image_sub)
    return parser


def _register_build(sub: argparse._SubParsersAction) -> None:
    build = sub.add_parser(
        "build", help="make a bundle signed by an operator",
        description="make one tar file holding the wheel (and optional agent.toml), a manifest "
                    "and the operator's Ed25519 signature over it",
    )
    build.add_argument("--version", required=True, dest="bundle_version",
                       help="release version X.Y.Z (must equal the wheel's)")
    build.add_argument("--wheel", type=Path, required=True, help="the agent wheel to ship")
    build.add_argument("--config", type=Path, help="an agent.toml to ship with it")
    build.add_argument("--target", action="append", default=[],
                       help="target profile it fits (repeatable; default: all)")
    build.add_argument("--min-version", default="0.0.0",
                       help="oldest version it may replace (default 0.0.0: any)")
    add_root_option(build)
    build.add_argument("-o", "--output", type=Path, required=True, help="bundle file to write")
    add_json_flag(build)
    build.set_defaults(func=bundle_build)


def _register_verify(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser(
        "verify", help="check a bundle's signature, files, target and version",
        description="check that a bundle is signed by an operator of the fleet CA, that every "
                    "file matches the manifest, and that it fits this target and version",
    )
    verify.add_argument("bundle", type=Path, help="bundle file")
    verify.add_argument("--ca", type=Path,
                        help="fleet CA key: a ca.pub file, a CA directory or an agent root "
                             "(default: the default agent root's ca.pub)")
    verify.add_argument("--target", help="the device's target profile (default: not checked)")
    verify.add_argument("--current-version",
                        help="the version the device runs (default: rollback not checked)")
    verify.add_argument("--allow-downgrade", action="store_true",
                        help="accept a bundle older than --current-version")
    add_json_flag(verify)
    verify.set_defaults(func=bundle_verify)


def _register_prepare(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser(
        "prepare", help="write an enrolled root, config and first-boot units into DIR/igris",
        description="write into a mounted boot partition what a fresh image needs to come up "
                    "enrolled: keys, certificate, agent.toml, the wheel, a one-shot "
                    "igris-firstboot.service and its script (see docs/firmware.md)",
    )
    prep.add_argument("--boot", type=Path, required=True, help="mounted boot partition")
    prep.add_argument("--device-id", required=True, help="the device's id")
    prep.add_argument("--ca", type=Path, required=True, help="fleet CA directory")
    prep.add_argument("--group", action="append", default=[], help="group (repeatable)")
    prep.add_argument("--cap", action="append", default=[], help="capability (repeatable)")
    prep.add_argument("--role", choices=["device", "scheduler"], default="device",
                      help="certificate role (default: device)")
    prep.add_argument("--days", type=int, default=365, help="certificate validity in days")
    prep.add_argument("--target", default="generic-linux",
                      help="target profile (default: generic-linux)")
    prep.add_argument("--broker", default="",
                      help="MQTT broker URL (default: none, the agent runs alone)")
    prep.add_argument("--wheel", type=Path, help="agent wheel the first boot installs")
    prep.add_argument("--ca-file", type=Path, help="broker CA bundle for mqtts://")
    prep.add_argument("--cert-file", type=Path, help="this device's MQTT client certificate")
    prep.add_argument("--key-file", type=Path, help="its private key (moved off the card "
                                                    "on first boot)")
    prep.add_argument("--boot-mount", default=DEFAULT_DEVICE_PATHS.boot_mount,
                      help="where the device mounts this partition (default: /boot/firmware)")
    prep.add_argument("--rootfs", type=Path,
                      help="mounted root partition of the image: enable the first-boot unit "
                           "there")
    add_json_flag(prep)
    prep.set_defaults(func=image_prepare)


def slots_init(args: argparse.Namespace) -> int:
    from firmware_tools import slots

    version = wheel_version(args.wheel)
    current = slots.init(args.base.absolute(), args.wheel, version=version,
                         deps=args.deps.absolute() if args.deps else None, now_ms=wall_ms())
    emit({"base": str(args.base), "current": str(current), "version": version,
          "python": str(slots.python_of(args.base.absolute()))}, as_json=args.json)
    return 0


def bundle_build(args: argparse.Namespace) -> int:
    now = wall_ms()
    manifest = build_bundle(
        args.output.expanduser().absolute(), signer=Identity.load(resolve_root(args), now_ms=now),
        version=args.bundle_version, wheel=args.wheel, now_ms=now, config=args.config,
        targets=args.target, min_version=args.min_version,
    )
    emit({"bundle": str(args.output), **manifest.to_dict()}, as_json=args.json)
    return 0


def bundle_verify(args: argparse.Namespace) -> int:
    try:
        manifest = verify_bundle(
            args.bundle, ca_public=_ca_public(args.ca), now_ms=wall_ms(), target=args.target,
            current_version=args.current_version, allow_downgrade=args.allow_downgrade,
        )
    except BundleRejected as exc:
        if args.json:
            emit({"ok": False, "reason": exc.reason, "detail": exc.detail}, as_json=True)
        raise
    emit({"ok": True, "bundle": str(args.bundle), **manifest.to_dict()}, as_json=args.json)
    return 0


def image_prepare(args: argparse.Namespace) -> int:
    prepared = prepare_image(
        args.boot.expanduser().absolute(), FleetCa.load(args.ca.expanduser().absolute()),
        args.device_id, now_ms=wall_ms(), role=args.role, groups=tuple(args.group),
        caps=tuple(args.cap), days=args.days, target=args.target, broker=args.broker,
        wheel=args.wheel, tls=MqttTls(args.ca_file, args.cert_file, args.key_file),
        paths=DevicePaths(boot_mount=args.boot_mount), rootfs=args.rootfs,
    )
    emit({"folder": str(prepared.folder), "device_id": prepared.device_id,
          "fleet": prepared.fleet, "files": list(prepared.files)}, as_json=args.json)
    return 0


def _ca_public(path: Path | None) -> bytes:
    """The fleet CA key from a ca.pub file, or from the ca.pub in a CA directory or agent root."""
    path = (path or default_root()).expanduser()
    return read_public_key(RootLayout(path).ca_public if path.is_dir() else path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``igris-fw`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IgrisError as exc:
        print(f"igris-fw: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
