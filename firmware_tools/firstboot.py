"""The files that install the agent on a device's first boot: a POSIX sh script and two units.

``igris-firstboot.service`` runs ``firstboot.sh`` once from the boot
partition; the script installs the agent, moves the enrolled root off the
(world-readable FAT) boot partition, enables ``igris-agent.service`` and
disables itself. Every step is safe to run again, so a boot that stops
half-way (power cut, no network for pip) is finished by the next one.

Paths are rendered in, not computed on the device: they are checked here
(absolute, no spaces or shell characters) so the unit files and the script
need no quoting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from agent.errors import ConfigInvalid

FIRSTBOOT_UNIT = "igris-firstboot.service"
AGENT_UNIT = "igris-agent.service"
SCRIPT = "firstboot.sh"
FOLDER = "igris"
CLIENT_KEY = "client.key"
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./+-]*")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]*")


@dataclass(frozen=True, slots=True)
class DevicePaths:
    """Where things are on the device once it boots (not on the machine preparing the card).

    ``boot_mount`` is where the OS mounts the boot partition: ``/boot/firmware``
    on Raspberry Pi OS Bookworm, ``/boot`` on older releases and on Jetson.
    """

    boot_mount: str = "/boot/firmware"
    venv: str = "/opt/igris/venv"
    state_dir: str = "/var/lib/igris"
    unit_dir: str = "/etc/systemd/system"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not _SAFE_PATH.fullmatch(value) or "/../" in value + "/":
                raise ConfigInvalid(
                    f"{f.name.replace('_', '-')} {value!r} must be an absolute path of letters, "
                    "digits and '_./+-' (it is written unquoted into systemd units)"
                )

    @property
    def folder(self) -> str:
        """The prepared ``igris/`` folder as the device sees it."""
        return f"{self.boot_mount.rstrip('/')}/{FOLDER}"


DEFAULT_DEVICE_PATHS = DevicePaths()


def render_script(paths: DevicePaths, wheel_name: str | None) -> str:
    """``firstboot.sh``: install, copy the root, enable the agent, disable itself."""
    if wheel_name is not None and not _SAFE_NAME.fullmatch(wheel_name):
        raise ConfigInvalid(f"wheel name {wheel_name!r} has characters a script cannot carry")
    return _SCRIPT.format(folder=paths.folder, venv=paths.venv, state=paths.state_dir,
                          units=paths.unit_dir, wheel=wheel_name or "",
                          firstboot_unit=FIRSTBOOT_UNIT, agent_unit=AGENT_UNIT,
                          client_key=CLIENT_KEY)


def render_firstboot_unit(paths: DevicePaths) -> str:
    """``igris-firstboot.service``: a oneshot that runs the script while it is there."""
    return _FIRSTBOOT_UNIT.format(folder=paths.folder, script=SCRIPT, agent_unit=AGENT_UNIT)


def render_agent_unit(paths: DevicePaths) -> str:
    """``igris-agent.service``: the agent as a sandboxed ``Type=notify`` service."""
    return _AGENT_UNIT.format(venv=paths.venv, state=paths.state_dir)


# Doubled braces are literal braces for str.format (shell ${...} expansions).
_SCRIPT = """\
#!/bin/sh
# Igris first boot, written by igris-fw image prepare. Run once by
# {firstboot_unit}: installs the agent, moves the enrolled root off the boot
# partition, enables {agent_unit}, then disables itself. Safe to run again.
set -eu

FOLDER={folder}
VENV={venv}
STATE={state}
UNITS={units}
WHEEL={wheel}

say() {{ echo "igris-firstboot: $*"; }}

if ! id -u igris >/dev/null 2>&1; then
    say "adding the system user igris"
    useradd --system --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin igris
fi
if getent group gpio >/dev/null 2>&1; then
    usermod -a -G gpio igris
fi

if [ -n "$WHEEL" ]; then
    say "installing $WHEEL into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --find-links "$FOLDER/wheel" "$FOLDER/wheel/$WHEEL"
elif [ ! -x "$VENV/bin/igris" ]; then
    say "no wheel in $FOLDER/wheel and no agent in $VENV: prepare the card with --wheel"
    exit 1
fi

umask 077
mkdir -p "$STATE/keys"
cp -R "$FOLDER/root/." "$STATE/"
cp "$FOLDER/agent.toml" "$STATE/agent.toml"
if [ -d "$FOLDER/tls" ]; then
    mkdir -p "$STATE/tls"
    cp -R "$FOLDER/tls/." "$STATE/tls/"
fi
chmod 0700 "$STATE" "$STATE/keys"
chmod 0600 "$STATE"/keys/*
chown -R igris:igris "$STATE"

cp "$FOLDER/{agent_unit}" "$UNITS/{agent_unit}"
chmod 0644 "$UNITS/{agent_unit}"
systemctl daemon-reload
systemctl enable {agent_unit}

# The boot partition is FAT: whoever holds the card can read it. From here on
# the private keys live only under $STATE.
rm -f "$FOLDER"/root/keys/* "$FOLDER/tls/{client_key}"
systemctl disable {firstboot_unit}
systemctl start --no-block {agent_unit}
say "done: {agent_unit} enabled and started"
"""

_FIRSTBOOT_UNIT = """\
[Unit]
Description=Igris first boot: install and enroll the agent from the boot partition
ConditionPathExists={folder}/{script}
Wants=network-online.target
After=network-online.target local-fs.target
Before={agent_unit}

[Service]
Type=oneshot
ExecStart=/bin/sh {folder}/{script}
TimeoutStartSec=30min
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

_AGENT_UNIT = """\
[Unit]
Description=Igris edge agent
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={venv}/bin/igris run --root {state}
User=igris
Group=igris
WatchdogSec=30
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state}
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""
