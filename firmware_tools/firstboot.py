"""The files that install the agent on a device's first boot, and the agent's systemd unit.

``igris-firstboot.service`` runs ``firstboot.sh`` once from the boot
partition; the script installs the agent's dependencies into a venv, makes
the A/B slots (``igris-fw slots init``, the layout OTA updates need), moves
the enrolled root off the (world-readable FAT) boot partition, enables
``igris-agent.service`` and disables itself. Every step is safe to run again,
so a boot that stops half-way (power cut, no network for pip) is finished by
the next one.

The agent's unit is rendered here and nowhere else: :func:`render_agent_unit`
writes it for a first-boot card, and :func:`agent_unit_jinja_template` writes
the same text with Jinja variables in place of the values, which is the
``igris_agent`` Ansible role's template (a test keeps the two equal).

Paths are rendered in, not computed on the device: they are checked here
(absolute, no spaces or shell characters) so the unit files and the script
need no quoting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from agent.config.load import CONFIG_NAME
from agent.errors import ConfigInvalid

FIRSTBOOT_UNIT = "igris-firstboot.service"
AGENT_UNIT = "igris-agent.service"
SCRIPT = "firstboot.sh"
FOLDER = "igris"
CLIENT_KEY = "client.key"
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./+-]*")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]*")
_SAFE_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _check_paths(owner: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(owner, name)
        if not _SAFE_PATH.fullmatch(value) or "/../" in value + "/":
            raise ConfigInvalid(
                f"{name.replace('_', '-')} {value!r} must be an absolute path of letters, "
                "digits and '_./+-' (it is written unquoted into systemd units)"
            )


@dataclass(frozen=True, slots=True)
class DevicePaths:
    """Where things are on the device once it boots (not on the machine preparing the card).

    ``boot_mount`` is where the OS mounts the boot partition: ``/boot/firmware``
    on Raspberry Pi OS Bookworm, ``/boot`` on older releases and on Jetson.
    ``base`` holds the A/B slots (``firmware_tools/slots.py``); ``deps`` is the
    venv holding the agent's dependencies that both slots share. It lies
    outside ``base``, which the agent may write (OTA updates), so nothing the
    agent can change is ever run by root.
    """

    boot_mount: str = "/boot/firmware"
    base: str = "/opt/igris"
    deps: str = "/opt/igris-deps"
    state_dir: str = "/var/lib/igris"
    unit_dir: str = "/etc/systemd/system"

    def __post_init__(self) -> None:
        _check_paths(self, tuple(f.name for f in fields(self)))

    @property
    def folder(self) -> str:
        """The prepared ``igris/`` folder as the device sees it."""
        return f"{self.boot_mount.rstrip('/')}/{FOLDER}"

    def agent_unit(self) -> AgentUnit:
        """The agent's unit for a first-boot device: the script copies ``agent.toml`` into
        the state folder and runs the agent as the system user ``igris``."""
        return AgentUnit(base=self.base, deps=self.deps, state_dir=self.state_dir,
                         config_file=f"{self.state_dir}/{CONFIG_NAME}")


DEFAULT_DEVICE_PATHS = DevicePaths()


@dataclass(frozen=True, slots=True)
class AgentUnit:
    """What ``igris-agent.service`` names: the slots, the deps venv, the agent's folders,
    its account and its timers. The Ansible role fills the same fields from its variables
    (:data:`ANSIBLE_UNIT_VARS`)."""

    base: str
    deps: str
    state_dir: str
    config_file: str
    user: str = "igris"
    group: str = "igris"
    watchdog_sec: int = 30
    restart_sec: int = 5

    def __post_init__(self) -> None:
        _check_paths(self, ("base", "deps", "state_dir", "config_file"))
        for name in ("user", "group"):
            if not _SAFE_USER.fullmatch(getattr(self, name)):
                raise ConfigInvalid(f"{name} {getattr(self, name)!r} is not a system account "
                                    "name (lower-case letters, digits, '_' and '-')")
        for name in ("watchdog_sec", "restart_sec"):
            if getattr(self, name) <= 0:
                raise ConfigInvalid(f"{name.replace('_', '-')} must be above 0 seconds, got "
                                    f"{getattr(self, name)}")


# AgentUnit field -> the igris_agent role's variable that holds it.
ANSIBLE_UNIT_VARS = {
    "base": "igris_agent_base",
    "deps": "igris_agent_deps",
    "state_dir": "igris_agent_state_dir",
    "config_file": "igris_agent_config_file",
    "user": "igris_agent_user",
    "group": "igris_agent_group",
    "watchdog_sec": "igris_agent_watchdog_sec",
    "restart_sec": "igris_agent_restart_sec",
}


def render_script(paths: DevicePaths, wheel_name: str | None) -> str:
    """``firstboot.sh``: install, make the slots, copy the root, enable the agent, disable
    itself."""
    if wheel_name is not None and not _SAFE_NAME.fullmatch(wheel_name):
        raise ConfigInvalid(f"wheel name {wheel_name!r} has characters a script cannot carry")
    return _SCRIPT.format(folder=paths.folder, base=paths.base, deps=paths.deps,
                          state=paths.state_dir, units=paths.unit_dir, wheel=wheel_name or "",
                          firstboot_unit=FIRSTBOOT_UNIT, agent_unit=AGENT_UNIT,
                          client_key=CLIENT_KEY, config=CONFIG_NAME)


def render_firstboot_unit(paths: DevicePaths) -> str:
    """``igris-firstboot.service``: a oneshot that runs the script while it is there."""
    return _FIRSTBOOT_UNIT.format(folder=paths.folder, script=SCRIPT, agent_unit=AGENT_UNIT)


def render_agent_unit(unit: AgentUnit) -> str:
    """``igris-agent.service``: the boot check of the A/B slots, then the current slot's
    agent as a sandboxed ``Type=notify`` service."""
    return _AGENT_UNIT.format(**{f.name: getattr(unit, f.name) for f in fields(unit)})


def agent_unit_jinja_template() -> str:
    """The ``igris_agent`` role's ``igris-agent.service.j2``: :func:`render_agent_unit`'s
    text with a Jinja variable in place of each value, so both installers write one unit."""
    return _AGENT_UNIT.format(**{field: f"{{{{ {var} }}}}"
                                 for field, var in ANSIBLE_UNIT_VARS.items()})


# Doubled braces are literal braces for str.format (shell ${...} expansions).
_SCRIPT = """\
#!/bin/sh
# Igris first boot, written by igris-fw image prepare. Run once by
# {firstboot_unit}: installs the agent into A/B slots, moves the enrolled root
# off the boot partition, enables {agent_unit}, then disables itself. Safe to
# run again.
set -eu

FOLDER={folder}
BASE={base}
DEPS={deps}
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
    # The dependencies (and igris-fw) go into one venv that both slots share;
    # updates bring only the agent's wheel.
    say "installing $WHEEL and its dependencies into $DEPS"
    python3 -m venv "$DEPS"
    "$DEPS/bin/python" -m pip install --find-links "$FOLDER/wheel" "$FOLDER/wheel/$WHEEL"
    say "making the A/B slots under $BASE"
    "$DEPS/bin/python" -m firmware_tools slots init --base "$BASE" --wheel "$FOLDER/wheel/$WHEEL"
elif [ ! -x "$BASE/current/bin/python" ]; then
    say "no wheel in $FOLDER/wheel and no agent in $BASE/current: prepare the card with --wheel"
    exit 1
fi
# The agent switches slots itself (OTA updates): it owns the slots, not the deps.
chown -R igris:igris "$BASE"

umask 077
mkdir -p "$STATE/keys"
cp -R "$FOLDER/root/." "$STATE/"
cp "$FOLDER/{config}" "$STATE/{config}"
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

# Written by igris-fw image prepare and, through agent_unit_jinja_template, by the
# igris_agent Ansible role: the comments below are in every device's unit.
_AGENT_UNIT = """\
# The Igris agent, run from the A/B slots under {base} (firmware_tools/firstboot.py
# renders this unit for first-boot cards and for the igris_agent Ansible role).
[Unit]
Description=Igris edge agent
Wants=network-online.target
After=network-online.target time-sync.target

[Service]
# The agent sends READY=1 once its birth is out, and WATCHDOG=1 from its event loop:
# a loop blocked for WatchdogSec gets the agent restarted.
Type=notify
NotifyAccess=main
WatchdogSec={watchdog_sec}
# The boot check runs before every start: it counts the starts of a slot that an
# update just switched to, and points current back when that slot never confirms.
# "-": a check that fails for any other reason must not keep the agent down.
ExecStartPre=-{deps}/bin/python {base}/ota-check.py {base}
ExecStart={base}/current/bin/python -m agent run --root {state_dir} --config {config_file}
User={user}
Group={group}
# A crash, a watchdog kill and a restart request (agent.restart, an update: exit
# status 75) all start it again.
Restart=on-failure
RestartSec={restart_sec}
TimeoutStopSec=30

# Sandboxing: the whole file system is read-only but the agent's state folder and
# its slots (the boot check and updates write there).
ReadWritePaths={state_dir} {base}
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
CapabilityBoundingSet=
SystemCallArchitectures=native
SystemCallFilter=@system-service
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# No PrivateDevices= or ProtectClock= (which closes the device list): GPIO lives in
# /dev/gpiochip* and /dev/gpiomem.

[Install]
WantedBy=multi-user.target
"""
