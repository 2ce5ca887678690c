"""A lite agent (CPython, through the paho ``umqtt`` adapter) and a gateway agent on Mosquitto.

Everything is real: ``igris enroll --lite`` writes the board's config and the
gateway's record, the gateway is an ``igris run`` process configured with
``IGRIS_GATEWAY_LITE_DIR=lite``, the lite agent is ``targets/micropython/
lite_agent.py`` in its own process, and the operator's command is ``igris cmd``.
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
from tests.support.fleet import Fleet, run_cli

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
    fleet = Fleet(broker, {"gw": ["lab"]})
    fleet.env["gw"] = {"IGRIS_GATEWAY_LITE_DIR": "lite"}
    lites: list[LiteProcess] = []
    try:
        yield {"fleet": fleet, "lites": lites}
    finally:
        for lite in lites:
            lite.kill()
        fleet.close()


def _enroll(fleet: Fleet, device: str) -> Path:
    done = run_cli("enroll", "--lite", "--root", str(fleet.base / device), "--device-id", device,
                   "--gateway-root", str(fleet.base / "gw"), "--broker", fleet.broker.url,
                   "--pin", "relay=5", "--pin", "button=4", "--writable", "relay",
                   "--heartbeat-s", "0.5", "--telemetry-s", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["gateway"] == "gw" and out["fleet"] == "lab"
    return Path(out["config"])


def _lite_peers(gw_root: Path) -> dict[str, dict[str, Any]]:
    return {p["device_id"]: p for p in call(gw_root / SOCKET_NAME, "peers", timeout=5)["lite"]}


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
