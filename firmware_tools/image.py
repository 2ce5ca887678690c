"""Prepare a mounted boot partition so a fresh image comes up enrolled on its first boot.

Everything goes into one ``igris/`` folder on the partition (layout in
``docs/firmware.md``): the device's enrolled root (written by the same
:func:`agent.identity.enroll` as ``igris enroll``), ``agent.toml``, the
optional wheel and MQTT TLS files, and the first-boot script and units from
:mod:`firmware_tools.firstboot`. The configuration is validated with the
agent's own schema before anything is written, so a card never carries a
config the agent would refuse.

>>> prepare_image(Path("/media/bootfs"), FleetCa.load(Path("fleet-ca")), "pi-07",
...               now_ms=wall_ms(), target="rpi4")            # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.schema import build_config
from agent.device import load_profile
from agent.identity import FleetCa, enroll
from firmware_tools.errors import BootDirInvalid
from firmware_tools.firstboot import (
    AGENT_UNIT,
    CLIENT_KEY,
    CONFIG_NAME,
    DEFAULT_DEVICE_PATHS,
    FIRSTBOOT_UNIT,
    FOLDER,
    SCRIPT,
    DevicePaths,
    render_agent_unit,
    render_firstboot_unit,
    render_script,
)


@dataclass(frozen=True, slots=True)
class MqttTls:
    """Files for ``mqtts://``: the broker's CA bundle and this device's client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def copies(self) -> dict[str, Path]:
        """Name under ``igris/tls/`` -> source file, for the files that were given."""
        names = {"ca.pem": self.ca_file, "client.pem": self.cert_file, CLIENT_KEY: self.key_file}
        return {name: src for name, src in names.items() if src is not None}


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """What :func:`prepare_image` wrote: the folder, the device, and every file's name."""

    folder: Path
    device_id: str
    fleet: str
    files: tuple[str, ...]


def prepare_image(
    boot: Path,
    ca: FleetCa,
    device_id: str,
    *,
    now_ms: int,
    role: str = "device",
    groups: tuple[str, ...] = (),
    caps: tuple[str, ...] = (),
    days: int = 365,
    target: str = "generic-linux",
    broker: str = "",
    wheel: Path | None = None,
    tls: MqttTls = MqttTls(),
    paths: DevicePaths = DEFAULT_DEVICE_PATHS,
    rootfs: Path | None = None,
) -> PreparedImage:
    """Write ``boot/igris/`` for ``device_id``; with ``rootfs``, also enable the first-boot unit.

    ``rootfs`` is the image's root partition, mounted next to ``boot``: the
    first-boot unit is copied into its ``/etc/systemd/system`` and enabled
    there, as ``systemctl enable`` would on the device.
    """
    if not boot.is_dir():
        raise BootDirInvalid(
            f"--boot {str(boot)!r} is not a directory; mount the image's boot partition "
            "(e.g. /media/$USER/bootfs) and name its mount point"
        )
    if rootfs is not None and not (rootfs / "etc").is_dir():
        raise BootDirInvalid(f"--rootfs {str(rootfs)!r} has no etc/; name the mounted root "
                             "partition of the image")
    _check_inputs(wheel, tls)
    config_text = _render_config(device_id, ca.fleet, target, broker, tls, paths)
    folder = boot / FOLDER
    _enroll_root(folder / "root", ca, device_id, now_ms=now_ms, role=role, groups=groups,
                 caps=caps, days=days)
    _write_file(folder / CONFIG_NAME, config_text.encode())
    for name, src in tls.copies().items():
        _write_file(folder / "tls" / name, src.read_bytes(),
                    0o600 if name == CLIENT_KEY else 0o644)
    if wheel is not None:
        _write_file(folder / "wheel" / wheel.name, wheel.read_bytes())
    _write_file(folder / SCRIPT, render_script(paths, wheel.name if wheel else None).encode(),
                0o755)
    _write_file(folder / FIRSTBOOT_UNIT, render_firstboot_unit(paths).encode())
    _write_file(folder / AGENT_UNIT, render_agent_unit(paths.agent_unit()).encode())
    if rootfs is not None:
        _enable_in_rootfs(rootfs, folder / FIRSTBOOT_UNIT, paths)
    files = sorted(str(p.relative_to(boot)) for p in folder.rglob("*") if p.is_file())
    return PreparedImage(folder, device_id, ca.fleet, tuple(files))


def _enroll_root(root: Path, ca: FleetCa, device_id: str, **options: Any) -> None:
    """Enroll in a private staging dir, then copy the result to ``root`` on the card.

    A FAT boot partition refuses ``chmod`` to 0600 (EPERM), which the
    agent's key writer does, and shows every file as readable by all, which
    its key reader refuses. So the keys are made (or, for a card prepared
    before, kept) on a local file system; the first-boot script restores
    their modes under the state directory.
    """
    with tempfile.TemporaryDirectory(prefix="igris-root-") as tmp:
        staging = Path(tmp) / "root"
        if root.is_dir():  # prepared before: keep the device's keys, renew its certificate
            _copy_tree(root, staging)
        enroll(staging, ca, device_id, **options)
        _copy_tree(staging, root)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file():
            private = path.parent.name == "keys"
            _write_file(dst / path.relative_to(src), path.read_bytes(),
                        0o600 if private else 0o644)


def _write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` with ``mode`` set at creation, never by chmod (which FAT refuses)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_inputs(wheel: Path | None, tls: MqttTls) -> None:
    for option, path in (("--wheel", wheel), ("--ca-file", tls.ca_file),
                         ("--cert-file", tls.cert_file), ("--key-file", tls.key_file)):
        if path is not None and not path.is_file():
            raise BootDirInvalid(f"{option} {str(path)!r} does not exist")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise BootDirInvalid("--cert-file and --key-file go together: the broker needs both "
                             "the client certificate and its key")


def _render_config(device_id: str, fleet: str, target: str, broker: str, tls: MqttTls,
                   paths: DevicePaths) -> str:
    """``agent.toml`` as the device will read it, checked by the agent's own schema first."""
    load_profile(target)
    tls_dir = f"{paths.state_dir}/tls"
    mqtt = {"broker": broker}
    names = {"ca_file": "ca.pem", "cert_file": "client.pem", "key_file": CLIENT_KEY}
    given = tls.copies()
    mqtt.update({key: f"{tls_dir}/{name}" for key, name in names.items() if name in given})
    sections = {"agent": {"device_id": device_id, "fleet": fleet, "target": target},
                "mqtt": mqtt}
    build_config([("igris-fw image prepare", sections)])
    lines = [f"# Written by igris-fw image prepare; copied to {paths.state_dir}/{CONFIG_NAME} "
             "on first boot.", ""]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        # A JSON string is a valid TOML basic string (same escapes).
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _enable_in_rootfs(rootfs: Path, unit: Path, paths: DevicePaths) -> None:
    unit_dir = rootfs / paths.unit_dir.lstrip("/")
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(unit, unit_dir / FIRSTBOOT_UNIT)
    link = wants / FIRSTBOOT_UNIT
    if link.is_symlink() or link.exists():
        link.unlink()
    # Absolute, as systemctl enable writes it: it resolves inside the device's own root.
    os.symlink(f"{paths.unit_dir}/{FIRSTBOOT_UNIT}", link)
