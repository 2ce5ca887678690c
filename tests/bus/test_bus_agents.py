"""The command bus between real agent processes on Mosquitto, driven by ``igris cmd``
and by plain ``mosquitto_pub`` / ``mosquitto_sub``."""

from __future__ import annotations

import json
import time

import pytest

from agent.identity import Identity
from agent.wire import Envelope, sign_envelope
from tests.support.fleet import Fleet, now_ms, run_cli
from tests.support.mqtt_cli import Sub, pub

GROUPS = {"n1": ("east",), "n2": ("east",), "n3": ("west",), "n4": ("west",)}


@pytest.fixture
def fleet(broker):
    f = Fleet(broker, GROUPS, args=("--target", "rpi4"))  # rpi4: outputs relay and fan
    f.start_all()
    for a, b in (("n1", "n2"), ("n3", "n4")):  # each sees its own group
        f.agents[a].wait_peers({b: "alive"})
        f.agents[b].wait_peers({a: "alive"})
    yield f
    f.close()


def cmd(fleet: Fleet, *args: str) -> tuple[int, dict]:
    done = run_cli("cmd", *args, "--root", str(fleet.operator()), "--broker", fleet.broker.url,
                   "--json")
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_fan_out_to_all_and_a_group_with_early_return(fleet):
    code, result = cmd(fleet, "all", "ping", "--timeout", "20")
    assert code == 0 and result["complete"], result
    assert sorted(result["replies"]) == ["n1", "n2", "n3", "n4"]
    assert result["elapsed_ms"] < 5000
    code, east = cmd(fleet, "group:east", "status", "--timeout", "20")
    assert code == 0 and sorted(east["replies"]) == ["n1", "n2"]
    assert east["replies"]["n1"]["result"]["device_id"] == "n1"
    code, first = cmd(fleet, "all", "ping", "--mode", "first", "--timeout", "20")
    assert code == 0 and len(first["replies"]) >= 1 and first["elapsed_ms"] < 5000
    code, quorum = cmd(fleet, "all", "ping", "--mode", "quorum:3", "--timeout", "20")
    assert code == 0 and sum(r["ok"] for r in quorum["replies"].values()) >= 3


def test_a_dead_device_is_reported_without_waiting_for_the_timeout(fleet):
    fleet.agents["n4"].kill()
    fleet.agents["n3"].wait_peers({"n4": "dead"})
    start = time.monotonic()
    code, result = cmd(fleet, "all", "ping", "--timeout", "30")
    assert time.monotonic() - start < 15
    assert code == 2 and not result["complete"]
    assert result["missing"] == {"n4": "dead"}
    assert sorted(result["replies"]) == ["n1", "n2", "n3"]


def test_mutating_commands_run_once_and_are_ledgered(fleet):
    code, result = cmd(fleet, "n1", "gpio.write", "name=relay", "on=true")
    assert code == 0, result
    code, read = cmd(fleet, "n1", "gpio.read", "name=relay")
    assert code == 0 and read["replies"]["n1"]["result"]["on"] is True, read
    code, bad = cmd(fleet, "n1", "gpio.write", "name=boiler", "on=true")
    assert code == 2 and bad["replies"]["n1"]["error"]["code"] == "bad_args"
    shown = json.loads(run_cli("ledger", "show", "--root", str(fleet.base / "n1"),
                               "--limit", "1000", "--json").stdout)
    # The read joined a batch of read-only runs, written before the next mutation's entry.
    runs = [(e["kind"], r["cmd"], r["ok"]) for e in shown
            for r in ([e["body"]] if e["kind"] == "command" else e["body"].get("runs", []))
            if r["cmd"].startswith("gpio.")]
    assert runs == [("command", "gpio.write", True), ("commands", "gpio.read", True),
                    ("command", "gpio.write", False)]


def test_forged_and_device_signed_mutations_do_not_run(fleet):
    n2 = Identity.load(fleet.base / "n2")
    body = {"cmd": "gpio.write", "args": {"name": "relay", "on": True},
            "reply_to": "igris/lab/reply/n2/x1", "cert": n2.certificate.to_dict()}
    signed = sign_envelope(Envelope("n2", "cmd", body, [now_ms(), 0]), n2.sign)
    forged = Envelope("n2", "cmd", dict(body), [now_ms(), 1])
    forged.sig = signed.sig  # a signature from another message
    sub = Sub(fleet.broker.port, "igris/lab/reply/n2/#", probe=True)
    try:
        pub(fleet.broker.port, "igris/lab/cmd/n1", forged.encode())
        pub(fleet.broker.port, "igris/lab/cmd/n1", signed.encode())
        _, reply = sub.expect(lambda _t, d: isinstance(d, dict) and d.get("kind") == "reply")
    finally:
        sub.close()
    assert reply["body"]["error"]["code"] == "forbidden"  # a device may not drive GPIO
    status = fleet.agents["n1"].wait_for(
        lambda s: s["messages"]["dropped"].get("bad_signature", 0) >= 1, what="forged drop")
    assert status["commands"]["executed"] == 0


def test_plain_mqtt_read_only_runs_and_mutation_is_refused(fleet):
    sub = Sub(fleet.broker.port, "igris/lab/stat/n3/#", probe=True)
    try:
        pub(fleet.broker.port, "igris/lab/cmnd/n3/ping", b"{}")
        topic, answer = sub.expect(lambda t, _d: t.endswith("/ping"))
        assert answer["ok"] is True and answer["result"]["pong"] is True
        pub(fleet.broker.port, "igris/lab/cmnd/n3/gpio.write", b'{"name":"relay","on":true}')
        _, refused = sub.expect(lambda t, _d: t.endswith("/gpio.write"))
        assert refused["ok"] is False and refused["error"]["code"] == "forbidden"
        pub(fleet.broker.port, "igris/lab/cmnd/n3/gpio.read", b"not json")
        _, bad = sub.expect(lambda t, _d: t.endswith("/gpio.read"))
        assert bad["error"]["code"] == "bad_args"
    finally:
        sub.close()
    del topic
