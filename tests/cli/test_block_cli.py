"""``igris block``: the real command against a real Mosquitto and real Blocklist components."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.cli.operator_session import database_path, trust_anchors
from agent.compat import b64url_encode, wall_ms
from agent.db import Database
from agent.identity import FleetCa, Identity, TrustAnchor, enroll
from agent.transport import MqttTransport
from tests.support.blocklist_node import TOPICS, BlocklistNode
from tests.support.waiting import until


def on_broker(root: Path, broker) -> BlocklistNode:
    """The identity enrolled in ``root`` on the real broker and the wall clock, not started."""
    ident = Identity.load(root)
    transport = MqttTransport(broker.client_settings(ident.device_id))
    return BlocklistNode(ident, transport, wall_ms, root)


async def igris(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the real ``igris`` command in a worker thread (it runs its own event loop)."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def roots(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    enroll(tmp_path / "op", ca, "op", now_ms=wall_ms(), role="operator")
    for dev in ("d1", "d2", "d3", "bad"):
        enroll(tmp_path / dev, ca, dev, now_ms=wall_ms())
    return tmp_path


@pytest.mark.async_timeout(40)
async def test_block_add_and_remove_reach_the_fleet(broker, roots, capsys, async_cleanup):
    async def device(name: str) -> BlocklistNode:
        dev = await on_broker(roots / name, broker).start()
        async_cleanup.push(dev.stop)
        return dev

    d1, d2, bad = await device("d1"), await device("d2"), await device("bad")
    await bad.birth()
    await until(lambda: "bad" in d1.heard and "bad" in d2.heard)
    op = ["--root", str(roots / "op"), "--broker", broker.url, "--json"]

    code, out, err = await igris(capsys, "block", "add", "bad", "--reason", "stolen",
                                 "--expires-in", "2d", *op)
    assert code == 0, err
    added = json.loads(out)
    assert added["target"] == "device:bad" and added["snapshot_entries"] == 1
    await until(lambda: d1.blocklist.is_blocked("bad") and d2.blocklist.is_blocked("bad"))
    await bad.birth()
    await until(lambda: d1.channel.dropped["blocked"] == 1 and d2.channel.dropped["blocked"] == 1)

    # A device that joins now learns the block from the retained snapshot.
    d3 = await device("d3")
    await until(lambda: d3.blocklist.is_blocked("bad"))
    assert [data["action"] for _, data in d3.records] == ["block"]

    # Devices cannot block: not through the CLI, not by publishing an entry themselves.
    code, _, err = await igris(capsys, "block", "add", "d2", "--reason", "x", "--root",
                               str(roots / "bad"), "--broker", broker.url)
    assert code == 1 and "needs an operator's root" in err and "Traceback" not in err
    forged = d3.channel.seal("block", {
        "action": "block", "target": "device:op", "reason": "", "expires_ms": None,
        "cert": d3.ident.certificate.to_dict(),
    })
    await d3.transport.publish(TOPICS.block(), forged.encode(), qos=1)
    await until(lambda: d1.blocklist.refused["not_operator"] == 1)

    # The block survives a restart: enforced from the database before any message.
    await d1.stop()
    d1 = on_broker(roots / "d1", broker)
    assert d1.blocklist.is_blocked("bad")
    await d1.start()
    async_cleanup.push(d1.stop)
    await until(lambda: d1.blocklist.stale == 1)  # the retained snapshot again
    assert d1.records == []

    code, out, err = await igris(capsys, "block", "remove", "bad", "--reason", "found", *op)
    assert code == 0, err
    assert json.loads(out)["action"] == "unblock"
    await until(lambda: not any(d.blocklist.is_blocked("bad") for d in (d1, d2, d3)))
    await bad.birth()
    await until(lambda: "bad" in d1.heard and d2.heard.count("bad") == 2)
    assert [data["action"] for _, data in d2.records] == ["block", "unblock"]
    assert [data["action"] for _, data in d3.records] == ["block", "unblock"]

    code, out, _ = await igris(capsys, "block", "list", "--root", str(roots / "d2"), "--json")
    listed = json.loads(out)
    assert [(e["target"], e["state"], e["reason"]) for e in listed] == [
        ("device:bad", "unblocked", "found")]
    code, out, _ = await igris(capsys, "block", "list", "--root", str(roots / "d2"))
    assert out.splitlines()[0].split()[:2] == ["TARGET", "STATE"]
    assert "device:bad" in out and "found" in out


def test_add_without_a_broker_says_how_to_name_one(roots, capsys, monkeypatch):
    monkeypatch.delenv("IGRIS_MQTT_BROKER", raising=False)
    code = main(["block", "add", "bad", "--reason", "x", "--root", str(roots / "op")])
    _, err = capsys.readouterr()
    assert code == 1
    assert "no broker" in err and "--broker" in err


def test_list_without_an_agent_database_and_bad_durations(roots, capsys):
    code = main(["block", "list", "--root", str(roots / "op")])
    assert code == 1 and "igris run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["block", "add", "bad", "--reason", "x", "--expires-in", "soon"])
    assert "not a duration" in capsys.readouterr().err


def test_cli_trusts_the_cas_of_the_policy_in_force_in_its_root(roots):
    op = Identity.load(roots / "op")
    assert trust_anchors(roots / "op", op) == (TrustAnchor(op.ca_public),)
    Database.open(database_path(roots / "op")).close()  # an agent ran, no policy yet
    assert trust_anchors(roots / "op", op) == (TrustAnchor(op.ca_public),)
    new = FleetCa.init(roots / "new-ca", "lab")
    policy = {"version": 2, "trust": {"ca": [
        {"key": b64url_encode(new.public_key)},
        {"key": b64url_encode(op.ca_public), "until_ms": 1_900_000_000_000},
    ]}}
    db = Database.open(database_path(roots / "op"))
    db.conn.execute("INSERT INTO policy (version, document, author, envelope, applied_ms) "
                    "VALUES (2, ?, 'op', '{}', 0)", (json.dumps(policy),))
    db.close()
    assert trust_anchors(roots / "op", op) == (
        TrustAnchor(new.public_key), TrustAnchor(op.ca_public, 1_900_000_000_000))
