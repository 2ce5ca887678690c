"""Lite devices seen by the whole mesh: a gateway's signed relays, read by every membership.

Every node is the real stack (identity, signed channel, presence, membership,
SQLite, and on gateways the real :class:`Gateway` reading records written by
``enroll_lite``) on one in-process hub with a hand-set clock. The lite devices'
messages are MAC'd under their enrolled keys, exactly as a board sends them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.cli.peers_cmd import table
from agent.gateway import Gateway, LiteKeyring, LiteTopics
from agent.identity.lite import enroll_lite
from agent.mesh.peers import RelayedPeer
from agent.wire import Envelope, ParsedTopic, Topics, mac_envelope, matches
from tests.mesh.test_membership import Node as MeshNode
from tests.support.inproc_fleet import NOW, node_factory, settle


class Node(MeshNode):
    """One full agent on the shared hub; ``gateway`` makes it a gateway for lite devices."""

    def __init__(self, tmp: Path, hub: Any, ca: Any, dev: str, clock: Any, *,
                 groups: tuple[str, ...] = ("lab",), caps: tuple[str, ...] = (),
                 gateway: bool = False, scope: str = "auto"):
        super().__init__(tmp, hub, ca, dev, clock, groups=groups, caps=caps,
                         scope=None if scope == "auto" else scope)
        self.lite_topics = LiteTopics(self.topics)
        self.gateway = Gateway(self.channel, self.lite_topics, LiteKeyring(self.root / "lite"),
                               now_ms=clock, tick_s=3600) if gateway else None
        self.keys: dict[str, bytes] = {}

    async def start(self) -> Node:
        await super().start()
        if self.gateway is not None:
            await self.gateway.start()
        return self

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        await super().stop()

    async def crash(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        await super().crash()

    def enroll_lite(self, device: str) -> None:
        made = enroll_lite(self.root.parent / f"board-{device}", device_id=device, fleet="lab",
                           gateway=self.identity.device_id, now_ms=NOW,
                           gateway_root=self.root, broker_host="127.0.0.1")
        self.keys[device] = made.record.key

    async def lite_says(self, device: str, kind: str, leaf: str, body: dict[str, Any],
                        counter: int) -> None:
        """What board ``device`` publishes (MAC'd under its key), as its gateway receives it."""
        env = mac_envelope(Envelope(device, kind, body, [0, counter]), self.keys[device])
        await self.transport.publish(self.lite_topics.topic(device, leaf), env.encode(), qos=1,
                                     retain=leaf == "state")
        await settle()

    async def lite_birth(self, device: str, session: int = 1) -> None:
        await self.lite_says(device, "state", "state",
                             {"session": session, "heartbeat_s": 10, "version": "1"}, 1)

    def lite(self, device: str) -> RelayedPeer | None:
        return {p.device_id: p for p in self.membership.lite_peers()}.get(device)


@pytest.fixture
def mesh(tmp_path: Path, async_cleanup: Any) -> Any:
    return node_factory(Node, tmp_path, async_cleanup)


async def _gateway_and_peer(make: Any) -> tuple[Node, Node]:
    gw = await make("gw", caps=("gateway",), gateway=True)
    gw.enroll_lite("esp-1")
    n2 = await make("n2")
    await settle()
    return gw, n2


def test_relay_topics_parse_back_and_match_only_their_filter() -> None:
    t = Topics("lab", "acme/igris")
    topic = LiteTopics(t).relay("gw-1", "esp.01")
    assert topic == "acme/igris/lab/node/gw-1/lite/esp.01"
    assert t.parse(topic) == ParsedTopic("lite_peer", {"dev": "gw-1", "lite": "esp.01"})
    assert matches(t.filter("node", "+", "lite", "+"), topic)
    assert not matches(t.filter("node", "+", "state"), topic)
    assert not matches(t.filter("node", "+", "hb"), topic)
    assert not matches(t.filter("lite", "+", "state"), topic)
    with pytest.raises(ValueError, match="device id"):
        LiteTopics(t).relay("gw", "esp/1")
    with pytest.raises(ValueError, match="device id"):
        t.parse("acme/igris/lab/node/gw/lite/a+b")


async def test_an_ordinary_agent_sees_a_lite_device_alive_then_dead(mesh: Any) -> None:
    make, clock = mesh
    gw, n2 = await _gateway_and_peer(make)
    await gw.lite_birth("esp-1", session=4)
    peer = n2.lite("esp-1")
    assert peer is not None
    assert (peer.state, peer.session, peer.via, peer.last_seen_ms) == ("alive", 4, "gw", NOW)
    shown = peer.to_dict()
    assert shown["lite"] is True and shown["via"] == "gw" and shown["role"] == "lite"
    assert "esp-1" not in {p.device_id for p in n2.membership.peers()}  # no bus, no tasks
    assert gw.membership.lite_peers() == []  # a gateway ignores its own relays

    clock.ms += 5_000
    await gw.lite_says("esp-1", "death", "state", {"session": 4, "reason": "lost"}, 2)
    peer = n2.lite("esp-1")
    assert peer is not None and peer.state == "dead" and peer.changed_ms == NOW + 5_000
    assert gw.gateway is not None and gw.gateway.relays_sent == 2


async def test_a_gateway_that_dies_takes_its_lite_devices_with_it(mesh: Any) -> None:
    make, _clock = mesh
    gw, n2 = await _gateway_and_peer(make)
    gw.enroll_lite("esp-2")
    await gw.lite_birth("esp-1")
    await gw.lite_birth("esp-2")
    await gw.lite_says("esp-2", "death", "state", {"session": 1, "reason": "shutdown"}, 2)
    assert [(p.device_id, p.state) for p in n2.membership.lite_peers()] == [
        ("esp-1", "alive"), ("esp-2", "left")]
    await gw.crash()  # kill -9: the broker sends the gateway's will
    await settle()
    assert n2.membership.peer("gw").state == "dead"  # type: ignore[union-attr]
    assert [(p.device_id, p.state) for p in n2.membership.lite_peers()] == [
        ("esp-1", "dead"), ("esp-2", "left")]


async def test_a_late_joiner_learns_lite_devices_from_the_retained_relays(mesh: Any) -> None:
    make, _clock = mesh
    gw = await make("gw", caps=("gateway",), gateway=True)
    gw.enroll_lite("esp-1")
    await gw.lite_birth("esp-1", session=2)
    watcher = await make("watcher", groups=(), scope="fleet")  # follows node/+/lite/+
    n3 = await make("n3")  # group scope: follows node/gw/lite/+ once it finds gw
    await settle()
    for node in (watcher, n3):
        peer = node.lite("esp-1")
        assert peer is not None and (peer.state, peer.session) == ("alive", 2), node
    assert watcher.membership.ignored["not_gateway"] == 0


async def test_a_lite_device_is_unknown_while_its_gateway_is_unknown(mesh: Any) -> None:
    make, _clock = mesh
    gw = await make("gw", caps=("gateway",), gateway=True)
    gw.enroll_lite("esp-1")
    await gw.lite_birth("esp-1")
    await gw.transport.publish(gw.topics.state("gw"), b"", qos=1, retain=True)  # birth gone
    watcher = await make("watcher", groups=(), scope="fleet")
    await settle()
    assert watcher.membership.peer("gw") is None
    assert watcher.lite("esp-1").state == "unknown"  # type: ignore[union-attr]
    await gw.presence.publish_birth()
    await settle()
    assert watcher.lite("esp-1").state == "alive"  # type: ignore[union-attr]


async def test_a_relay_from_a_device_without_the_gateway_cap_is_dropped_and_counted(
        mesh: Any) -> None:
    make, _clock = mesh
    rogue = await make("rogue", gateway=True)  # a gateway by config, not by certificate
    rogue.enroll_lite("esp-9")
    n2 = await make("n2")
    await settle()
    await rogue.lite_birth("esp-9")
    assert rogue.gateway is not None and rogue.gateway.peers.get("esp-9") is not None
    assert rogue.gateway.relays_sent == 1
    assert n2.lite("esp-9") is None
    assert n2.membership.ignored["not_gateway"] == 1


async def test_a_relay_never_shadows_a_device_that_signs_for_itself(mesh: Any) -> None:
    make, _clock = mesh
    gw, n2 = await _gateway_and_peer(make)
    gw.enroll_lite("n3")  # a lite record claiming a full device's id
    await gw.lite_says("n3", "state", "state", {"session": 9}, 1)
    assert n2.lite("n3") is not None  # before the real n3 is known
    await make("n3")
    await settle()
    assert n2.membership.peer("n3").session == 1  # type: ignore[union-attr]
    assert n2.lite("n3") is None


async def test_malformed_or_misplaced_relays_are_dropped_and_counted(mesh: Any) -> None:
    make, _clock = mesh
    gw, n2 = await _gateway_and_peer(make)
    good = {"device_id": "esp-1", "via": "gw", "lite": True, "state": "alive", "session": 1,
            "last_seen_ms": NOW, "changed_ms": NOW}
    bad = [
        ("esp-1", {**good, "state": "sleeping"}),       # no such state
        ("esp-1", {**good, "session": -1}),             # not a session
        ("esp-1", {**good, "lite": False}),             # not a lite relay
        ("esp-1", {**good, "via": "n2"}),               # speaks for another gateway
        ("esp-2", good),                                # on another device's topic
        ("esp-1", {**good, "changed_ms": 1.5}),         # not an integer
    ]
    for lite, body in bad:
        await gw.channel.publish(gw.lite_topics.relay("gw", lite), "state", body, qos=1)
    await settle()
    assert n2.membership.ignored["bad_relay"] == len(bad)
    assert n2.membership.lite_peers() == []
    with pytest.raises(ValueError, match="'last_seen_ms'"):
        RelayedPeer.from_relay({**good, "last_seen_ms": "now"})


async def test_the_gateway_refreshes_last_seen_and_old_relays_lose(mesh: Any) -> None:
    make, clock = mesh
    gw, n2 = await _gateway_and_peer(make)
    assert gw.gateway is not None
    await gw.lite_birth("esp-1")
    clock.ms += 10_000
    await gw.lite_says("esp-1", "state", "hb", {"session": 1}, 2)
    gw.gateway.refresh_relays()  # 10 s < the 30 s refresh period: nothing to send
    await settle()
    assert gw.gateway.relays_sent == 1
    clock.ms += 20_000
    gw.gateway.refresh_relays()
    await settle()
    assert gw.gateway.relays_sent == 2
    assert n2.lite("esp-1").last_seen_ms == NOW + 10_000  # type: ignore[union-attr]
    gw.gateway.refresh_relays()  # heard nothing new since: no relay
    await settle()
    assert gw.gateway.relays_sent == 2

    # A relay of an older session than the one known changes nothing.
    stale = {"device_id": "esp-1", "via": "gw", "lite": True, "state": "dead", "session": 0,
             "last_seen_ms": NOW, "changed_ms": NOW}
    await gw.channel.publish(gw.lite_topics.relay("gw", "esp-1"), "state", stale, qos=1)
    await settle()
    assert n2.lite("esp-1").state == "alive"  # type: ignore[union-attr]


async def test_igris_peers_shows_lite_and_via_columns(mesh: Any) -> None:
    make, _clock = mesh
    gw, n2 = await _gateway_and_peer(make)
    await gw.lite_birth("esp-1")
    result = {"scope": n2.membership.scope, "counts": n2.membership.counts(),
              "peers": [p.to_dict() for p in n2.membership.peers()],
              "lite": [p.to_dict() for p in n2.membership.lite_peers()],
              "ignored": {"not_gateway": 2}}
    lines = table(result).splitlines()
    assert lines[0].split() == ["DEVICE", "STATE", "SESSION", "ROLE", "GROUPS", "LITE", "VIA",
                                "LAST", "SEEN", "TARGET", "HEALTH"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows["gw"][1:7] == ["alive", "1", "device", "lab", "-", "-"]
    assert rows["esp-1"][1:7] == ["alive", "1", "lite", "-", "yes", "gw"]
    assert lines[-1] == ("(group scope; 1 alive; lite: 1 alive; "
                         "2 relays dropped from non-gateways)")
