"""Membership on the in-process transport: states, sessions, timeouts, scope, restart.

Every node here is the real stack (identity, signed channel, presence,
membership, SQLite) on a shared in-process broker, with an injected clock so
timeouts are exact. The same code against Mosquitto and real processes is in
test_mesh_agents.py.
"""

from __future__ import annotations

import pytest

from agent.db import Database
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.mesh import Membership, Presence, resolve_scope
from agent.transport import InprocTransport
from agent.wire import HybridClock, Topics
from tests.support.inproc_fleet import node_factory, settle

NOW = 1_800_000_000_000


class Node:
    """One device: transport, channel, presence and membership on a shared hub."""

    def __init__(self, tmp, hub, ca, dev, clock, *, groups=(), caps=(), role="device",
                 scope=None, session=1):
        root = tmp / dev
        if not (root / "cert.json").exists():
            enroll(root, ca, dev, now_ms=NOW, days=10, groups=list(groups), caps=tuple(caps),
                   role=role)
        self.root = root
        self.identity = Identity.load(root)
        self.clock = clock
        self.hub = hub
        self.db = Database.open(root / "igris.db")
        self.transport = InprocTransport(hub, client_id=dev)
        self.channel = SignedChannel(
            self.transport, self.identity,
            TrustStore(self.identity.ca_public, fleet="lab", now_ms=clock),
            hlc=HybridClock(clock), now_ms=clock,
        )
        self.topics = topics = Topics("lab")
        self.presence = Presence(self.channel, topics, session=session,
                                 describe=lambda: {"target": "generic-linux"},
                                 health=lambda: {"status": "healthy"}, heartbeat_s=3600)
        self.membership = Membership(
            self.channel, topics, self.db,
            scope=scope or resolve_scope("auto", self.identity.certificate),
            suspect_after_s=30, dead_after_s=90, now_ms=clock, tick_s=3600,
        )
        self.closed = False
        self.changes: list[tuple[str, str]] = []
        self.membership.add_listener(lambda p: self.changes.append((p.device_id, p.state)))

    async def start(self) -> Node:
        self.transport.set_will(self.presence.will())
        await self.transport.start()
        await self.membership.start()
        await self.presence.start()
        return self

    async def stop(self) -> None:
        await self.membership.stop()
        await self.presence.stop()
        await self.transport.stop()
        self.db.close()
        self.closed = True

    async def crash(self) -> None:
        await self.membership.stop()
        await self.transport.abort()
        self.db.close()
        self.closed = True

    def state(self, dev: str) -> str | None:
        peer = self.membership.peer(dev)
        return peer.state if peer else None

    async def heartbeat(self) -> None:
        await self.channel.publish(self.presence.topics.hb(self.identity.device_id), "state",
                                   {"session": self.presence.session, "seq": 1,
                                    "health": {"status": "ok"}}, qos=0)


@pytest.fixture
def mesh(tmp_path, async_cleanup):
    make, clock = node_factory(Node, tmp_path, async_cleanup)
    return make, clock, tmp_path


async def test_group_peers_see_each_other_and_nobody_else(mesh):
    make, _, _ = mesh
    a = await make("a", groups=["g1"])
    b = await make("b", groups=["g1", "g2"])
    c = await make("c", groups=["g2"])
    await settle()
    assert a.state("b") == "alive" and b.state("a") == "alive"
    assert a.state("c") is None and c.state("a") is None
    assert b.state("c") == "alive" and c.state("b") == "alive"
    # a's subscriptions name its group and its peers, never the fleet's presence
    filters = {sub.filter for sub in a.transport._subs}
    assert "igris/lab/node/+/state" not in filters
    assert "igris/lab/node/b/state" in filters and "igris/lab/node/c/state" not in filters


async def test_operator_and_groupless_devices_watch_the_fleet(mesh):
    make, _, _ = mesh
    a = await make("a", groups=["g1"])
    await make("c", groups=["g2"])
    op = await make("op", role="operator")
    loner = await make("loner")
    await settle()
    assert op.state("a") == op.state("c") == op.state("loner") == "alive"
    assert loner.state("a") == "alive"
    assert a.state("c") is None


async def test_heartbeat_timeouts_go_suspect_then_dead_and_back(mesh):
    make, clock, _ = mesh
    a = await make("a", groups=["g"])
    b = await make("b", groups=["g"])
    await settle()
    clock.ms += 29_000
    a.membership.check_timeouts()
    assert a.state("b") == "alive"
    clock.ms += 2_000
    a.membership.check_timeouts()
    assert a.state("b") == "suspect"
    await b.heartbeat()
    await settle()
    assert a.state("b") == "alive"
    clock.ms += 91_000
    a.membership.check_timeouts()
    a.membership.check_timeouts()
    assert a.state("b") == "dead"
    assert ("b", "suspect") in a.changes and a.changes[-1] == ("b", "dead")


async def test_no_timeouts_while_this_device_is_offline(mesh):
    make, clock, _ = mesh
    a = await make("a", groups=["g"])
    await make("b", groups=["g"])
    await settle()
    a.membership._on_connection(False)
    clock.ms += 200_000
    a.membership.check_timeouts()
    assert a.state("b") == "alive"
    a.membership._on_connection(True)
    a.membership.check_timeouts()
    assert a.state("b") == "alive"  # the clock restarts at reconnect


async def test_crash_is_dead_at_once_and_graceful_stop_is_left(mesh):
    make, _, _ = mesh
    a = await make("a", groups=["g"])
    b = await make("b", groups=["g"])
    c = await make("c", groups=["g"])
    await settle()
    await b.crash()  # the hub sends b's will, as a broker does
    await c.stop()
    await settle()
    assert a.state("b") == "dead"
    assert a.state("c") == "left"


async def test_stale_death_after_a_fast_restart_does_not_kill(mesh):
    make, _, _ = mesh
    a = await make("a", groups=["g"])
    b1 = await make("b", groups=["g"], session=1)
    await settle()
    stale_will = b1.presence.will()
    await b1.stop()
    await make("b", groups=["g"], session=2)
    await settle()
    assert a.membership.peer("b").session == 2 and a.state("b") == "alive"
    # The old session's will arrives late (as a broker may send it after the new birth).
    await a.transport.publish(stale_will.topic, stale_will.payload, qos=1)
    await settle()
    assert a.state("b") == "alive"
    assert a.membership.ignored["stale_death"] == 1


async def test_a_device_may_not_speak_for_another(mesh):
    make, _, _ = mesh
    a = await make("a", groups=["g"])
    b = await make("b", groups=["g"])
    c = await make("c", groups=["g"])
    await settle()
    forged = b.channel.seal("death", {"session": 1, "reason": "lost"})
    await b.transport.publish("igris/lab/node/c/state", forged.encode(), qos=1)
    await settle()
    assert a.state("c") == "alive"
    assert a.membership.ignored["wrong_topic"] == 1
    del c


async def test_peer_table_survives_a_restart(mesh):
    make, clock, _ = mesh
    a = await make("a", groups=["g"])
    b = await make("b", groups=["g"], session=4)
    await settle()
    await b.crash()
    await settle()
    await a.stop()
    a2 = await make("a", groups=["g"])
    # Before anything arrives the table is back, sessions included.
    assert a2.membership.peer("b").state == "dead"
    assert a2.membership.peer("b").session == 4
    assert a2.membership.peer("b").info.get("target") == "generic-linux"
    del clock


def test_scope_resolution(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    cases = {("auto", "device", ("g",)): "group", ("auto", "device", ()): "fleet",
             ("auto", "operator", ("g",)): "fleet", ("group", "device", ()): "fleet",
             ("fleet", "device", ("g",)): "fleet", ("group", "scheduler", ("g",)): "group"}
    for i, ((setting, role, groups), want) in enumerate(cases.items()):
        enroll(tmp_path / f"d{i}", ca, f"d{i}", now_ms=NOW, role=role, groups=list(groups))
        cert = Identity.load(tmp_path / f"d{i}").certificate
        assert resolve_scope(setting, cert) == want, (setting, role, groups)
