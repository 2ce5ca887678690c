"""Memory sync between three devices on the in-process hub: digests, pulls over signed
commands (mem.pull), last-writer-wins merges, tombstones, expiry, restarts."""

from __future__ import annotations

import pytest

from agent.bus import Bus, CommandRegistry, CommandServer
from agent.db import Database
from agent.identity import FleetCa, Identity, enroll
from agent.memory import MemoryStore, PoolKeys
from agent.memory import sync as memsync
from agent.memory.sync import (
    BUCKETS,
    MemorySync,
    bucket_index,
    bucket_of,
    bus_requester,
    merge_rows,
    pool_digest,
    rows_for,
)
from agent.transport import InprocBroker
from agent.wire import HybridClock
from tests.memory.test_sharing import NAMES, NOW, TOPICS, Clock, Node
from tests.support.waiting import until

POOL = "notes"


class SyncNode(Node):
    """A sharing node that also answers and sends signed commands, and syncs."""

    def __init__(self, ident, hub, clock, root):
        super().__init__(ident, hub, clock, root)
        registry = CommandRegistry()
        self.server = CommandServer(self.channel, TOPICS, self.db, registry,
                                    record=lambda kind, body: None,
                                    policy_section=lambda name: {}, now_ms=clock)
        self.bus = Bus(self.channel, TOPICS, membership=None, serves_commands=True)
        self.sync = MemorySync(self.store, self.sharing, bus_requester(self.bus, timeout=2))
        registry.add(self.sync.pull_command())

    async def start(self) -> SyncNode:
        await super().start()
        await self.server.start()
        await self.bus.start()
        return self

    async def stop(self) -> None:
        await self.sync.stop()
        await self.bus.stop()
        await self.server.stop()
        await super().stop()


@pytest.fixture
def fleet(tmp_path, async_cleanup):
    """``await fleet.start()`` → nodes a, b, c; ``fleet.restart(name)`` stops and reopens."""
    ca = FleetCa.init(tmp_path / "ca", "lab")
    for name in NAMES:
        enroll(tmp_path / name, ca, name, now_ms=NOW)

    class Fleet:
        def __init__(self):
            self.hub = InprocBroker()
            self.clock = Clock(NOW)
            self.nodes: dict[str, SyncNode] = {}

        async def open(self, name: str) -> SyncNode:
            node = SyncNode(Identity.load(tmp_path / name), self.hub, self.clock,
                            tmp_path / name)
            await node.start()
            self.nodes[name] = node

            async def stop(node=node):
                if self.nodes.get(name) is node:
                    del self.nodes[name]
                    await node.stop()
            async_cleanup.push(stop)
            return node

        async def start(self) -> dict[str, SyncNode]:
            for name in NAMES:
                await self.open(name)
            for node in self.nodes.values():
                await until(lambda node=node: node.heard >= set(NAMES))
            return self.nodes

        async def close(self, name: str) -> None:
            await self.nodes.pop(name).stop()

    return Fleet()


async def shared(n, members=("b", "c")) -> None:
    """A makes the pool and shares it; every member holds the key before anyone writes."""
    a = n["a"]
    a.store.set_pool_ttl(POOL, None)
    await a.sharing.share(POOL, list(members))
    for name in members:
        await until(lambda name=name: n[name].sharing.share_of(POOL) is not None)


async def converge(n, names=NAMES) -> None:
    """Every node pulls from every other, twice round (enough for any order)."""
    for _ in range(2):
        for me in names:
            for peer in names:
                if me != peer:
                    await n[me].sync.sync(peer, POOL)


def rows_per_reply(node) -> list[int]:
    """From now on, how many rows each ``mem.pull`` reply to ``node`` carries."""
    replies: list[int] = []
    request = node.sync.request

    async def counting(peer, command, args):
        result = await request(peer, command, args)
        replies.append(len(result.get("rows", [])))
        return result

    node.sync.request = counting
    return replies


def values(node):
    return {d.key: d.value for d in node.store.query(POOL).documents}


async def test_concurrent_writes_converge(fleet):
    n = await fleet.start()
    await shared(n)
    a, b, c = n["a"], n["b"], n["c"]
    a.store.put(POOL, "same", "from a")
    b.store.put(POOL, "same", "from b")
    a.store.put(POOL, "only-a", 1)
    b.store.put_many(POOL, [("only-b", 2), ("same", "from b again")])
    c.store.put(POOL, "only-c", 3)
    await converge(n)
    roots = {pool_digest(node.store, POOL)["root"] for node in (a, b, c)}
    assert len(roots) == 1
    assert values(a) == values(b) == values(c)
    assert values(a)["only-a"] == 1 and values(a)["only-c"] == 3
    # B's second write of "same" is the newest (a later HLC stamp) on every device.
    assert values(c)["same"] == "from b again"
    assert a.sync.counters["refused"] == 0 and c.sync.counters["applied"] == 3


async def test_agent_offline_while_others_write_catches_up_after_restart(fleet):
    n = await fleet.start()
    await shared(n)
    n["a"].store.put(POOL, "before", 0)
    await converge(n)
    await fleet.close("c")
    a, b = n["a"], n["b"]
    a.store.put_many(POOL, [(f"a/{i}", i) for i in range(20)])
    b.store.put_many(POOL, [(f"b/{i}", i) for i in range(20)])
    a.store.delete(POOL, "before")
    await converge(n, ("a", "b"))
    # C comes back (a fresh process on the same database) and hears A's heartbeat digests.
    c = await fleet.open("c")
    tasks = c.sync.on_peer_digests("a", a.sync.digests())
    assert len(tasks) == 1
    assert c.sync.on_peer_digests("a", a.sync.digests()) == tasks  # one sync in flight
    counts = await tasks[0]
    assert counts["applied"] == 41 and counts["deltas"] == 1 and counts["walks"] == 0
    assert values(c) == values(a) and c.store.get(POOL, "before") is None
    assert c.sync.digests() == a.sync.digests() == b.sync.digests()
    assert c.sync.on_peer_digests("b", b.sync.digests()) == []  # same root: nothing to do


async def test_a_delete_never_resurrects(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put(POOL, "k", "old")
    await b.sync.sync("a", POOL)
    old_rows = rows_for(b.store, POOL, ["k"])
    assert b.store.get(POOL, "k").value == "old"
    assert a.store.delete(POOL, "k")
    # A syncs with B, which holds the older write: it does not even travel.
    counts = await a.sync.sync("b", POOL)
    assert counts["buckets"] == 1 and counts["pulled"] == counts["applied"] == 0
    assert a.store.get(POOL, "k") is None
    # B gets the tombstone; a replay of the old row later changes nothing anywhere.
    await b.sync.sync("a", POOL)
    assert b.store.get(POOL, "k") is None
    for node in (a, b):
        assert merge_rows(node.store, POOL, old_rows)["stale"] == 1
        assert node.store.get(POOL, "k") is None
    await converge(n)
    assert all(node.store.get(POOL, "k") is None for node in n.values())
    assert len({pool_digest(node.store, POOL)["root"] for node in n.values()}) == 1


async def test_expired_documents_vanish_everywhere(fleet):
    n = await fleet.start()
    await shared(n)
    a = n["a"]
    a.store.put(POOL, "brief", 1, ttl_s=1)
    a.store.put(POOL, "stays", 2)
    await converge(n)
    assert all(node.store.get(POOL, "brief").value == 1 for node in n.values())
    fleet.clock.ms += 2000
    assert a.store.sweep() == 1  # only A sweeps; the others still hold the expired row
    assert len({pool_digest(node.store, POOL)["root"] for node in n.values()}) == 1
    await converge(n)
    assert a.db.conn.execute("SELECT count(*) FROM documents WHERE key = 'brief'").fetchone() \
        == (0,)
    for node in n.values():
        node.store.sweep()
        assert node.store.get(POOL, "brief") is None and values(node) == {"stays": 2}
    # A row that has expired is not kept even if a peer sends it.
    assert sum(node.sync.counters["expired"] for node in n.values()) == 0


async def test_after_the_first_walk_only_deltas_travel(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put_many(POOL, [(f"doc/{i}", i) for i in range(100)])
    first = await b.sync.sync("a", POOL)
    assert first["walks"] == 1 and first["pulled"] == 100 and first["buckets"] == BUCKETS
    assert b.sync.watermark("a", POOL) == (memsync.db_epoch(a.store), memsync.head_seq(a.store))
    a.store.put(POOL, "doc/7", "changed")
    second = await b.sync.sync("a", POOL)
    assert second["deltas"] == 1 and second["walks"] == second["buckets"] == 0
    assert second["pulled"] == second["applied"] == 1
    assert b.store.get(POOL, "doc/7").value == "changed"
    assert (await b.sync.sync("a", POOL))["pulled"] == 0
    # What B merged from A is not sent back to A.
    back = await a.sync.sync("b", POOL)
    assert back["walks"] == 1 and back["pulled"] == 0
    a.store.put(POOL, "doc/8", "changed too")
    await b.sync.sync("a", POOL)
    assert (await a.sync.sync("b", POOL))["pulled"] == 0


async def test_without_a_watermark_only_changed_buckets_travel(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put_many(POOL, [(f"doc/{i}", i) for i in range(100)])
    await b.sync.sync("a", POOL)
    a.store.put(POOL, "doc/7", "changed")
    b.db.conn.execute("DELETE FROM mem_watermarks")
    second = await b.sync.sync("a", POOL)
    assert second["walks"] == 1 and second["buckets"] == 1
    assert second["pulled"] == second["applied"] == 1


async def test_a_peer_with_another_database_is_walked_again(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put_many(POOL, [(f"doc/{i}", i) for i in range(10)])
    await b.sync.sync("a", POOL)
    # A's database is replaced by another one (a new epoch): B's watermark means nothing.
    a.db.set_meta("mem_epoch", "f" * 16)
    a.store.put(POOL, "doc/3", "new")
    counts = await b.sync.sync("a", POOL)
    assert counts["deltas"] == 0 and counts["walks"] == 1 and counts["applied"] == 1
    assert b.sync.watermark("a", POOL)[0] == "f" * 16
    # A rolled back behind B's watermark (restored from an older copy): the same.
    b.db.conn.execute("UPDATE mem_watermarks SET seq = seq + 1000")
    a.store.put(POOL, "doc/4", "newer")
    counts = await b.sync.sync("a", POOL)
    assert counts["walks"] == 1 and counts["applied"] == 1


async def test_a_row_lost_here_is_repaired_by_a_walk_when_deltas_stop_helping(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put_many(POOL, [(f"doc/{i}", i) for i in range(10)])
    await b.sync.sync("a", POOL)
    b.db.conn.execute("DELETE FROM documents WHERE key = 'doc/5'")  # lost behind our back
    for _ in range(memsync.WALK_AFTER - 1):
        counts = await b.sync.sync("a", POOL)
        assert counts["deltas"] == 1 and counts["walks"] == 0 and counts["pulled"] == 0
    counts = await b.sync.sync("a", POOL)
    assert counts["walks"] == 1 and counts["applied"] == 1
    assert b.store.get(POOL, "doc/5").value == 5
    assert pool_digest(b.store, POOL) == pool_digest(a.store, POOL)


async def test_equal_roots_reset_the_count_towards_a_walk(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put(POOL, "k", 1)
    await b.sync.sync("a", POOL)
    await a.sync.sync("b", POOL)
    b.store.put(POOL, "from-b", 2)  # B is ahead: its pulls from A bring nothing new
    for _ in range(memsync.WALK_AFTER - 1):
        assert (await b.sync.sync("a", POOL))["walks"] == 0
    await a.sync.sync("b", POOL)  # A catches up; B then hears an equal root
    assert b.sync.on_peer_digests("a", a.sync.digests()) == []
    b.store.put(POOL, "from-b", 3)
    assert (await b.sync.sync("a", POOL))["walks"] == 0


async def test_deltas_travel_in_chunks_and_skip_expired_rows(fleet, monkeypatch):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put(POOL, "first", 0)
    await b.sync.sync("a", POOL)
    monkeypatch.setattr(memsync, "CHUNK", 3)
    monkeypatch.setattr(memsync, "SCAN", 5)
    a.store.put(POOL, "brief", 1, ttl_s=1)
    fleet.clock.ms += 2000
    a.store.put_many(POOL, [(f"doc/{i}", i) for i in range(20)])
    replies = rows_per_reply(b)
    counts = await b.sync.sync("a", POOL)
    assert counts["deltas"] == 1 and counts["applied"] == counts["pulled"] == 20
    assert max(replies) == 3 and len(replies) >= 7
    assert b.store.get(POOL, "brief") is None
    assert pool_digest(b.store, POOL) == pool_digest(a.store, POOL)
    assert b.sync.watermark("a", POOL)[1] == memsync.head_seq(a.store)


async def test_malformed_deltas_are_refused(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put(POOL, "k", 1)
    await b.sync.sync("a", POOL)
    epoch, since = b.sync.watermark("a", POOL)
    bad = [["not a dict"], {"rows": "x", "next": since, "more": False, "root": "r"},
           {"rows": [], "next": since - 1, "more": False, "root": "r"},
           {"rows": [], "next": since, "more": True},
           {"rows": [], "next": since, "more": False}]
    for reply in bad:
        async def answer(peer, command, args, reply=reply):
            return reply
        b.sync.request = answer
        with pytest.raises(memsync.MemoryStoreError, match="malformed delta"):
            await b.sync.sync("a", POOL)
    assert b.sync.watermark("a", POOL) == (epoch, since)


async def test_buckets_travel_in_chunks(fleet, monkeypatch):
    monkeypatch.setattr(memsync, "CHUNK", 3)
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put_many(POOL, [(f"doc/{i}", i) for i in range(80)])
    index, following = bucket_index(a.store, POOL, bucket_of("doc/0"))
    assert len(index) == 3 and following == index[-1][0]
    counts = await b.sync.sync("a", POOL)
    assert counts["pulled"] == counts["applied"] == 80
    assert pool_digest(b.store, POOL) == pool_digest(a.store, POOL)


async def test_large_documents_travel_a_few_per_reply(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    big = "x" * (30 * 1024)
    a.store.put_many(POOL, [(f"big/{i}", big) for i in range(5)])
    replies = rows_per_reply(b)
    counts = await b.sync.sync("a", POOL)
    assert counts["applied"] == 5 and max(replies) == 1
    assert pool_digest(b.store, POOL) == pool_digest(a.store, POOL)


async def test_non_member_is_refused_and_stores_nothing(fleet):
    n = await fleet.start()
    await shared(n, members=("b",))
    a, c = n["a"], n["c"]
    a.store.put(POOL, "secret", 1)
    result = await c.bus.request("a", memsync.PULL, {"pool": POOL, "bucket": 0},
                                 mode="first", timeout=2)
    assert result.replies["a"].error["code"] == "forbidden"
    with pytest.raises(Exception, match="forbidden"):
        await c.sync.sync("a", POOL)
    rows = rows_for(a.store, POOL, ["secret"])
    assert merge_rows(c.store, POOL, rows)["refused"] == 1
    assert c.db.conn.execute("SELECT count(*) FROM documents").fetchone() == (0,)
    # C announces no digest for the pool and A starts no sync for C's.
    assert c.sync.digests() == {}
    assert a.sync.on_peer_digests("c", {POOL: "0" * 64}) == []


async def test_tampered_rows_are_refused(fleet):
    n = await fleet.start()
    await shared(n)
    a, b = n["a"], n["b"]
    a.store.put(POOL, "k", {"v": 1})
    rows = rows_for(a.store, POOL, ["k"])
    forged = [dict(rows[0], version=9), dict(rows[0], key="other"),
              dict(rows[0], deleted=True), {"key": "k"}]
    assert merge_rows(b.store, POOL, forged)["refused"] == 4
    assert b.db.conn.execute("SELECT count(*) FROM documents").fetchone() == (0,)


async def test_sync_survives_a_failing_peer(fleet):
    n = await fleet.start()
    await shared(n)
    a = n["a"]
    await fleet.close("b")
    task = a.sync.start_sync("b", POOL)
    assert await task == {}
    assert a.sync.counters["failed"] == 1


async def test_cached_digest_follows_writes_from_other_processes_and_expiry(fleet, tmp_path):
    n = await fleet.start()
    await shared(n)
    a = n["a"]
    a.store.put(POOL, "k", 1, ttl_s=5)
    first = a.sync.digest(POOL)
    assert a.sync.digest(POOL) is first and first == pool_digest(a.store, POOL)
    # A write by another connection (the CLI beside the agent) is seen.
    db = Database.open(tmp_path / "a" / "igris.db")
    try:
        MemoryStore(db, PoolKeys(db, a.ident.box_key), HybridClock(fleet.clock),
                    now_ms=fleet.clock).put(POOL, "cli", 2)
    finally:
        db.close()
    second = a.sync.digest(POOL)
    assert second != first and second == pool_digest(a.store, POOL)
    fleet.clock.ms += 6000  # "k" expires: the digest no longer counts it
    third = a.sync.digest(POOL)
    assert third != second and third == pool_digest(a.store, POOL)
