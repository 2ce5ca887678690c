"""Over-the-air updates through the real A/B slot layout in a temp dir, with a real agent
process started the way its systemd unit starts it (boot check, then the current slot):
a healthy update confirms itself, one that cannot start or never gets healthy is rolled back,
a downgrade is refused, and a kill -9 at any step of an apply leaves a device that starts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from agent.compat import wall_ms
from agent.identity import FleetCa, Identity, enroll
from firmware_tools import otacheck, slots
from firmware_tools.bundle import build_bundle
from tests.support.agent_process import short_root
from tests.support.fleet import run_cli
from tests.support.slot_runner import SlotAgent
from tests.support.wheels import rewheel

FAST = {"IGRIS_HEALTH_HEARTBEAT_S": "0.5"}


@pytest.fixture
def device(agent_wheel):
    """A fleet CA, an operator, a device root and its A/B slots holding this tree's agent
    (``0.1.0``), not started."""
    base = short_root("ota")
    ca = FleetCa.init(base / "ca", "lab")
    enroll(base / "ops", ca, "alice", now_ms=wall_ms(), role="operator")
    enroll(base / "dev", ca, "dev-1", now_ms=wall_ms())
    slots.init(base / "slots-base", rewheel(agent_wheel, "0.1.0", base), version="0.1.0",
               now_ms=wall_ms())

    class Device:
        root = base / "dev"
        slots_base = base / "slots-base"
        operator = Identity.load(base / "ops")
        agents: ClassVar[list[SlotAgent]] = []

        def bundle(self, version: str, *, crash: bool = False) -> tuple[Path, str]:
            wheel = rewheel(agent_wheel, version, base, crash=crash)
            out = base / f"igris-{version}.tar"
            build_bundle(out, signer=self.operator, version=version, wheel=wheel,
                         now_ms=wall_ms())
            return out, hashlib.sha256(out.read_bytes()).hexdigest()

        def start(self, *args: str) -> SlotAgent:
            agent = SlotAgent(self.slots_base, self.root, *args, env=FAST).start()
            self.agents.append(agent)
            return agent

        def update(self, source: Path, digest: str, *extra: str):
            return run_cli("update", "apply", str(source), "--sha256", digest, "--base",
                           str(self.slots_base), "--root", str(self.root), "--json", *extra)

    yield Device()
    for agent in Device.agents:
        agent.close()


def wait_version(agent: SlotAgent, version: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = agent.status()
            if status["versions"]["igris"] == version:
                return status
        except Exception:  # restarting: the socket comes and goes
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not running {version}:\n{agent.output()[-3000:]}")
        time.sleep(0.05)


def wait_outcome(agent: SlotAgent, result: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = (agent.status()["ota"] or {}).get("last") or {}
            if last.get("result") == result:
                return last
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no {result}:\n{agent.output()[-3000:]}")
        time.sleep(0.05)


def ota_ledger(root: Path) -> list[dict]:
    done = run_cli("ledger", "show", "--kind", "ota", "--limit", "100", "--json", "--root",
                   str(root))
    assert done.returncode == 0, done.stderr
    return [entry["body"] for entry in json.loads(done.stdout)]


def test_a_healthy_update_switches_slots_and_confirms_itself(device):
    agent = device.start()
    wait_version(agent, "0.1.0")
    bundle, digest = device.bundle("0.2.0")
    began = time.monotonic()
    done = device.update(bundle, digest)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {"deadline_ms": 0} == {
        "version": "0.2.0", "slot": "b", "previous": "a", "deadline_ms": 0, "restarting": True}
    wait_version(agent, "0.2.0")
    last = wait_outcome(agent, "confirmed")
    took = time.monotonic() - began
    assert last["version"] == "0.2.0" and took < 15
    state = slots.status(device.slots_base)
    assert state["current"] == "b" and state["pending"] is None
    assert {s: v["version"] for s, v in state["slots"].items()} == {"a": "0.1.0", "b": "0.2.0"}
    assert [e["result"] for e in ota_ledger(device.root)] == ["switched", "confirmed"]
    print(f"apply -> confirmed healthy: {took:.2f} s")


def test_an_update_that_cannot_start_is_rolled_back_by_the_boot_check(device):
    agent = device.start()
    wait_version(agent, "0.1.0")
    bundle, digest = device.bundle("0.3.0", crash=True)
    assert device.update(bundle, digest).returncode == 0
    last = wait_outcome(agent, "rolled-back")
    wait_version(agent, "0.1.0")
    assert last["version"] == "0.3.0" and "without confirming" in last["reason"]
    assert slots.status(device.slots_base)["current"] == "a"
    assert ota_ledger(device.root)[-1]["result"] == "rolled-back"
    assert agent.output().count("agent exited 3") == otacheck.MAX_BOOTS


def test_an_update_that_never_gets_healthy_rolls_back_within_its_deadline(device):
    # The broker it should reach is not there: the new version runs, but never connects.
    agent = device.start("--broker", "mqtt://127.0.0.1:9")
    wait_version(agent, "0.1.0")
    bundle, digest = device.bundle("0.2.0")
    began = time.monotonic()
    assert device.update(bundle, digest, "--deadline", "3").returncode == 0
    wait_version(agent, "0.2.0")
    last = wait_outcome(agent, "rolled-back", timeout=15)
    wait_version(agent, "0.1.0")
    took = time.monotonic() - began
    assert "deadline" in last["reason"] and took < 3 + 2
    print(f"apply -> rolled back and the old version up: {took:.2f} s (deadline 3 s)")


def test_a_downgrade_is_refused_unless_allowed(device):
    bundle, digest = device.bundle("0.0.9")
    refused = device.update(bundle, digest)
    assert refused.returncode == 1 and "downgrade" in refused.stderr
    assert device.update(bundle, "0" * 64).returncode == 1  # wrong digest: nothing read
    assert slots.status(device.slots_base)["current"] == "a"
    allowed = device.update(bundle, digest, "--allow-downgrade", "--no-restart")
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["version"] == "0.0.9"


KILLER = """
import os, signal, sys
from pathlib import Path
from agent.compat import wall_ms
from agent.identity import Identity
from firmware_tools import slots
base, bundle, digest, root, at = sys.argv[1:]
def step(name):
    if name == at:
        os.kill(os.getpid(), signal.SIGKILL)
slots.apply(Path(base), bundle, sha256=digest, ca_public=Identity.load(Path(root)).ca_public,
            target="generic-linux", current_version="0.1.0", now_ms=wall_ms, on_step=step)
"""


@pytest.mark.parametrize("step", [*slots.STEPS, "never"])
def test_a_kill_9_at_any_step_of_an_apply_leaves_a_device_that_starts(device, step):
    bundle, digest = device.bundle("0.2.0")
    killed = subprocess.run([sys.executable, "-c", KILLER, str(device.slots_base), str(bundle),
                             digest, str(device.root), step], check=False, timeout=60)
    assert killed.returncode == (0 if step == "never" else -9)
    agent = device.start()
    # Before the switch the old slot runs and the half-done apply is dropped; after it,
    # the new one runs and confirms itself.
    switched = step == "never"
    wait_version(agent, "0.2.0" if switched else "0.1.0")
    state = slots.status(device.slots_base)
    assert state["current"] == ("b" if switched else "a")
    if switched:
        wait_outcome(agent, "confirmed")


def test_ota_apply_through_the_bus_updates_three_agents_on_mosquitto(agent_wheel, broker,
                                                                      tmp_path):
    base = short_root("otafleet")
    ca = FleetCa.init(base / "ca", "lab")
    enroll(base / "ops", ca, "alice", now_ms=wall_ms(), role="operator")
    wheel = rewheel(agent_wheel, "0.1.0", base)
    agents = {}
    try:
        for name in ("n1", "n2", "n3"):
            enroll(base / name, ca, name, now_ms=wall_ms(), groups=("east",))
            slots.init(base / f"slots-{name}", wheel, version="0.1.0", now_ms=wall_ms())
            agents[name] = SlotAgent(base / f"slots-{name}", base / name, "--broker",
                                     broker.url, env=FAST).start()
        for agent in agents.values():
            wait_version(agent, "0.1.0")
            agent.wait_peers({n: "alive" for n in agents if n != agent.root.name})
        bundle = base / "igris-0.2.0.tar"
        build_bundle(bundle, signer=Identity.load(base / "ops"), version="0.2.0",
                     wheel=rewheel(agent_wheel, "0.2.0", tmp_path), now_ms=wall_ms())
        digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
        began = time.monotonic()
        done = run_cli("cmd", "group:east", "ota.apply", f"url=file://{bundle}",
                       f'sha256="{digest}"', "--root", str(base / "ops"), "--broker",
                       broker.url, "--timeout", "60", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        replies = json.loads(done.stdout)["replies"]
        assert {dev: r["result"]["version"] for dev, r in replies.items()} == {
            "n1": "0.2.0", "n2": "0.2.0", "n3": "0.2.0"}
        for agent in agents.values():
            wait_version(agent, "0.2.0")
            assert wait_outcome(agent, "confirmed")["version"] == "0.2.0"
        print(f"ota.apply to 3 agents -> all confirmed: {time.monotonic() - began:.2f} s")
    finally:
        for agent in agents.values():
            agent.close()


def test_igris_fw_slots_init_makes_a_slot_that_runs(agent_wheel, tmp_path):
    base = tmp_path / "opt-igris"
    done = subprocess.run([sys.executable, "-m", "firmware_tools", "slots", "init", "--base",
                           str(base), "--wheel", str(agent_wheel), "--json"],
                          capture_output=True, text=True, check=False, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    version = subprocess.run([out["python"], "-m", "agent", "version", "--json"],
                             capture_output=True, text=True, check=True, cwd=base, timeout=60)
    assert json.loads(version.stdout)["igris"] == out["version"]
    assert slots.status(base)["current"] == "a" and (base / "ota-check.py").exists()


def test_an_apply_waits_while_the_last_update_is_still_proving_itself(device):
    bundle, digest = device.bundle("0.2.0")
    assert device.update(bundle, digest, "--no-restart").returncode == 0
    # Not confirmed yet (no agent ran it): slot a is the way back and must stay whole.
    newer, newer_digest = device.bundle("0.3.0")
    busy = device.update(newer, newer_digest, "--no-restart")
    assert busy.returncode == 1 and "busy" in busy.stderr and "0.2.0" in busy.stderr
    state = slots.status(device.slots_base)
    assert state["slots"]["a"]["version"] == "0.1.0" and state["pending"]["version"] == "0.2.0"


def test_a_missing_bundle_is_a_clear_error(device, tmp_path):
    missing = device.update(tmp_path / "nope.tar", "0" * 64)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_corrupt_ota_state_is_moved_aside_and_the_device_starts(device):
    state = device.slots_base / "ota.json"
    state.write_text("{ not json")
    agent = device.start()
    wait_version(agent, "0.1.0")  # the boot check did not stop the start
    assert (device.slots_base / "ota.json.corrupt").read_text() == "{ not json"
    assert "unreadable" in agent.output()
