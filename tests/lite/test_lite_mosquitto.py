"""A lite agent (CPython, through the paho ``umqtt`` adapter) and a gateway agent on Mosquitto.

Everything is real: ``igris enroll --lite`` writes the board's config and the
gateway's record, the gateway is an ``igris run`` process configured with
``IGRIS_GATEWAY_LITE_DIR=lite``, the lite agent is ``targets/micropython/
lite_agent.py`` in its own process, and the operator's command is ``igris cmd``.
The gateway ``gw`` is enrolled with ``--cap gateway``, so an ordinary agent ``n2``
takes its relays; ``rogue`` is a gateway by configuration only, and its relays
are dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control import SOCKET_NAME, call
from agent.identity import enroll
from tests.support.fleet import Fleet, now_ms, run_cli

REPO = Path(__file__).resolve().parents[2]


class LiteProcess:
    """``python -m tests.support.umqtt_paho CONFIG SESSION``: one lite device."""

    def __init__(self, config: Path, session: int):
        self.log = config.with_suffix(".log")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.umqtt_paho", str(config), str(session)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def rig(broker: Any) -> Iterator[dict[str, Any]]:
    fleet = Fleet(broker, {"n2": ["lab"], "rogue": ["lab"]})
    enroll(fleet.base / "gw", fleet.ca, "gw", now_ms=now_ms(), groups=("lab",),
           caps=("gateway",))
    fleet.env["gw"] = fleet.env["rogue"] = {"IGRIS_GATEWAY_LITE_DIR": "lite"}
    lites: list[LiteProcess] = []
    try:
        yield {"fleet": fleet, "lites": lites}
    finally:
        for lite in lites:
            lite.kill()
        fleet.close()


def _enroll(fleet: Fleet, device: str, gateway: str = "gw") -> Path:
    done = run_cli("enroll", "--lite", "--root", str(fleet.base / device), "--device-id", device,
                   "--gateway-root", str(fleet.base / gateway), "--broker", fleet.broker.url,
                   "--pin", "relay=5", "--pin", "button=4", "--writable", "relay",
                   "--heartbeat-s", "0.5", "--telemetry-s", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["gateway"] == gateway and out["fleet"] == "lab"
    return Path(out["config"])


def _lite_peers(root: Path) -> dict[str, dict[str, Any]]:
    return {p["device_id"]: p for p in call(root / SOCKET_NAME, "peers", timeout=5)["lite"]}


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_gateway_relays_a_lite_device_and_an_operator_command_reaches_it(rig: dict) -> None:
    fleet: Fleet = rig["fleet"]
    config = _enroll(fleet, "lite-01")
    gw = fleet.start("gw")
    gw.wait_ready()
    rig["lites"].append(LiteProcess(config, session=1))
    peer = _wait(lambda: _lite_peers(gw.root).get("lite-01", {}).get("info", {}).get(
        "telemetry") and _lite_peers(gw.root)["lite-01"], "lite-01 alive with telemetry")
    assert peer["state"] == "alive" and peer["lite"] is True and peer["via"] == "gw"
    assert peer["info"]["telemetry"] == {"celsius": 21.0}

    done = run_cli("cmd", "gw", "lite.cmd", "device=lite-01", "cmd=ping", "--root",
                   str(fleet.operator()), "--broker", fleet.broker.url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    reply = json.loads(done.stdout)["replies"]["gw"]
    assert reply["ok"] is True
    assert reply["result"] == {"pong": True, "device": "lite-01"}
    print("operator -> gateway -> lite-01 -> gateway -> operator:", reply["ms"], "ms")

    done = run_cli("cmd", "gw", "lite.gpio.write", "device=lite-01", "pin=button", "value=1",
                   "--root", str(fleet.operator()), "--broker", fleet.broker.url, "--json")
    assert done.returncode == 2  # refused by the board: its config allows only 'relay'
    assert json.loads(done.stdout)["replies"]["gw"]["error"]["code"] == "forbidden"

    rig["lites"][0].kill()  # kill -9: the broker sends the MAC'd will
    _wait(lambda: _lite_peers(gw.root)["lite-01"]["state"] == "dead", "lite-01 dead")


def test_a_device_with_a_wrong_key_is_dropped_and_counted(rig: dict) -> None:
    fleet: Fleet = rig["fleet"]
    config = _enroll(fleet, "lite-02")
    board = json.loads(config.read_text())
    board["key"] = "A" * 43  # 32 zero bytes: not the key the gateway holds
    config.write_text(json.dumps(board))
    gw = fleet.start("gw")
    gw.wait_ready()
    rig["lites"].append(LiteProcess(config, session=1))
    _wait(lambda: (gw.status()["gateway"]["dropped"].get("bad_signature", 0) >= 3),
          "three bad MACs counted")
    done = run_cli("status", "--root", str(gw.root), "--json")
    assert done.returncode == 0, done.stderr
    gateway = json.loads(done.stdout)["gateway"]
    assert gateway["dropped"]["bad_signature"] >= 3
    assert gateway["accepted"] == 0 and gateway["enrolled"] == 1
    assert "lite-02" not in _lite_peers(gw.root)


def test_an_ordinary_agent_sees_the_lite_device_via_its_gateway_then_dead(rig: dict) -> None:
    fleet: Fleet = rig["fleet"]
    config = _enroll(fleet, "lite-01")
    gw, n2 = fleet.start("gw"), fleet.start("n2")
    gw.wait_ready()
    n2.wait_ready()
    rig["lites"].append(LiteProcess(config, session=3))
    peer = _wait(lambda: _lite_peers(n2.root).get("lite-01", {}).get("state") == "alive"
                 and _lite_peers(n2.root)["lite-01"], "n2 sees lite-01 alive")
    assert peer["lite"] is True and peer["via"] == "gw" and peer["session"] == 3
    assert peer["role"] == "lite"

    done = run_cli("peers", "--root", str(n2.root))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[1:-1]}
    assert rows["lite-01"][1:7] == ["alive", "3", "lite", "-", "yes", "gw"]
    assert rows["gw"][5:7] == ["-", "-"]
    assert "lite: 1 alive" in done.stdout.splitlines()[-1]

    rig["lites"][0].kill()  # kill -9: the will reaches the gateway, its relay reaches n2
    _wait(lambda: _lite_peers(n2.root)["lite-01"]["state"] == "dead", "n2 sees lite-01 dead")
    assert n2.peers().get("lite-01") is None  # never a bus peer
    assert gw.status()["gateway"]["relays_sent"] >= 2


def test_a_relay_from_a_gateway_without_the_cap_is_dropped_and_counted(rig: dict) -> None:
    fleet: Fleet = rig["fleet"]
    config = _enroll(fleet, "lite-03", gateway="rogue")
    rogue, n2 = fleet.start("rogue"), fleet.start("n2")
    rogue.wait_ready()
    n2.wait_ready()
    n2.wait_peers({"rogue": "alive"})
    rig["lites"].append(LiteProcess(config, session=1))
    _wait(lambda: _lite_peers(rogue.root).get("lite-03", {}).get("state") == "alive",
          "rogue follows lite-03")
    rogue.wait_for(lambda s: s["gateway"]["relays_sent"] >= 1, what="rogue relayed lite-03")

    def dropped() -> int:
        return call(n2.root / SOCKET_NAME, "peers", timeout=5)["ignored"].get("not_gateway", 0)

    _wait(lambda: dropped() >= 1, "n2 drops rogue's relay")
    assert "lite-03" not in _lite_peers(n2.root)
