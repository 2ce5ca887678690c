"""Five real ``igris run`` processes on a real Mosquitto: the mesh seen through ``peers``."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from agent.identity import FleetCa, Identity, enroll
from agent.wire import Envelope, sign_envelope
from tests.support.fleet import Fleet, now_ms, run_cli
from tests.support.mqtt_cli import Sub, pub

REPO = Path(__file__).resolve().parents[2]
NAMES = ("n1", "n2", "n3", "n4", "n5")


@pytest.fixture
def mesh(broker):
    m = Fleet(broker, dict.fromkeys(NAMES, ("lab",)))
    m.start_all()
    yield m
    m.close()


def all_alive() -> dict[str, str]:
    return dict.fromkeys(NAMES, "alive")


def test_all_see_all_then_kill_and_graceful_stop(mesh):
    mesh.wait_all(all_alive())
    mesh.agents["n2"].kill()  # kill -9: the broker sends n2's will at once
    mesh.wait_all({**all_alive(), "n2": "dead"}, timeout=5)
    t0 = time.monotonic()
    assert mesh.agents["n3"].stop() == 0
    mesh.wait_all({"n3": "left"}, timeout=5)
    assert time.monotonic() - t0 < 3
    peers = json.loads(json.dumps(mesh.agents["n1"].peers()))
    assert peers == {"n2": "dead", "n3": "left", "n4": "alive", "n5": "alive"}


def test_broker_restart_then_everyone_rejoins(mesh):
    mesh.wait_all(all_alive())
    mesh.broker.kill()
    time.sleep(1.0)
    mesh.broker.restart()
    for agent in mesh.agents.values():
        status = agent.wait_for(lambda s: s["broker"]["connected"], timeout=20,
                                what="reconnected")
        assert status["broker"]["reconnects"] >= 1
    mesh.wait_all(all_alive())
    # Still detecting after the restart (fresh subscriptions, fresh wills).
    mesh.agents["n5"].kill()
    mesh.wait_all({"n5": "dead"}, timeout=5)
    assert mesh.agents["n1"].peers() == {"n2": "alive", "n3": "alive", "n4": "alive",
                                         "n5": "dead"}


def test_stale_death_after_a_fast_restart_does_not_kill(mesh):
    mesh.wait_all(all_alive())
    sub = Sub(mesh.broker.port, "igris/lab/node/n4/state")
    try:
        mesh.agents["n4"].kill()
        _, will = sub.expect(lambda _t, d: isinstance(d, dict) and d.get("kind") == "death")
    finally:
        sub.close()
    assert will["body"]["reason"] == "lost"
    mesh.start("n4").wait_ready()
    mesh.wait_all(all_alive())
    # The old session's will arrives again, late (a bridge, a slow broker): ignored.
    payload = Envelope(will["src"], "death", will["body"], will["ts"], id=will["id"])
    payload.sig = will["sig"]
    pub(mesh.broker.port, "igris/lab/node/n4/state", payload.encode())
    time.sleep(0.5)
    mesh.wait_all(all_alive())
    assert mesh.agents["n1"].status()["peers"] == {"alive": 4}


def test_forged_birth_from_an_unknown_key_is_ignored(mesh):
    mesh.wait_all(all_alive())
    other_ca = FleetCa.init(mesh.base / "evil-ca", "lab")
    enroll(mesh.base / "evil", other_ca, "n9", now_ms=now_ms(), groups=("lab",))
    evil = Identity.load(mesh.base / "evil")
    cert = evil.certificate.to_dict()
    marker = sign_envelope(Envelope("n9", "state", {"group": "lab", "cert": cert},
                                    [now_ms(), 0]), evil.sign)
    birth = sign_envelope(Envelope("n9", "state", {"session": 1, "cert": cert},
                                   [now_ms(), 0]), evil.sign)
    pub(mesh.broker.port, "igris/lab/group/lab/n9", marker.encode(), retain=True)
    pub(mesh.broker.port, "igris/lab/node/n9/state", birth.encode(), retain=True)
    agent = mesh.agents["n1"]
    agent.wait_for(lambda s: s["messages"]["dropped"].get("bad_certificate", 0) >= 1,
                   what="forged marker dropped")
    time.sleep(0.3)
    assert "n9" not in agent.peers()


def test_peer_table_survives_an_agent_restart(mesh):
    mesh.wait_all(all_alive())
    mesh.agents["n2"].kill()
    mesh.wait_all({"n2": "dead"}, timeout=5)
    n1 = mesh.agents["n1"]
    assert n1.stop() == 0
    # Offline (no agent running): the table is in n1's database.
    restarted = mesh.start("n1")
    restarted.wait_ready()
    first = restarted.peers()
    assert first["n2"] == "dead"
    assert set(first) == {"n2", "n3", "n4", "n5"}
    restarted.wait_peers({"n2": "dead", "n3": "alive", "n4": "alive", "n5": "alive"})


def test_policy_push_reaches_all_and_late_joiners_rollback_and_wrong_role_refused(mesh, tmp_path):
    mesh.wait_all(all_alive())
    op_root = mesh.operator()
    assert mesh.agents["n5"].stop() == 0
    doc = json.loads((REPO / "ai_assistant_config" / "policy.json").read_text())
    doc.update(version=2, membership={"suspect_after_s": 0.6, "dead_after_s": 1.2})
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(doc))

    done = run_cli("policy", "push", str(policy_file), "--root", str(op_root),
                   "--broker", mesh.broker.url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == 2
    for name in ("n1", "n2", "n3", "n4"):
        mesh.agents[name].wait_for(lambda s: s["policy_version"] == 2, what="policy 2")
    late = mesh.start("n5")
    late.wait_ready()
    late.wait_for(lambda s: s["policy_version"] == 2, what="late joiner")

    # The CLI refuses what devices would refuse, with the reason.
    doc["version"] = 1
    policy_file.write_text(json.dumps(doc))
    again = run_cli("policy", "push", str(policy_file), "--root", str(op_root),
                    "--broker", mesh.broker.url)
    assert again.returncode == 1 and "not newer than version 2" in again.stderr
    wrong = run_cli("policy", "push", str(policy_file), "--root", str(mesh.base / "n1"),
                    "--broker", mesh.broker.url)
    assert wrong.returncode == 1 and "needs an operator" in wrong.stderr

    # Devices refuse them too when they arrive anyway (signed by hand, published raw).
    for signer, version, reason in ((op_root, 1, "version"), (mesh.base / "n1", 7, "role")):
        ident = Identity.load(signer)
        body = {"policy": {**doc, "version": version}, "cert": ident.certificate.to_dict()}
        env = sign_envelope(Envelope(ident.device_id, "policy", body, [now_ms(), 0]),
                            ident.sign)
        pub(mesh.broker.port, "igris/lab/policy", env.encode())
        shown = json.loads(run_cli("policy", "show", "--root", str(mesh.base / "n2"),
                                   "--json").stdout)
        deadline = time.monotonic() + 5
        while shown["rejected"].get(reason) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            shown = json.loads(run_cli("policy", "show", "--root", str(mesh.base / "n2"),
                                       "--json").stdout)
        assert shown["rejected"].get(reason) == 1, shown
        assert shown["version"] == 2

    # The new timeouts are in force: a frozen agent (connection open, no heartbeats)
    # goes suspect, then dead, within about a second.
    mesh.agents["n3"].signal(signal.SIGSTOP)
    try:
        mesh.wait_all({"n3": "dead"}, timeout=6, skip=("n3",))
    finally:
        mesh.agents["n3"].signal(signal.SIGCONT)
    mesh.wait_all(all_alive(), timeout=6)  # and back to alive with its next heartbeat


def test_blocklist_reaches_every_agent_and_survives_restart(mesh):
    mesh.wait_all(all_alive())
    op_root = mesh.operator()
    assert mesh.agents["n5"].stop() == 0  # joins late: learns the block from the snapshot
    done = run_cli("block", "add", "n4", "--reason", "stolen", "--root", str(op_root),
                   "--broker", mesh.broker.url)
    assert done.returncode == 0, done.stderr
    mesh.wait_all({"n4": "blocked"}, timeout=5, skip=("n4",))
    # n4's heartbeats are now dropped at the gate of every other agent.
    n1 = mesh.agents["n1"]
    n1.wait_for(lambda s: s["messages"]["dropped"].get("blocked", 0) >= 2, what="drops")
    assert n1.status()["blocklist"]["blocked"] == 1
    late = mesh.start("n5")
    late.wait_ready()
    late.wait_peers({"n4": "blocked", "n1": "alive"})
    # Survives a restart: enforced from the database before any message arrives.
    assert n1.stop() == 0
    again = mesh.start("n1")
    again.wait_ready()
    assert again.peers()["n4"] == "blocked"
    listed = json.loads(run_cli("block", "list", "--root", str(mesh.base / "n1"),
                                "--json").stdout)
    assert [(e["target"], e["state"]) for e in listed] == [("device:n4", "blocked")], listed
    # And it is in the ledger, which still verifies.
    ledger = json.loads(run_cli("ledger", "show", "--root", str(mesh.base / "n1"), "--kind",
                                "block", "--json").stdout)
    assert len(ledger) == 1 and ledger[0]["body"]["target"] == "device:n4", ledger
    assert run_cli("ledger", "verify", "--root", str(mesh.base / "n1")).returncode == 0
    # Lifted: n4 is heard again.
    done = run_cli("block", "remove", "n4", "--reason", "found", "--root", str(op_root),
                   "--broker", mesh.broker.url)
    assert done.returncode == 0, done.stderr
    mesh.wait_all(all_alive(), timeout=10)


def test_ca_rotation_policy_lets_devices_of_the_new_ca_in(mesh, tmp_path):
    from agent.compat import b64url_encode

    mesh.wait_all(all_alive())
    new_ca = FleetCa.init(mesh.base / "ca2", "lab")
    enroll(mesh.base / "n6", new_ca, "n6", now_ms=now_ms(), groups=("lab",))
    mesh.start("n6").wait_ready()
    n1 = mesh.agents["n1"]
    n1.wait_for(lambda s: s["messages"]["dropped"].get("bad_certificate", 0) >= 1,
                what="n6's certificate refused")
    assert "n6" not in n1.peers()
    # The rotation: trust both CAs (the old one with no end yet).
    doc = json.loads((REPO / "ai_assistant_config" / "policy.json").read_text())
    doc.update(version=2, trust={"ca": [
        {"key": b64url_encode(mesh.ca.public_key)}, {"key": b64url_encode(new_ca.public_key)}]})
    policy_file = tmp_path / "rotate.json"
    policy_file.write_text(json.dumps(doc))
    done = run_cli("policy", "push", str(policy_file), "--root", str(mesh.operator()),
                   "--broker", mesh.broker.url)
    assert done.returncode == 0, done.stderr
    mesh.wait_all({"n6": "alive"}, skip=("n6",))
