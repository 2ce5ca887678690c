"""A real ``igris run`` process against a real Mosquitto, seen from outside."""

import json
import signal
import socket
import stat
import time

import pytest

from agent.identity import FleetCa, enroll
from agent.wire import Envelope, sign_envelope
from tests.support.agent_process import AgentProcess, short_root
from tests.support.mqtt_cli import Sub, pub

NOW_MS = int(time.time() * 1000)


@pytest.fixture
def fleet():
    """A fleet CA and an enrolled root for device pi-01 (short paths: Unix sockets)."""
    base = short_root()
    ca = FleetCa.init(base / "ca", "lab")
    root = base / "pi01"
    enroll(root, ca, "pi-01", now_ms=NOW_MS, groups=("kitchen",))
    return ca, root


@pytest.fixture
def agents():
    started = []

    def make(root, *args, **kw):
        agent = AgentProcess(root, *args, **kw)
        started.append(agent)
        return agent.start()

    yield make
    for agent in started:
        agent.close()


def is_state(kind, reason=None):
    def check(topic, doc):
        return (isinstance(doc, dict) and topic.endswith("/node/pi-01/state")
                and doc.get("kind") == kind
                and (reason is None or doc["body"].get("reason") == reason))
    return check


def test_birth_and_graceful_death_seen_by_mosquitto_sub(broker, fleet, agents):
    _, root = fleet
    sub = Sub(broker.port, "igris/lab/node/+/state")
    try:
        agent = agents(root, "--broker", broker.url, "--target", "rpi4")
        status = agent.wait_ready()
        _, birth = sub.expect(is_state("state"))
        assert birth["src"] == "pi-01" and birth["sig"]
        assert birth["body"]["cert"]["subject"] == "pi-01"
        assert birth["body"]["target"] == "rpi4"
        assert birth["body"]["session"] == status["session"]
        assert agent.stop() == 0
        _, death = sub.expect(is_state("death", "shutdown"))
        assert death["body"]["session"] == status["session"]
    finally:
        sub.close()
    assert not (root / "control.sock").exists()
    assert "stopped" in agent.output()


def test_kill_9_makes_the_broker_send_the_signed_will(broker, fleet, agents):
    _, root = fleet
    agent = agents(root, "--broker", broker.url, env={"IGRIS_MQTT_KEEPALIVE_S": "5"})
    session = agent.wait_ready()["session"]
    agent.wait_for(lambda s: s["broker"]["connected"], what="connected")
    sub = Sub(broker.port, "igris/lab/node/+/state")
    try:
        sub.expect(is_state("state"))  # the retained birth
        agent.kill()
        _, death = sub.expect(is_state("death", "lost"), timeout=15)
        assert death["body"]["session"] == session
    finally:
        sub.close()


def test_session_number_grows_across_restarts(broker, fleet, agents):
    _, root = fleet
    first = agents(root, "--broker", broker.url)
    s1 = first.wait_ready()["session"]
    assert first.stop() == 0
    second = agents(root, "--broker", broker.url)
    assert second.wait_ready()["session"] == s1 + 1


def test_bad_messages_are_dropped_and_counted_while_agent_keeps_running(broker, fleet, agents):
    ca, root = fleet
    agent = agents(root, "--broker", broker.url,
                   env={"IGRIS_HEALTH_HEARTBEAT_S": "0.2", "IGRIS_MESH_SCOPE": "fleet"})
    agent.wait_ready()
    agent.wait_for(lambda s: s["broker"]["connected"], what="connected")
    # A second, genuine device to forge against.
    other = short_root() / "pi02"
    enroll(other, ca, "pi-02", now_ms=NOW_MS)
    from agent.identity import Identity

    ident = Identity.load(other)
    topic = "igris/lab/node/pi-02/hb"
    birth = sign_envelope(
        Envelope("pi-02", "state", {"session": 1, "cert": ident.certificate.to_dict()},
                 [NOW_MS, 0]), ident.sign)
    pub(broker.port, "igris/lab/node/pi-02/state", birth.encode(), retain=True)
    agent.wait_for(lambda s: s["peers"].get("alive") == 1, what="pi-02 alive")

    good = sign_envelope(Envelope("pi-02", "state", {"seq": 1}, [int(time.time() * 1000), 0]),
                         ident.sign)
    forged = Envelope("pi-02", "state", {"seq": 2}, [int(time.time() * 1000), 0])
    forged.sig = good.sig
    unsigned = Envelope("pi-02", "state", {"seq": 3}, [int(time.time() * 1000), 0])
    for payload in (b"\x00\xffgarbage", good.encode()[:40], b"{" + b" " * 70_000 + b"}",
                    unsigned.encode(), forged.encode(), good.encode(), good.encode()):
        pub(broker.port, topic, payload)
    expected = {"not_json": 2, "oversize": 1, "unsigned": 1, "bad_signature": 1, "replay": 1}
    status = agent.wait_for(
        lambda s: all(s["messages"]["dropped"].get(k, 0) >= n for k, n in expected.items()),
        what="drops counted",
    )
    assert status["messages"]["dropped"] == expected
    beats = status["heartbeats_sent"]
    agent.wait_for(lambda s: s["heartbeats_sent"] > beats, what="heartbeats continue")
    assert agent.proc.poll() is None


def test_runs_alone_without_broker_and_enrolls_a_development_ca(agents):
    root = short_root() / "alone"
    agent = agents(root, "--device-id", "solo-1")
    status = agent.wait_ready()
    assert status["broker"]["url"] is None and status["broker"]["connected"]
    assert status["device_id"] == "solo-1" and status["fleet"] == "dev"
    assert status["led"] == "healthy"
    assert "NOT ENROLLED" in agent.output()
    for key in ("sign.key", "box.key"):
        assert stat.S_IMODE((root / "keys" / key).stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "dev-ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "control.sock").stat().st_mode) == 0o600
    assert agent.stop() == 0


def test_bad_config_stops_start_with_a_clear_error(agents):
    root = short_root() / "bad"
    root.mkdir(parents=True)
    (root / "agent.toml").write_text('[mqtt]\nkeepalive_s = "often"\n')
    agent = agents(root)
    assert agent.proc.wait(10) == 1
    out = agent.output()
    assert "agent.toml: [mqtt] keepalive_s: expected an integer" in out
    assert "Traceback" not in out


def test_missing_key_file_stops_start_with_a_clear_error(fleet, agents):
    _, root = fleet
    (root / "keys" / "sign.key").unlink()
    agent = agents(root)
    assert agent.proc.wait(10) == 1
    assert "sign.key" in agent.output() and "igris enroll" in agent.output()
    assert "Traceback" not in agent.output()


def test_unknown_target_lists_the_known_ones(fleet, agents):
    _, root = fleet
    agent = agents(root, "--target", "rpi9")
    assert agent.proc.wait(10) == 1
    assert "rpi9" in agent.output() and "pi-zero-2w" in agent.output()


def test_sd_notify_ready_watchdog_stopping(fleet, agents, tmp_path):
    _, root = fleet
    sock_path = short_root() / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    try:
        agent = agents(root, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        seen = []
        while "WATCHDOG=1" not in seen or not any(s.startswith("READY=1") for s in seen):
            seen.append(sock.recv(4096).decode())
        agent.signal(signal.SIGTERM)
        while not seen[-1].startswith("STOPPING=1"):
            seen.append(sock.recv(4096).decode())
        assert agent.proc.wait(10) == 0
    finally:
        sock.close()
    assert any(s.startswith("READY=1") for s in seen)


def test_broker_restart_reconnects_and_rebirths(broker, fleet, agents):
    _, root = fleet
    agent = agents(root, "--broker", broker.url)
    agent.wait_ready()
    agent.wait_for(lambda s: s["broker"]["connected"], what="connected")
    broker.kill()
    status = agent.wait_for(lambda s: not s["broker"]["connected"], what="disconnect seen")
    assert agent.wait_for(lambda s: s["led"] == "offline", what="LED offline")["led"] == "offline"
    broker.restart()
    agent.wait_for(lambda s: s["broker"]["connected"], timeout=20, what="reconnected")
    sub = Sub(broker.port, "igris/lab/node/pi-01/state")
    try:
        _, birth = sub.expect(is_state("state"))
        assert birth["body"]["session"] == status["session"]
    finally:
        sub.close()
    assert agent.status()["led"] == "healthy"
    assert json.dumps(agent.status())
