"""The fleet blocklist over the in-process transport, with real identities and databases."""

from __future__ import annotations

import pytest

from agent.compat import canonical_json
from agent.errors import CertificateInvalid, EnvelopeRejected, TopicInvalid
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll, key_id
from agent.security_mesh.blocklist import (
    BLOCK,
    UNBLOCK,
    BlockEntry,
    make_entry,
    merge_snapshot,
    parse_target,
    snapshot_body,
)
from agent.transport import InprocBroker, InprocTransport
from agent.transport.base import Message
from agent.wire import HybridClock
from tests.support.blocklist_node import TOPICS, BlocklistNode
from tests.support.clock import Clock
from tests.support.waiting import until

NOW = 1_800_000_000_000


@pytest.fixture
def idents(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    enroll(tmp_path / "op", ca, "op", now_ms=NOW, role="operator")
    for dev in ("d1", "d2", "bad"):
        enroll(tmp_path / dev, ca, dev, now_ms=NOW)
    return {name: Identity.load(tmp_path / name) for name in ("op", "d1", "d2", "bad")}


@pytest.fixture
def fleet(idents, tmp_path, async_cleanup):
    """``await fleet("d1")`` → a started node on one in-process hub (stopped after the test)."""
    hub, clock = InprocBroker(), Clock(NOW)

    async def start(name: str, root_name: str | None = None) -> BlocklistNode:
        transport = InprocTransport(hub, client_id=name)
        node = await BlocklistNode(idents[name], transport, clock,
                                   tmp_path / (root_name or name)).start()
        async_cleanup.push(node.stop)
        return node

    start.clock = clock
    return start


async def test_block_reaches_a_device_and_the_blocked_device_is_dropped(fleet):
    op, d1, bad = await fleet("op"), await fleet("d1"), await fleet("bad")
    await bad.birth()
    await until(lambda: "bad" in d1.heard)
    await op.send_entry(make_entry(op.channel, BLOCK, "bad", "stolen"))
    await until(lambda: d1.blocklist.is_blocked("bad"))
    await bad.birth()
    await until(lambda: d1.channel.dropped["blocked"] == 1)
    assert d1.heard == ["bad"]
    assert [kind for kind, _ in d1.records] == ["block"]
    assert d1.records[0][1] | {"entry": "-", "ts": "-"} == {
        "action": "block", "target": "device:bad", "reason": "stolen", "expires_ms": None,
        "author": "op", "entry": "-", "ts": "-",
    }
    assert d1.blocklist.entries()[0]["state"] == "blocked"


async def test_blocking_a_key_blocks_whoever_signs_with_it(fleet, idents):
    op, d1, bad = await fleet("op"), await fleet("d1"), await fleet("bad")
    await bad.birth()
    await until(lambda: "bad" in d1.heard)
    bad_key = key_id(idents["bad"].certificate.sign_key)
    await op.send_entry(make_entry(op.channel, BLOCK, f"key:{bad_key}", "leaked key"))
    await until(lambda: d1.blocklist.is_blocked("bad"))
    assert not d1.blocklist.is_blocked("d1")
    assert d1.blocklist.entries()[0]["target"] == f"key:{bad_key}"


async def test_late_joiner_learns_from_the_snapshot_and_repeats_are_recorded_once(fleet):
    op, d1 = await fleet("op"), await fleet("d1")
    entry = make_entry(op.channel, BLOCK, "bad", "stolen")
    await op.send_entry(entry)
    await op.send_snapshot([entry])
    await until(lambda: d1.blocklist.stale == 1)  # the snapshot repeats the live entry
    d2 = await fleet("d2")
    await until(lambda: d2.blocklist.is_blocked("bad"))
    assert len(d1.records) == len(d2.records) == 1
    # A reconnect redelivers the retained snapshot: nothing new is recorded.
    await d2.transport.stop()
    await d2.transport.start()
    await until(lambda: d2.blocklist.stale == 1)
    assert len(d2.records) == 1


async def test_newest_entry_per_target_wins_and_older_ones_change_nothing(fleet):
    op, d1 = await fleet("op"), await fleet("d1")
    block = make_entry(op.channel, BLOCK, "bad", "stolen")
    unblock = make_entry(op.channel, UNBLOCK, "bad", "found")
    assert unblock.supersedes(block)
    await op.send_entry(unblock)
    await until(lambda: d1.blocklist.applied == 1)
    await op.send_entry(block)  # arrives late, but is older
    await until(lambda: d1.blocklist.stale == 1)
    assert not d1.blocklist.is_blocked("bad")
    assert d1.blocklist.entries()[0]["state"] == "unblocked"
    assert [data["action"] for _, data in d1.records] == ["unblock"]


async def test_a_block_with_an_expiry_stops_applying_by_itself(fleet):
    op, d1, bad = await fleet("op"), await fleet("d1"), await fleet("bad")
    await bad.birth()
    await until(lambda: "bad" in d1.heard)
    entry = make_entry(op.channel, BLOCK, "bad", "cool down", expires_ms=NOW + 60_000)
    await op.send_entry(entry)
    await until(lambda: d1.blocklist.is_blocked("bad"))
    fleet.clock.ms = NOW + 60_000
    assert not d1.blocklist.is_blocked("bad")
    assert d1.blocklist.entries()[0]["state"] == "expired"
    await bad.birth()
    await until(lambda: d1.heard.count("bad") == 2)
    assert merge_snapshot([entry], make_entry(op.channel, BLOCK, "x", ""),
                          now_ms=fleet.clock.ms)[0].target == "device:x"


async def test_devices_cannot_block_anyone(fleet):
    op, d1, bad = await fleet("op"), await fleet("d1"), await fleet("bad")
    await bad.birth()
    await until(lambda: "bad" in d1.heard)
    # A device signing an entry of its own, live and as a snapshot.
    forged = bad.channel.seal("block", {
        "action": "block", "target": "device:op", "reason": "", "expires_ms": None,
        "cert": bad.ident.certificate.to_dict(),
    })
    await bad.transport.publish(TOPICS.block(), forged.encode(), qos=1)
    await until(lambda: d1.blocklist.refused["not_operator"] == 1)
    await bad.channel.publish(TOPICS.block_snapshot(), "block",
                              {"entries": [forged.to_dict()]}, retain=True)
    await until(lambda: d1.blocklist.refused["not_operator"] == 2)
    # An operator's snapshot carrying the device's entry, and a tampered one.
    tampered = make_entry(op.channel, BLOCK, "d2", "x").envelope | {"sig": forged.sig}
    await op.channel.publish(TOPICS.block_snapshot(), "block",
                             {"entries": [forged.to_dict(), tampered, 7],
                              "cert": op.ident.certificate.to_dict()}, retain=True)
    await until(lambda: d1.blocklist.refused["not_operator"] == 3)
    assert d1.blocklist.refused["unverified"] == 2  # the bad signature and the 7
    assert d1.blocklist.entries() == []
    assert d1.records == []
    assert not d1.blocklist.is_blocked("op")


@pytest.mark.parametrize("change", [
    {"action": "ban"},
    {"target": "node:x"},
    {"target": "device:a/b"},
    {"reason": 5},
    {"expires_ms": "tomorrow"},
    {"extra": 1},
])
async def test_malformed_entries_are_refused_and_counted(fleet, change):
    op, d1 = await fleet("op"), await fleet("d1")
    body = {"action": "block", "target": "device:bad", "reason": "", "expires_ms": None,
            "cert": op.ident.certificate.to_dict()} | change
    await op.channel.publish(TOPICS.block(), "block", body)
    await until(lambda: d1.blocklist.refused["malformed"] == 1)
    assert d1.blocklist.entries() == [] and d1.records == []


async def test_blocklist_survives_a_restart(fleet, idents, tmp_path):
    op, d1, bad = await fleet("op"), await fleet("d1"), await fleet("bad")
    await op.send_entry(make_entry(op.channel, BLOCK, "bad", "stolen"))
    await until(lambda: d1.blocklist.applied == 1)
    before = d1.blocklist.entries()
    await d1.stop()
    again = BlocklistNode(idents["d1"], InprocTransport(InprocBroker(), client_id="d1"),
                          fleet.clock, tmp_path / "d1")
    try:
        # Enforced from construction on, before any message has arrived.
        again.channel.trust.learn(idents["bad"].certificate)
        assert again.blocklist.is_blocked("bad")
        assert again.blocklist.entries() == before
        msg = Message(TOPICS.state("bad"), bad.channel.seal("state", {}).encode(), retain=True)
        assert again.channel.admit(msg) is None
        assert again.channel.dropped["blocked"] == 1
    finally:
        again.db.close()


def test_entries_need_an_operator_and_a_valid_target(idents):
    clock = Clock(NOW)
    device = SignedChannel(InprocTransport(), idents["d1"],
                           TrustStore(idents["d1"].ca_public, fleet="lab", now_ms=clock),
                           hlc=HybridClock(clock), now_ms=clock)
    with pytest.raises(CertificateInvalid, match="this needs 'operator'"):
        make_entry(device, BLOCK, "bad", "")
    assert parse_target("pi-07") == parse_target("device:pi-07") == "device:pi-07"
    assert parse_target("key:AbC-_1") == "key:AbC-_1"
    with pytest.raises(TopicInvalid, match="key id"):
        parse_target("key:")
    with pytest.raises(TopicInvalid, match="device id"):
        parse_target("a b")


def test_snapshot_merges_newest_per_target_and_sheds_tombstones_to_fit(idents):
    clock = Clock(NOW)
    op = SignedChannel(InprocTransport(), idents["op"],
                       TrustStore(idents["op"].ca_public, fleet="lab", now_ms=clock),
                       hlc=HybridClock(clock), now_ms=clock)
    entries: list[BlockEntry] = []
    for i in range(6):
        entries = merge_snapshot(entries, make_entry(op, BLOCK, f"d{i}", "r"), now_ms=NOW)
    for i in range(3):
        entries = merge_snapshot(entries, make_entry(op, UNBLOCK, f"d{i}", ""), now_ms=NOW)
    entries = merge_snapshot(entries, make_entry(op, BLOCK, "gone", "", NOW), now_ms=NOW)
    assert [(e.target, e.blocked) for e in entries] == [
        ("device:d0", False), ("device:d1", False), ("device:d2", False),
        ("device:d3", True), ("device:d4", True), ("device:d5", True),
    ]
    whole = len(canonical_json(snapshot_body(entries, op.identity.certificate)))
    one = len(canonical_json(entries[0].envelope))
    fitted = snapshot_body(entries, op.identity.certificate, max_bytes=whole + 512 - one)
    # The oldest tombstone (d0's unblock) went first.
    assert [e["body"]["target"] for e in fitted["entries"]] == [
        "device:d1", "device:d2", "device:d3", "device:d4", "device:d5"]
    with pytest.raises(EnvelopeRejected, match="over the 2000-byte message limit"):
        snapshot_body(entries, op.identity.certificate, max_bytes=2000)
