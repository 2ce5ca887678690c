"""Ledger checkpoints between real devices: published, kept, and flagged on rollback or fork.

Devices are real components (identity, SQLite, ledger, signed channel) on the
in-process transport, and once over a real Mosquitto.
"""

import asyncio
import json
import sqlite3
from dataclasses import dataclass

import pytest

from agent.compat import b64url_decode, b64url_encode
from agent.db import Database
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.security_mesh import Checkpoints, Ledger
from agent.security_mesh.checkpoints import HISTORY
from agent.transport import InprocBroker, InprocTransport, MqttTransport, Transport
from agent.wire import HybridClock, Topics
from tests.support.clock import Clock
from tests.support.waiting import until

NOW = 1_800_000_000_000
TOPICS = Topics("lab")


@dataclass
class Device:
    identity: Identity
    db: Database
    ledger: Ledger
    channel: SignedChannel
    checkpoints: Checkpoints
    flagged: list

    @property
    def id(self):
        return self.identity.device_id

    def fill(self, n, what="cmd"):
        self.ledger.append_many([("command", {"what": f"{what}-{i}"}) for i in range(n)])


@pytest.fixture
def fleet(tmp_path, async_cleanup):
    """``await fleet.device(name)``: an enrolled device with its own database, started."""
    ca = FleetCa.init(tmp_path / "ca", "lab")
    clock = Clock(NOW)

    class Fleet:
        def __init__(self):
            self.hub = InprocBroker()
            self.devices = []

        async def device(self, name, *, transport: Transport | None = None,
                         db_name="igris.db", start=True, interval_s=3600.0):
            root = tmp_path / name
            if not (root / "cert.json").exists():
                enroll(root, ca, name, now_ms=NOW, days=10)
            identity = Identity.load(root)
            db = Database.open(root / db_name)
            hlc = HybridClock(clock)
            transport = transport or InprocTransport(self.hub, client_id=f"{name}-{db_name}")
            channel = SignedChannel(transport, identity,
                                    TrustStore(identity.ca_public, fleet="lab", now_ms=clock),
                                    hlc=hlc, now_ms=clock)
            ledger = Ledger(db, identity, hlc)
            flagged = []
            checkpoints = Checkpoints(
                ledger, channel, TOPICS, db, now_ms=clock, interval_s=interval_s,
                on_flag=lambda dev, flag, detail: flagged.append((dev, flag)),
            )
            device = Device(identity, db, ledger, channel, checkpoints, flagged)
            self.devices.append(device)
            async_cleanup.push(lambda: self.stop(device))
            if start:
                await self.start(device)
            return device

        async def start(self, device):
            await device.channel.transport.start()
            await device.checkpoints.start()

        async def stop(self, device):
            if device in self.devices:
                self.devices.remove(device)
                await device.checkpoints.stop()
                await device.channel.transport.stop()
                device.db.close()

    return Fleet()


async def settle():
    for _ in range(10):
        await asyncio.sleep(0)


def seen(device, peer):
    return device.db.conn.execute(
        "SELECT size, head FROM peer_checkpoints WHERE device_id = ?", (peer,)).fetchone()


def flag_entries(device):
    return [e.body for e in device.ledger.entries() if e.kind == "checkpoint_flag"]


async def test_peers_keep_each_others_newest_checkpoint(fleet):
    """No births here: the certificate in each checkpoint is enough to verify it."""
    a = await fleet.device("a")
    b = await fleet.device("b")
    await until(lambda: seen(b, "a") is not None)  # a's retained one, from before b came
    b.fill(3)
    assert await b.checkpoints.publish()
    await until(lambda: seen(a, "b") == b.ledger.head())
    assert not await b.checkpoints.publish()  # head did not move: nothing new to say
    await until(lambda: seen(b, "a") == a.ledger.head())
    b.fill(2)
    await b.checkpoints.publish()
    await until(lambda: seen(a, "b") == b.ledger.head())
    assert a.checkpoints.flags() == {} and a.flagged == [] and flag_entries(a) == []
    assert b.checkpoints.published == 3  # at start, then twice


async def test_history_lists_the_last_checkpoints_with_heads_read_from_the_ledger(fleet):
    a = await fleet.device("a")
    got = []
    # On the bare transport: a second gated subscription would see each message as a replay.
    await a.channel.transport.subscribe(
        TOPICS.checkpoint("a"), lambda msg: got.append(json.loads(msg.payload)["body"]))
    for _ in range(HISTORY + 4):
        a.fill(1)
        await a.checkpoints.publish()
    await until(lambda: len(got) >= HISTORY + 5)
    last = got[-1]
    sizes = [size for size, _ in last["history"]]
    assert sizes == list(range(4, HISTORY + 4))
    heads = a.ledger.head_at(sizes)
    assert all(b64url_decode(h) == heads[s] for s, h in last["history"])
    assert (last["size"], b64url_decode(last["head"])) == a.ledger.head()


async def test_rollback_is_flagged_once_and_recorded_in_the_ledger(fleet):
    a = await fleet.device("a")
    b = await fleet.device("b")
    b.fill(5)
    await b.checkpoints.publish()
    await until(lambda: seen(a, "b") is not None and seen(a, "b")[0] == 5)
    conn = sqlite3.connect(b.db.path)  # someone cuts b's ledger short
    with conn:
        conn.execute("DELETE FROM ledger WHERE seq > 3")
    conn.close()
    assert b.ledger.verify().ok  # the shorter chain verifies on its own...
    await b.checkpoints.publish()
    await until(lambda: a.flagged)  # ...but not against what a saw
    assert a.flagged == [("b", "rollback")]
    assert a.checkpoints.flags() == {"b": "rollback"}
    assert seen(a, "b")[0] == 5  # the most b ever claimed stays the reference
    await until(lambda: b.flagged)
    assert b.flagged == [("b", "rollback")]  # b checks its own checkpoints too
    conn = sqlite3.connect(b.db.path)  # cut shorter still: the same flag, recorded once
    with conn:
        conn.execute("DELETE FROM ledger WHERE seq > 2")
    conn.close()
    assert await b.checkpoints.publish()
    await settle()
    (entry,) = flag_entries(a)
    assert entry["device"] == "b" and entry["flag"] == "rollback"
    assert entry["seen"][0] == 5 and entry["got"][0] == 3
    assert a.flagged == [("b", "rollback")]
    assert a.ledger.verify().ok


async def test_two_ledgers_of_the_same_size_are_a_fork(fleet):
    a = await fleet.device("a")
    b = await fleet.device("b")
    b.fill(4)
    await b.checkpoints.publish()
    await until(lambda: seen(a, "b") is not None)
    await fleet.stop(b)
    clone = await fleet.device("b", db_name="clone.db", start=False)  # same key, other history
    clone.fill(4, what="other")
    await fleet.start(clone)
    await until(lambda: a.flagged)
    assert a.flagged == [("b", "fork")]
    assert "same size" in flag_entries(a)[0]["detail"]


async def test_a_rewritten_past_shows_in_the_history(fleet):
    a = await fleet.device("a")
    b = await fleet.device("b")
    b.fill(3)
    await b.checkpoints.publish()
    await until(lambda: seen(a, "b") == b.ledger.head())
    conn = sqlite3.connect(b.db.path)  # b rewrites entry 3 and goes on from there
    with conn:
        conn.execute("DELETE FROM ledger WHERE seq >= 3")
    conn.close()
    b.fill(4, what="rewritten")
    assert b.ledger.verify().ok and len(b.ledger) == 6
    await b.checkpoints.publish()
    await until(lambda: a.flagged)
    assert a.flagged == [("b", "fork")]
    assert "past was rewritten" in flag_entries(a)[0]["detail"]
    assert seen(a, "b")[0] == 6
    assert b.flagged == [("b", "fork")]  # b checks its own checkpoints too


async def test_a_device_restored_from_an_old_backup_flags_itself(fleet):
    a = await fleet.device("a")
    a.fill(5)
    await a.checkpoints.publish()  # retained on the broker
    await settle()
    await fleet.stop(a)
    restored = await fleet.device("a", db_name="restored.db")
    await until(lambda: restored.flagged)
    assert restored.flagged == [("a", "rollback")]


async def test_checkpoints_under_another_devices_name_are_ignored(fleet):
    a = await fleet.device("a")
    await fleet.device("b")
    mallory = await fleet.device("mallory")
    fake = {"size": 0, "head": b64url_encode(bytes(32)), "history": []}
    await mallory.channel.publish(TOPICS.checkpoint("b"), "ledger", fake, retain=True)
    await mallory.channel.publish(TOPICS.checkpoint("mallory"), "ledger", {"size": "many"})
    await until(lambda: a.checkpoints.ignored["wrong_source"] == 1)
    await until(lambda: a.checkpoints.ignored["malformed"] == 1)
    assert seen(a, "b") == (0, bytes(32))  # b's own, not mallory's
    assert a.flagged == []


async def test_checkpoints_go_out_on_the_interval_only_when_the_head_moves(fleet):
    a = await fleet.device("a", interval_s=0.01)
    await asyncio.sleep(0.05)
    assert a.checkpoints.published == 1  # the one at start, none while idle
    a.fill(1)
    await until(lambda: a.checkpoints.published == 2)


@pytest.mark.async_timeout(30)
async def test_rollback_is_flagged_over_a_real_mosquitto(fleet, broker):
    def mqtt(client_id):
        return MqttTransport(broker.client_settings(client_id))

    a = await fleet.device("a", transport=mqtt("a"))
    b = await fleet.device("b", transport=mqtt("b"))
    await a.channel.transport.wait_connected(5)
    await b.channel.transport.wait_connected(5)
    b.fill(4)
    await b.checkpoints.publish()
    await until(lambda: seen(a, "b") == b.ledger.head(), timeout=10)
    conn = sqlite3.connect(b.db.path)
    with conn:
        conn.execute("DELETE FROM ledger WHERE seq > 2")
    conn.close()
    await b.checkpoints.publish()
    await until(lambda: a.flagged, timeout=10)
    assert a.flagged == [("b", "rollback")]
    assert a.checkpoints.flags() == {"b": "rollback"}
