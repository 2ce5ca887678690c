"""First-boot preparation: a real enrolled root that starts a real agent, real unit files
checked by systemd-analyze, and the first-boot script run under sh against a temp tree."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.compat import wall_ms
from agent.errors import ConfigInvalid, ProfileNotFound
from agent.identity import Identity
from firmware_tools import BootDirInvalid, DevicePaths, MqttTls, prepare_image, slots
from firmware_tools.cli import main
from firmware_tools.firstboot import AgentUnit, render_agent_unit
from tests.support.agent_process import AgentProcess, short_root

VENV = Path(sys.prefix)  # the venv running the tests: its python has the agent's dependencies


@pytest.fixture
def boot():
    """A stand-in for a mounted boot partition, short enough for the agent's control socket."""
    path = short_root("boot")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def slot_base(tmp_path, agent_wheel) -> Path:
    """A/B slots as ``igris-fw slots init`` makes them, sharing this venv's dependencies."""
    base = tmp_path / "opt-igris"
    slots.init(base, agent_wheel, version="0.1.0", now_ms=wall_ms())
    return base


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_prepared_root_and_config_start_a_real_agent(boot, fleet_ca):
    prepared = prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), groups=("kitchen",),
                             target="rpi4")
    folder = boot / "igris"
    assert prepared.folder == folder and prepared.fleet == "lab"
    assert mode(folder / "root" / "keys" / "sign.key") == 0o600
    assert mode(folder / "root" / "keys" / "box.key") == 0o600
    assert Identity.load(folder / "root").certificate.groups == ("kitchen",)
    agent = AgentProcess(folder / "root", "--config", str(folder / "agent.toml")).start()
    try:
        status = agent.wait_ready(timeout=20)
        assert status["device_id"] == "pi-07" and status["fleet"] == "lab"
        assert status["target"] == "rpi4" and status["broker"]["url"] is None
        assert agent.stop() == 0
    finally:
        agent.close()


def test_systemd_analyze_accepts_the_rendered_units(boot, fleet_ca, agent_wheel, slot_base):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # Rendered for this machine's paths, so the Exec lines name files that exist here.
    paths = DevicePaths(boot_mount=str(boot), base=str(slot_base), deps=str(VENV))
    prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), wheel=agent_wheel, paths=paths)
    units = [boot / "igris" / "igris-firstboot.service", boot / "igris" / "igris-agent.service"]
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], check=False,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"ExecStart=/bin/sh {boot}/igris/firstboot.sh" in units[0].read_text()
    lines = units[1].read_text().splitlines()
    assert {"Type=notify", "WatchdogSec=30", "Restart=on-failure", "User=igris"} <= set(lines)
    assert f"ExecStartPre=-{VENV}/bin/python {slot_base}/ota-check.py {slot_base}" in lines
    assert (f"ExecStart={slot_base}/current/bin/python -m agent run --root /var/lib/igris "
            "--config /var/lib/igris/agent.toml") in lines
    assert f"ReadWritePaths=/var/lib/igris {slot_base}" in lines


def test_the_agent_unit_refuses_values_it_cannot_carry():
    ok = {"base": "/opt/igris", "deps": "/opt/igris-deps", "state_dir": "/var/lib/igris",
          "config_file": "/etc/igris/agent.toml"}
    assert "User=agent\n" in render_agent_unit(AgentUnit(**ok, user="agent"))
    with pytest.raises(ConfigInvalid, match="base 'opt/igris' must be an absolute path"):
        AgentUnit(**{**ok, "base": "opt/igris"})
    with pytest.raises(ConfigInvalid, match="user 'igris agent' is not a system account"):
        AgentUnit(**ok, user="igris agent")
    with pytest.raises(ConfigInvalid, match="watchdog-sec must be above 0 seconds, got 0"):
        AgentUnit(**ok, watchdog_sec=0)


def shim(bin_dir: Path, name: str, log: Path, status: int = 0) -> None:
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexit {status}\n')
    script.chmod(0o755)


def test_first_boot_script_installs_the_root_enables_the_agent_and_disables_itself(
        boot, fleet_ca, tmp_path, slot_base):
    (tmp_path / "tls").mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / "tls" / name).write_text(f"{name}\n")
    device = tmp_path / "device"
    # No wheel on the card: the script finds the agent in slots made beforehand.
    paths = DevicePaths(boot_mount=str(boot), base=str(slot_base), deps=str(VENV),
                        state_dir=str(device / "state"), unit_dir=str(device / "units"))
    (device / "units").mkdir(parents=True)
    tls = MqttTls(*(tmp_path / "tls" / n for n in ("ca.pem", "client.pem", "client.key")))
    prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), tls=tls, paths=paths,
                  broker="mqtts://broker.lab:8883")
    # The system tools the script calls are shims that record their arguments.
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("systemctl", "useradd", "usermod", "chown", "getent"):
        shim(bin_dir, name, log)
    shim(bin_dir, "id", log, status=1)  # no user igris yet
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = boot / "igris" / "firstboot.sh"
    for _ in range(2):  # a second run (after a half-finished boot) must succeed too
        result = subprocess.run(["sh", str(script)], check=False, env=env, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
    state = device / "state"
    assert Identity.load(state).device_id == "pi-07"
    assert mode(state) == 0o700 and mode(state / "keys" / "sign.key") == 0o600
    assert (state / "tls" / "client.key").read_text() == "client.key\n"
    config = (state / "agent.toml").read_text()
    assert f'key_file = "{state}/tls/client.key"' in config
    assert (device / "units" / "igris-agent.service").is_file()
    calls = log.read_text().splitlines()
    assert "useradd --system --home-dir " + str(state) in " ".join(calls)
    assert "usermod -a -G gpio igris" in calls
    assert f"chown -R igris:igris {state}" in calls
    assert f"chown -R igris:igris {slot_base}" in calls
    assert calls.index("systemctl enable igris-agent.service") < calls.index(
        "systemctl disable igris-firstboot.service")
    assert calls[-1] == "systemctl start --no-block igris-agent.service"
    # The private keys are gone from the world-readable boot partition.
    assert list((boot / "igris" / "root" / "keys").iterdir()) == []
    assert not (boot / "igris" / "tls" / "client.key").exists()
    assert (boot / "igris" / "root" / "cert.json").is_file()


def test_first_boot_script_with_a_wheel_is_valid_sh_and_installs_it(boot, fleet_ca,
                                                                     agent_wheel):
    prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), wheel=agent_wheel)
    script = boot / "igris" / "firstboot.sh"
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert f"WHEEL={agent_wheel.name}\n" in text and "FOLDER=/boot/firmware/igris\n" in text
    assert "BASE=/opt/igris\n" in text and "DEPS=/opt/igris-deps\n" in text
    assert ('"$DEPS/bin/python" -m firmware_tools slots init --base "$BASE" '
            '--wheel "$FOLDER/wheel/$WHEEL"') in text
    copied = boot / "igris" / "wheel" / agent_wheel.name
    assert copied.read_bytes() == agent_wheel.read_bytes()


def test_preparing_a_card_again_keeps_its_keys_and_renews_the_certificate(boot, fleet_ca):
    prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms())
    keys = boot / "igris" / "root" / "keys"
    first = Identity.load(boot / "igris" / "root")
    # A FAT partition shows every file readable by all: the agent's key reader would refuse it.
    for key in keys.iterdir():
        key.chmod(0o755)
    prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), groups=("hall",))
    again = Identity.load(boot / "igris" / "root")
    assert again.certificate.sign_key == first.certificate.sign_key
    assert again.certificate.serial != first.certificate.serial
    assert again.certificate.groups == ("hall",)
    assert mode(keys / "sign.key") == 0o600


def test_rootfs_gets_the_first_boot_unit_enabled(boot, fleet_ca, tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), rootfs=rootfs)
    units = rootfs / "etc" / "systemd" / "system"
    link = units / "multi-user.target.wants" / "igris-firstboot.service"
    assert os.readlink(link) == "/etc/systemd/system/igris-firstboot.service"
    assert (units / "igris-firstboot.service").read_text() == (
        boot / "igris" / "igris-firstboot.service").read_text()
    prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), rootfs=rootfs)  # again: same link
    assert os.readlink(link) == "/etc/systemd/system/igris-firstboot.service"


def test_bad_inputs_are_refused_before_anything_is_written(boot, fleet_ca, tmp_path):
    with pytest.raises(BootDirInvalid, match="mount the image's boot partition"):
        prepare_image(tmp_path / "nowhere", fleet_ca, "pi-07", now_ms=wall_ms())
    with pytest.raises(ProfileNotFound, match="rpi4"):
        prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), target="rpi-4")
    with pytest.raises(ConfigInvalid, match=r"\[mqtt\] broker"):
        prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(), broker="http://broker")
    with pytest.raises(BootDirInvalid, match="go together"):
        prepare_image(boot, fleet_ca, "pi-07", now_ms=wall_ms(),
                      tls=MqttTls(cert_file=Path(__file__)))
    with pytest.raises(ConfigInvalid, match="boot-mount"):
        DevicePaths(boot_mount="/boot/my firmware")
    assert list(boot.iterdir()) == []


def test_cli_prepare_json(boot, fleet_ca, capsys):
    code = main(["image", "prepare", "--boot", str(boot), "--device-id", "pi-08", "--ca",
                 str(fleet_ca.directory), "--group", "kitchen", "--broker",
                 "mqtt://broker.lab:1883", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    prepared = json.loads(out)
    assert prepared["device_id"] == "pi-08" and prepared["folder"] == str(boot / "igris")
    assert {"igris/agent.toml", "igris/firstboot.sh", "igris/igris-firstboot.service",
            "igris/igris-agent.service", "igris/root/cert.json",
            "igris/root/keys/sign.key"} <= set(prepared["files"])
    assert 'broker = "mqtt://broker.lab:1883"' in (boot / "igris" / "agent.toml").read_text()
    code = main(["image", "prepare", "--boot", str(boot / "absent"), "--device-id", "pi-08",
                 "--ca", str(fleet_ca.directory)])
    assert code == 1 and "igris-fw: error:" in capsys.readouterr().err
