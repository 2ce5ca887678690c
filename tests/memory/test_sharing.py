"""Pool keys shared with member devices over the in-process hub, with real identities."""

from __future__ import annotations

import asyncio

import pytest

from agent.db import Database
from agent.errors import MemoryStoreError, MemoryTampered
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.memory import MemoryStore, PoolKeys, PoolMemberUnknown, PoolSharing
from agent.memory.sharing import KEYS, NOT_MEMBER, UNOPENED
from agent.transport import InprocBroker, InprocTransport
from agent.wire import HybridClock, Topics
from tests.support.waiting import until

NOW = 1_800_000_000_000
TOPICS = Topics("lab")
NAMES = ("a", "b", "c")


class Clock:
    def __init__(self, ms):
        self.ms = ms

    def __call__(self):
        return self.ms


class Node:
    """One device on the hub: channel, database, keyring, store and sharing."""

    def __init__(self, ident: Identity, hub: InprocBroker, clock: Clock, root):
        self.ident = ident
        self.transport = InprocTransport(hub, client_id=ident.device_id)
        self.channel = SignedChannel(
            self.transport, ident, TrustStore(ident.ca_public, fleet="lab", now_ms=clock),
            hlc=HybridClock(clock), now_ms=clock,
        )
        self.db = Database.open(root / "igris.db")
        self.keys = PoolKeys(self.db, ident.box_key, now_ms=clock)
        self.store = MemoryStore(self.db, self.keys, HybridClock(clock), now_ms=clock)
        self.records: list[tuple[str, dict]] = []
        self.sharing = PoolSharing(self.db, self.channel, TOPICS, self.keys,
                                   record=lambda kind, body: self.records.append((kind, body)),
                                   now_ms=clock)
        self.heard: set[str] = set()

    async def start(self) -> Node:
        await self.transport.start()
        await self.sharing.start()
        await self.channel.subscribe(TOPICS.filter("node", "+", "state"),
                                     lambda env, _msg: self.heard.add(env.src))
        await self.channel.publish(TOPICS.state(self.ident.device_id), "state",
                                   {"cert": self.ident.certificate.to_dict()}, retain=True)
        return self

    async def stop(self) -> None:
        await self.sharing.stop()
        await self.transport.stop()
        self.db.close()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def sync_rows(source: Node, target: Node, pool: str) -> None:
    """Copy a pool's sealed rows as they are (stands in for sync, issue 6 part 3)."""
    columns = "pool, key, version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob"
    rows = source.db.conn.execute(f"SELECT {columns} FROM documents WHERE pool = ?",
                                  (pool,)).fetchall()
    with target.db.transaction() as conn:
        conn.executemany(f"INSERT OR REPLACE INTO documents ({columns}) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


@pytest.fixture
def nodes(tmp_path, async_cleanup):
    """``await nodes()`` → devices a, b, c started on one hub, each knowing the others."""
    ca = FleetCa.init(tmp_path / "ca", "lab")
    for name in NAMES:
        enroll(tmp_path / name, ca, name, now_ms=NOW)
    hub, clock = InprocBroker(), Clock(NOW)

    async def start() -> dict[str, Node]:
        started = {}
        for name in NAMES:
            node = Node(Identity.load(tmp_path / name), hub, clock, tmp_path / name)
            started[name] = await node.start()
            async_cleanup.push(node.stop)
        for node in started.values():
            await until(lambda node=node: node.heard >= set(NAMES))
        return started

    return start


async def test_member_reads_non_member_cannot_and_removal_rotates(nodes):
    n = await nodes()
    a, b, c = n["a"], n["b"], n["c"]
    a.store.put("notes", "one", {"n": 1})
    first = a.keys.key_for("notes")

    share = await a.sharing.share("notes", ["b"])
    assert share.members == ("a", "b")
    await until(lambda: b.keys.has_key("notes"))
    await settle()
    assert b.keys.key_by_id("notes", first.key_id) == first
    assert not c.keys.has_key("notes")
    assert c.sharing.excluded == 1 and c.sharing.share_of("notes") is None
    assert b.sharing.members("notes") == ["a", "b"]

    sync_rows(a, b, "notes")
    sync_rows(a, c, "notes")
    assert b.store.get("notes", "one").value == {"n": 1}
    with pytest.raises(MemoryTampered, match="does not have"):
        c.store.get("notes", "one")

    # A rotation keeps every document readable, on every member.
    a.keys.rotate("notes")
    a.store.put("notes", "two", {"n": 2})
    await a.sharing.share("notes", [])
    await until(lambda: b.keys.key_for("notes").version == 2)
    sync_rows(a, b, "notes")
    assert [d.value for d in b.store.query("notes").documents] == [{"n": 1}, {"n": 2}]

    # B leaves: a new version reaches only A; old documents stay readable by A.
    share = await a.sharing.remove("notes", "b")
    assert share.members == ("a",) and share.version == 3
    await settle()
    await until(lambda: b.sharing.excluded == 1)
    assert b.keys.key_for("notes").version == 2
    assert not c.keys.has_key("notes")
    a.store.put("notes", "three", {"n": 3})
    assert [d.value for d in a.store.query("notes").documents] == [{"n": 1}, {"n": 3}, {"n": 2}]
    sync_rows(a, b, "notes")
    with pytest.raises(MemoryTampered, match="does not have"):
        b.store.get("notes", "three")
    assert a.sharing.members("notes") == ["a"]
    assert [kind for kind, _ in a.records] == ["mem_keys"] * 3
    assert b.sharing.refused == {} and c.sharing.refused == {}


async def test_new_member_gets_every_key_version(nodes):
    n = await nodes()
    a, b = n["a"], n["b"]
    a.store.put("notes", "old", "before")
    a.keys.rotate("notes")
    a.store.put("notes", "new", "after")
    await a.sharing.share("notes", ["b"])
    await until(lambda: b.keys.has_key("notes"))
    sync_rows(a, b, "notes")
    assert [d.value for d in b.store.query("notes").documents] == ["after", "before"]


async def test_forged_key_message_from_a_non_member_is_refused(nodes):
    n = await nodes()
    a, b, c = n["a"], n["b"], n["c"]
    a.store.put("notes", "one", 1)
    await a.sharing.share("notes", ["b"])
    await until(lambda: b.keys.has_key("notes"))

    # C makes its own key for A's pool and sends it to A and B as if it were a member.
    c.keys.create("notes")
    await c.sharing.share("notes", ["a", "b"])
    await until(lambda: a.sharing.refused[NOT_MEMBER] == 1 and b.sharing.refused[NOT_MEMBER] == 1)
    assert a.sharing.members("notes") == ["a", "b"] and b.sharing.members("notes") == ["a", "b"]
    assert a.keys.key_for("notes").key_id == b.keys.key_for("notes").key_id != \
        c.keys.key_for("notes").key_id

    # A's own pool, never shared, is not taken over by a stranger either.
    a.store.put("diary", "day", 1)
    c.keys.create("diary")
    await c.sharing.share("diary", ["a"])
    await until(lambda: a.sharing.refused[NOT_MEMBER] == 2)
    assert a.sharing.members("diary") == ["a"]
    assert len(a.sharing._held_keys("diary")) == 1


async def test_wrapped_entry_for_another_device_does_not_open(nodes):
    n = await nodes()
    a, b = n["a"], n["b"]
    a.store.put("notes", "one", 1)
    await a.sharing.share("notes", ["b"])
    await until(lambda: b.keys.has_key("notes"))
    # A member relabels A's entry as B's: signed by a member, but it does not open for B.
    body = a.channel.seal("mem", {"pool": "notes", "key_id": "9.xxxxxxxx", "version": 9,
                                  "members": ["a", "b"], "wrapped": {"b": "AAAA"}})
    await a.transport.publish(TOPICS.mem("notes", KEYS), body.encode(), qos=1, retain=True)
    await until(lambda: b.sharing.refused[UNOPENED] == 1)
    assert b.keys.key_for("notes").version == 1


async def test_unknown_member_is_reported_and_nothing_changes(nodes):
    n = await nodes()
    a = n["a"]
    a.store.put("notes", "one", 1)
    with pytest.raises(PoolMemberUnknown, match="ghost"):
        await a.sharing.share("notes", ["b", "ghost"])
    assert a.sharing.share_of("notes") is None
    await a.sharing.share("notes", ["b"])
    with pytest.raises(MemoryStoreError, match="not a member"):
        await a.sharing.remove("notes", "c")
    with pytest.raises(MemoryStoreError, match="itself"):
        await a.sharing.remove("notes", "a")
    assert a.keys.key_for("notes").version == 1
    # A removal that cannot be sent (here: over the message limit) does not rotate either.
    await a.sharing.share("notes", ["c"])
    a.channel.max_bytes = 700
    with pytest.raises(MemoryStoreError, match="over the message limit"):
        await a.sharing.remove("notes", "c")
    assert a.keys.key_for("notes").version == 1 and a.sharing.members("notes") == list(NAMES)


async def test_member_list_survives_a_restart(nodes, tmp_path):
    n = await nodes()
    a, b = n["a"], n["b"]
    a.store.put("notes", "one", 1)
    await a.sharing.share("notes", ["b"])
    await until(lambda: b.sharing.share_of("notes") is not None)
    db = Database.open(tmp_path / "b" / "igris.db")
    try:
        keys = PoolKeys(db, b.ident.box_key)
        share = PoolSharing(db, b.channel, TOPICS, keys, now_ms=lambda: NOW).share_of("notes")
        assert share is not None and share.members == ("a", "b") and share.author == "a"
    finally:
        db.close()
