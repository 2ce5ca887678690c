"""The lite agent on real MicroPython (the WebAssembly port under Node.js).

The board's files are the ones ``igris-fw micropython bundle`` writes (the
stripped portable layer and lite agent), run against the in-memory
``umqtt`` stand-in (``memory_mqtt.py``). The gateway's side is CPython: it
MACs the commands the board receives (``agent.gateway.lite_command``) and
checks every message the board published with the same code the gateway
runs, so the two ports are checked against each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.compat import b64url_encode
from agent.gateway import LiteTopics, lite_command
from agent.wire import HybridClock, Topics, parse_envelope, verify_envelope_mac
from firmware_tools.micropython import board_bundle
from tests.support import micropython

KEY = bytes(range(32))
WRONG_KEY = bytes(32)
SESSION = 3
CONFIG = {"device_id": "lite-01", "fleet": "lab", "gateway": "gw-01", "key": b64url_encode(KEY),
          "broker": {"host": "127.0.0.1", "port": 1883},
          "pins": {"relay": 5, "button": 4}, "writable": ["relay"],
          "heartbeat_s": 10, "telemetry_s": 30}
HERE = Path(__file__).resolve().parent
TOPICS = LiteTopics(Topics("lab"))

SCRIPT = """
import gc, json
from lite_agent import LiteAgent
from memory_mqtt import MemoryBroker, MQTTClient, MemoryPins
import sys
print(sys.implementation.name)
ticks = [1000]
broker = MemoryBroker()
client = MQTTClient("lite-01", broker)
pins = MemoryPins({5: 0, 4: 1})
agent = LiteAgent(json.loads(CONFIG), client, 3, pins=pins,
                  read_sensors=lambda: {"celsius": 21.5},
                  now_ms=lambda: 1700000000000 + ticks[0], ticks_ms=lambda: ticks[0])
agent.start()
ticks[0] += 10000
agent.poll()
ticks[0] += 20000
agent.poll()
cmd = agent.topics["cmd"]
for payload in json.loads(COMMANDS):
    broker.inject(cmd, payload)
    agent.poll()
gc.collect()
before = gc.mem_alloc()
broker.inject(cmd, LAST)
agent.poll()
peak = gc.mem_alloc() - before
client.lose()
print(json.dumps({"log": broker.log, "dropped": agent.dropped, "relay": pins.levels[5],
                  "command_heap_bytes": peak}))
"""


def _commands() -> tuple[list[str], str]:
    hlc = HybridClock(lambda: 1_700_000_050_000)

    def cmd(name: str, args: dict, *, key: bytes = KEY, session: int = SESSION) -> str:
        return lite_command("gw-01", key, hlc.now(), session, name, args).encode().decode()

    ping = cmd("ping", {})
    commands = [
        ping,
        cmd("gpio.write", {"pin": "button", "value": 1}),  # not writable: refused
        cmd("gpio.write", {"pin": "relay", "value": 1}),
        cmd("gpio.read", {"pin": "relay"}),
        cmd("ping", {}, key=WRONG_KEY),  # bad MAC: dropped
        ping,  # replayed: dropped
        cmd("ping", {}, session=SESSION - 1),  # for an earlier boot: dropped
    ]
    return commands, cmd("status", {})


@pytest.fixture(scope="module")
def board_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("board")
    config = out / "source-config.json"
    config.write_text(json.dumps(CONFIG))
    bundle = board_bundle(config, out / "files", mpy=True)  # the .mpy files a board gets
    files = {micropython.VFS_ROOT + "/" + f.target: f.source for f in bundle.files}
    files[micropython.VFS_ROOT + "/memory_mqtt.py"] = HERE / "memory_mqtt.py"
    commands, last = _commands()
    code = (f"CONFIG = {json.dumps(CONFIG)!r}\nCOMMANDS = {json.dumps(commands)!r}\n"
            f"LAST = {last!r}\n" + SCRIPT)
    result = micropython.run_micropython(code, files, sys_path=[micropython.VFS_ROOT])
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "micropython"
    run = json.loads(lines[-1])
    run["messages"] = [(topic, parse_envelope(payload), retain, qos)
                       for topic, payload, retain, qos in run["log"]]
    return run


def _from_board(run: dict, leaf: str) -> list:
    """Envelopes the board published on its ``leaf`` topic, each MAC-checked."""
    topic = TOPICS.topic("lite-01", leaf)
    found = [(env, retain, qos) for t, env, retain, qos in run["messages"] if t == topic]
    for env, _retain, _qos in found:
        assert env.src == "lite-01"
        verify_envelope_mac(env, KEY)  # raises if the board's MAC does not check
    return found


def test_birth_is_retained_and_macd_on_the_lite_state_topic(board_run: dict) -> None:
    births = [(e, r) for e, r, _q in _from_board(board_run, "state") if e.kind == "state"]
    assert len(births) == 1
    env, retained = births[0]
    assert retained is True
    assert env.body["session"] == SESSION and env.body["lite"] is True
    assert env.body["gateway"] == "gw-01"
    assert env.body["writable"] == ["relay"] and env.body["pins"] == ["button", "relay"]
    assert env.sig is None and env.mac is not None


def test_heartbeats_and_telemetry_follow_their_periods(board_run: dict) -> None:
    beats = _from_board(board_run, "hb")
    assert [e.body["seq"] for e, _r, _q in beats] == [1, 2]  # at 10 s and 40 s
    assert all(e.body["heap"]["free"] > 0 for e, _r, _q in beats)
    tele = _from_board(board_run, "tele")
    assert len(tele) == 1
    assert tele[0][0].kind == "tele"
    assert tele[0][0].body["values"] == {"celsius": 21.5}


def test_commands_answered_and_gpio_write_refused_for_a_pin_not_allowed(board_run: dict) -> None:
    replies = [e.body for e, _r, _q in _from_board(board_run, "reply")]
    assert [r["ok"] for r in replies] == [True, False, True, True, True]
    ping, refused, wrote, read, status = replies
    assert ping["result"] == {"pong": True, "device": "lite-01"}
    assert refused["error"]["code"] == "forbidden"
    assert "'button' is read-only" in refused["error"]["message"]
    assert wrote["result"] == {"pin": "relay", "value": 1}
    assert read["result"] == {"pin": "relay", "value": 1}
    assert board_run["relay"] == 1
    assert status["result"]["answered"] == 4 and status["result"]["session"] == SESSION
    assert all(r["session"] == SESSION for r in replies)


def test_bad_mac_replay_and_old_session_are_dropped_and_counted(board_run: dict) -> None:
    assert board_run["dropped"] == {"bad_signature": 1, "replay": 1, "stale_session": 1}


def test_the_will_is_a_macd_death_for_the_session(board_run: dict) -> None:
    state = _from_board(board_run, "state")
    env, retained, _qos = state[-1]
    assert env.kind == "death" and retained is True
    assert env.body == {"session": SESSION, "reason": "lost"}


def test_heap_used_by_a_command_is_measured(board_run: dict) -> None:
    # Reported in docs/lite.md; a status command (the biggest reply) stays small.
    print("lite agent heap during a status command:", board_run["command_heap_bytes"], "bytes")
    assert 0 < board_run["command_heap_bytes"] < 64 * 1024
