"""Memory sync: pool digests, deltas since a watermark, and last-writer-wins merges.

Each document row (tombstones included) falls in one of 16 buckets, by the
first four bits of the SHA-256 of its key. A bucket's hash covers the sorted
``(key, version, ts, deleted, sha256(blob))`` of its unexpired rows, so a
digest costs no decryption; the root hashes the 16 bucket hashes. Shared
pools' roots ride on heartbeats (``"mem": {pool: root}``).

A member that hears a different root asks the peer (``mem.pull``, members
only) for the rows written there since its watermark: every write of a row,
local or merged, takes a new ``seq`` above all others (migration 10),
and the watermark is the peer's seq this device has pulled up to, with the
epoch (random id) of the peer's database it counts in. One change costs one
request and one reply holding that row. Rows a peer merged from this device
are not sent back to it.

Without a watermark (the first sync with a peer, or the peer's database was
replaced), or when the roots stay apart although deltas bring nothing new
(a row lost or rolled back on one side), the members walk the digest: the
peer's bucket hashes; for each bucket that differs, its index (``key,
version, ts, blob hash``, at most :data:`CHUNK` entries a reply); and then
only the rows that would win here, a few at a time. Either way traffic
grows with what differs, not with the pool's size.

Rows travel sealed, as stored: the blob and its clear columns. A receiver
keeps a row only if it opens with a key of the pool this device holds and
its sealed fields equal its columns (a non-member stores nothing), and only
if it is newer than the row held: last writer wins by HLC stamp, ties
broken by version, then by the blob's hash (the same choice on every
device). A delete is a write, so a tombstone beats every older write and a
deleted document never comes back. Expired rows are neither counted, sent
nor kept, so a device that has swept them and one that has not agree.

>>> sync = MemorySync(store, sharing, bus_requester(bus))      # doctest: +SKIP
>>> registry.add(sync.pull_command())                          # doctest: +SKIP
>>> membership.add_body_listener(sync.on_heartbeat)            # doctest: +SKIP
>>> await sync.sync("pi-02", "notes")                          # doctest: +SKIP
Counter({'buckets': 1, 'pulled': 1, 'applied': 1, ...})
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from agent.bus.registry import Arg, CommandCall, CommandSpec
from agent.compat import b64url_decode, b64url_encode
from agent.errors import CommandFailed, CommandRefused, MemoryStoreError, MemoryTampered
from agent.memory.sharing import PoolSharing
from agent.memory.store import MERGE_UPSERT, MemoryStore
from agent.wire import check_name

log = logging.getLogger(__name__)

BUCKETS = 16
CHUNK = 64
"""At most this many rows per ``mem.pull`` reply."""
CHUNK_BYTES = 40 * 1024
"""And at most about this many bytes of base64 blobs (but always one row), so a reply fits
one 64 KiB message: one document of the largest size is a chunk by itself."""

SCAN = 256
"""At most this many rows looked at per delta reply (rows that are not sent, because they
expired or came from the asker, are skipped but count)."""
WALK_AFTER = 3
"""Walk the digest after this many syncs in a row whose delta brought nothing new while the
roots stayed apart (the peer pulling from us settles an honest difference within one)."""

PULL = "mem.pull"

Requester = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
"""``await request(peer, command, args)`` -> the command's result, or raises."""


def bucket_of(key: str) -> int:
    return hashlib.sha256(key.encode()).digest()[0] >> 4


def _live_rows(store: MemoryStore, pool: str, after: str = "") -> Iterable[tuple[Any, ...]]:
    return store.db.conn.execute(
        "SELECT key, version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob "
        "FROM documents WHERE pool = ? AND key > ? AND (expires_ms IS NULL OR expires_ms > ?) "
        "ORDER BY key", (pool, after, store.now_ms()))


def pool_digest(store: MemoryStore, pool: str) -> dict[str, Any]:
    """``{"root": hex, "buckets": [16 hex]}`` over the pool's unexpired rows."""
    hashes = [hashlib.sha256() for _ in range(BUCKETS)]
    for key, version, ts_ms, ts_counter, _exp, deleted, _kid, blob in _live_rows(store, pool):
        # Keys hold no control characters, so NUL separates fields unambiguously.
        hashes[bucket_of(key)].update(
            f"{key}\0{version}\0{ts_ms}\0{ts_counter}\0{int(bool(deleted))}\0"
            f"{_blob_hash(blob)}\n".encode())
    buckets = [h.hexdigest() for h in hashes]
    return {"root": hashlib.sha256("".join(buckets).encode()).hexdigest(), "buckets": buckets}


def _blob_hash(blob: Any) -> str:
    return hashlib.sha256(blob if isinstance(blob, bytes) else b"").hexdigest()


def _order(ts_ms: Any, ts_counter: Any, version: Any, blob_hash: str) -> tuple[Any, ...] | None:
    """What last-writer-wins compares: stamp, then version, then the blob's hash (the same
    choice on every device); None for a row whose columns are not integers."""
    if not all(type(v) is int for v in (ts_ms, ts_counter, version)):
        return None
    return (ts_ms, ts_counter, version, blob_hash)


def bucket_index(store: MemoryStore, pool: str, bucket: int, *, after: str | None = None,
                 limit: int | None = None) -> tuple[list[list[Any]], str | None]:
    """``[key, version, [ts_ms, ts_counter], blob sha256 hex]`` of one bucket's unexpired rows,
    in key order after ``after``, at most ``limit``; and the key to continue after (or None)."""
    limit = CHUNK if limit is None else limit
    index: list[list[Any]] = []
    for key, version, ts_ms, ts_counter, _exp, _deleted, _kid, blob in \
            _live_rows(store, pool, after or ""):
        if bucket_of(key) != bucket:
            continue
        if len(index) == limit:
            return index, index[-1][0]
        index.append([key, version, [ts_ms, ts_counter], _blob_hash(blob)])
    return index, None


def newer_keys(store: MemoryStore, pool: str, index: Iterable[Any]) -> list[str]:
    """The keys of a peer's index whose rows would win over the rows held here."""
    wanted = []
    for entry in index:
        try:
            key, version, (ts_ms, ts_counter), blob_hash = entry
            theirs = _order(ts_ms, ts_counter, version, str(blob_hash))
        except (TypeError, ValueError):
            continue
        if theirs is None or not isinstance(key, str):
            continue
        held = store.db.conn.execute(
            "SELECT ts_ms, ts_counter, version, blob FROM documents WHERE pool = ? AND key = ?",
            (pool, key)).fetchone()
        ours = None if held is None else _order(*held[:3], _blob_hash(held[3]))
        if ours is None or theirs > ours:
            wanted.append(key)
    return wanted


def rows_for(store: MemoryStore, pool: str, keys: Iterable[str]) -> list[dict[str, Any]]:
    """The sealed unexpired rows of ``keys`` (those held), at most :data:`CHUNK_BYTES` of blobs
    but always one; the caller asks again for the keys not returned."""
    rows: list[dict[str, Any]] = []
    size = 0
    now = store.now_ms()
    for key in keys:
        row = store.db.conn.execute(
            "SELECT key, version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob "
            "FROM documents WHERE pool = ? AND key = ? AND (expires_ms IS NULL OR "
            "expires_ms > ?)", (pool, key, now)).fetchone()
        if row is None:
            continue
        exported = _export(row)
        if rows and size + len(exported["blob"]) > CHUNK_BYTES:
            break
        size += len(exported["blob"])
        rows.append(exported)
    return rows


def _export(row: tuple[Any, ...]) -> dict[str, Any]:
    key, version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob = row
    return {"key": key, "version": version, "ts": [ts_ms, ts_counter], "expires_ms": expires_ms,
            "deleted": bool(deleted), "key_id": key_id, "blob": b64url_encode(blob)}


def head_seq(store: MemoryStore) -> int:
    """The highest seq of this database's document rows (0 before the first): the newest
    write, since seqs only grow (see :meth:`MemoryStore.sweep`)."""
    return store.db.conn.execute("SELECT coalesce(max(seq), 0) FROM documents").fetchone()[0]


def db_epoch(store: MemoryStore) -> str:
    """The random id of this database (migration 10), that its seqs count in."""
    return store.db.get_meta("mem_epoch") or ""


def rows_since(store: MemoryStore, pool: str, since: int, *, skip_source: str | None = None
               ) -> tuple[list[dict[str, Any]], int, bool]:
    """Sealed unexpired rows of ``pool`` written after seq ``since``, oldest first, except
    those merged from ``skip_source``; at most :data:`CHUNK` rows and about
    :data:`CHUNK_BYTES` of blobs (but always one).

    Returns ``(rows, last, more)``: ``last`` is the seq to ask after next time, ``more``
    whether rows may follow it.
    """
    now = store.now_ms()
    rows: list[dict[str, Any]] = []
    size, last, looked = 0, since, 0
    # "+pool": walk seq (the rowid) in order rather than the (pool, key) index.
    for seq, *row, source in store.db.conn.execute(
            "SELECT seq, key, version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob, "
            "source FROM documents WHERE seq > ? AND +pool = ? ORDER BY seq LIMIT ?",
            (since, pool, SCAN)):
        looked += 1
        if skip_source is None or source != skip_source:
            expires_ms = row[4]
            if expires_ms is None or expires_ms > now:
                exported = _export(tuple(row))
                if rows and (len(rows) == CHUNK or size + len(exported["blob"]) > CHUNK_BYTES):
                    return rows, last, True
                size += len(exported["blob"])
                rows.append(exported)
        last = seq
    return rows, last, looked == SCAN


def merge_rows(store: MemoryStore, pool: str, rows: Iterable[Any], *,
               source: str | None = None) -> Counter[str]:
    """Keep the incoming rows that open, check and are newer; all in one transaction.

    Counts ``applied``, ``stale`` (not newer than the row held), ``expired``
    and ``refused`` (malformed, not openable with a key held, or sealed
    fields that disagree with the columns). ``source`` is the peer the rows
    came from, kept with them so they are not sent back to it.
    """
    counts: Counter[str] = Counter(applied=0, stale=0, refused=0, expired=0)
    if not store.keys.has_key(pool):
        counts["refused"] += sum(1 for _ in rows)
        return counts
    now = store.now_ms()
    with store.db.transaction() as conn:
        store._ensure_pool(conn, pool)
        for row in rows:
            parsed = _parse_row(store, pool, row)
            if parsed is None:
                counts["refused"] += 1
                continue
            key, version, ts, expires_ms, deleted, key_id, blob = parsed
            if expires_ms is not None and expires_ms <= now:
                counts["expired"] += 1
                continue
            held = conn.execute("SELECT ts_ms, ts_counter, version, blob FROM documents "
                                "WHERE pool = ? AND key = ?", (pool, key)).fetchone()
            ours = None if held is None else _order(*held[:3], _blob_hash(held[3]))
            if ours is not None and _order(ts[0], ts[1], version, _blob_hash(blob)) <= ours:
                counts["stale"] += 1
                continue
            store.hlc.observe(ts)
            conn.execute(MERGE_UPSERT, (pool, key, version, ts[0], ts[1], expires_ms,
                                        int(deleted), key_id, blob, source))
            counts["applied"] += 1
    return counts


def _parse_row(store: MemoryStore, pool: str, row: Any) -> tuple[Any, ...] | None:
    try:
        key, version, ts, expires_ms = row["key"], row["version"], row["ts"], row["expires_ms"]
        deleted, key_id, blob = row["deleted"], row["key_id"], b64url_decode(row["blob"])
        if not (isinstance(key, str) and type(version) is int and type(deleted) is bool
                and isinstance(ts, list) and len(ts) == 2 and all(type(t) is int for t in ts)
                and (expires_ms is None or type(expires_ms) is int)):
            raise ValueError("malformed columns")
        # Opens under a key we hold, and every sealed field equals its column.
        store._open(pool, key, (version, ts[0], ts[1], expires_ms, int(deleted), key_id, blob))
    except (MemoryTampered, ValueError, TypeError, KeyError) as exc:
        log.warning("sync row refused for pool %r: %s", pool, exc)
        return None
    return key, version, ts, expires_ms, deleted, key_id, blob


def bus_requester(bus: Any, *, timeout: float = 5.0) -> Requester:
    """A :data:`Requester` over signed commands (``Bus.request_one``)."""

    async def request(peer: str, command: str, args: dict[str, Any]) -> Any:
        try:
            return await bus.request_one(peer, command, args, timeout=timeout)
        except CommandFailed as exc:
            raise MemoryStoreError(str(exc)) from None

    return request


class MemorySync:
    """Compare pool digests with peers and pull what differs.

    ``request`` asks a peer's ``mem.pull`` (see :func:`bus_requester`). At
    most one sync per (peer, pool) runs at a time; :attr:`counters` adds up
    what every sync pulled and kept.
    """

    def __init__(self, store: MemoryStore, sharing: PoolSharing, request: Requester):
        self.store = store
        self.sharing = sharing
        self.request = request
        self.counters: Counter[str] = Counter()
        self._running: dict[tuple[str, str], asyncio.Task[Counter[str]]] = {}
        self._digests: dict[str, tuple[tuple[int, int, int | None], dict[str, Any]]] = {}
        self._unsettled: dict[tuple[str, str], int] = {}

    def digest(self, pool: str) -> dict[str, Any]:
        """:func:`pool_digest`, kept until a document row is written (the newest seq moves;
        the ledger's and other tables' writes do not count), another connection commits,
        or a row of the pool expires (every peer's heartbeat asks for it)."""
        conn = self.store.db.conn
        now = self.store.now_ms()
        cached = self._digests.get(pool)
        stamp = (head_seq(self.store), conn.execute("PRAGMA data_version").fetchone()[0])
        if cached is not None and cached[0][:2] == stamp and (
                cached[0][2] is None or now < cached[0][2]):
            return cached[1]
        expires = conn.execute("SELECT min(expires_ms) FROM documents WHERE pool = ? AND "
                               "expires_ms > ?", (pool, now)).fetchone()[0]
        digest = pool_digest(self.store, pool)
        self._digests[pool] = ((*stamp, expires), digest)
        return digest

    def heartbeat(self) -> dict[str, Any]:
        """What this device's heartbeat adds: ``{"mem": {pool: root}}`` (nothing if none)."""
        digests = self.digests()
        return {"mem": digests} if digests else {}

    def on_heartbeat(self, peer: str, body: dict[str, Any]) -> None:
        """A peer's heartbeat (``Membership.add_body_listener``): sync what its digests say
        differs."""
        if "mem" not in body:
            return
        try:
            self.on_peer_digests(peer, body["mem"])
        except Exception:  # never let a bad digest break membership
            self.counters["failed"] += 1
            log.exception("memory digests from %s not compared", peer)

    @property
    def device_id(self) -> str:
        return self.sharing.device_id

    def shared_pools(self) -> dict[str, list[str]]:
        """Pools shared with at least one other device, this one among the members: their
        members."""
        rows = self.store.db.conn.execute("SELECT pool FROM pool_members ORDER BY pool")
        shared = {}
        for (pool,) in rows:
            members = self.sharing.members(pool)
            if self.device_id in members and len(members) > 1:
                shared[pool] = members
        return shared

    def digests(self) -> dict[str, str]:
        """``{pool: root}`` of the shared pools: what a heartbeat carries as ``mem``."""
        return {pool: self.digest(pool)["root"] for pool in self.shared_pools()}

    def on_peer_digests(self, peer: str, mem: Any) -> list[asyncio.Task[Counter[str]]]:
        """A peer announced ``{pool: root}``: start a sync for each shared pool that differs."""
        if peer == self.device_id or not isinstance(mem, dict):
            return []
        started = []
        for pool, members in self.shared_pools().items():
            root = mem.get(pool)
            if not isinstance(root, str) or peer not in members:
                continue
            if root != self.digest(pool)["root"]:
                started.append(self.start_sync(peer, pool))
            else:
                self._unsettled.pop((peer, pool), None)
        return started

    def start_sync(self, peer: str, pool: str) -> asyncio.Task[Counter[str]]:
        """The running sync with ``peer`` for ``pool``, or a new one."""
        task = self._running.get((peer, pool))
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(
                self._sync_logged(peer, pool), name=f"igris.memsync.{peer}.{pool}")
            self._running[(peer, pool)] = task
            task.add_done_callback(lambda _t: self._running.pop((peer, pool), None))
        return task

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sync_logged(self, peer: str, pool: str) -> Counter[str]:
        try:
            return await self.sync(peer, pool)
        except Exception as exc:  # one peer failing must not stop the others
            self.counters["failed"] += 1
            log.warning("memory sync of pool %r with %s failed: %s", pool, peer, exc)
            return Counter()

    def watermark(self, peer: str, pool: str) -> tuple[str, int] | None:
        """``(epoch, seq)``: how far this device has pulled ``peer``'s rows of ``pool``."""
        row = self.store.db.conn.execute(
            "SELECT epoch, seq FROM mem_watermarks WHERE pool = ? AND peer = ?",
            (pool, peer)).fetchone()
        return None if row is None else (row[0], row[1])

    def _set_watermark(self, peer: str, pool: str, epoch: str, seq: int) -> None:
        with self.store.db.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO mem_watermarks (pool, peer, epoch, seq, "
                         "updated_ms) VALUES (?, ?, ?, ?, ?)",
                         (pool, peer, epoch, seq, self.store.now_ms()))

    async def sync(self, peer: str, pool: str) -> Counter[str]:
        """Pull from ``peer`` what ``pool`` holds there that wins here, and merge it.

        The rows written there since the watermark, when there is one;
        the buckets whose hashes differ otherwise, or when the roots stay
        apart although deltas bring nothing new (see :data:`WALK_AFTER`).
        Counts ``deltas`` or ``walks`` (which way it went), ``buckets``,
        ``pulled`` and what :func:`merge_rows` counts.
        """
        counts: Counter[str] = Counter(deltas=0, walks=0, buckets=0, pulled=0, applied=0,
                                       stale=0, refused=0, expired=0)
        mark = self.watermark(peer, pool)
        root = None if mark is None else await self._pull_delta(peer, pool, *mark, counts)
        if root is not None:
            counts["deltas"] += 1
            key = (peer, pool)
            if root == self.digest(pool)["root"] or counts["applied"]:
                self._unsettled.pop(key, None)
            else:
                self._unsettled[key] = self._unsettled.get(key, 0) + 1
            if self._unsettled.get(key, 0) < WALK_AFTER:
                return self._finish(peer, pool, counts)
            self._unsettled.pop(key, None)
            log.warning("memory pool %r still differs from %s after %d deltas: comparing "
                        "the whole digest", pool, peer, WALK_AFTER)
        counts["walks"] += 1
        await self._walk(peer, pool, counts)
        return self._finish(peer, pool, counts)

    def _finish(self, peer: str, pool: str, counts: Counter[str]) -> Counter[str]:
        self.counters.update(counts)
        log.info("memory pool %r synced from %s: %s", pool, peer, dict(counts))
        return counts

    async def _pull_delta(self, peer: str, pool: str, epoch: str, since: int,
                          counts: Counter[str]) -> str | None:
        """Merge the rows written on ``peer`` since ``since``, chunk by chunk, moving the
        watermark with each; the peer's root at the end, or None if the watermark does not
        hold there (another database, or one rolled back behind it)."""
        while True:
            reply = await self.request(peer, PULL, {"pool": pool, "since": since,
                                                    "epoch": epoch})
            if not isinstance(reply, dict):
                raise MemoryStoreError(f"{peer} sent a malformed delta for pool {pool!r}")
            if reply.get("reset"):
                log.info("memory pool %r: %s's database is not the one our watermark counts "
                         "in; walking its digest", pool, peer)
                return None
            rows, last, root = reply.get("rows"), reply.get("next"), reply.get("root")
            more = reply.get("more") is True
            if (not isinstance(rows, list) or len(rows) > CHUNK or type(last) is not int
                    or last < since or (more and last == since)
                    or (not more and not isinstance(root, str))):
                raise MemoryStoreError(f"{peer} sent a malformed delta for pool {pool!r}")
            with self.store.db.transaction():
                counts.update(merge_rows(self.store, pool, rows, source=peer))
                self._set_watermark(peer, pool, epoch, last)
            counts["pulled"] += len(rows)
            if not more:
                return root
            since = last

    async def _walk(self, peer: str, pool: str, counts: Counter[str]) -> None:
        """Pull the buckets of ``pool`` whose hashes differ; then the watermark is the peer's
        head as it was before the walk began."""
        theirs = await self.request(peer, PULL, {"pool": pool})
        ours = self.digest(pool)
        buckets = theirs.get("buckets") if isinstance(theirs, dict) else None
        if not isinstance(buckets, list) or len(buckets) != BUCKETS:
            raise MemoryStoreError(f"{peer} sent a malformed digest for pool {pool!r}")
        if theirs.get("root") != ours["root"]:
            for bucket in range(BUCKETS):
                if buckets[bucket] != ours["buckets"][bucket]:
                    counts["buckets"] += 1
                    await self._walk_bucket(peer, pool, bucket, counts)
        epoch, head = theirs.get("epoch"), theirs.get("head")
        if isinstance(epoch, str) and epoch and type(head) is int and head >= 0:
            self._set_watermark(peer, pool, epoch, head)

    async def _walk_bucket(self, peer: str, pool: str, bucket: int,
                           counts: Counter[str]) -> None:
        after = None
        while True:  # the bucket's index, a chunk at a time
            args: dict[str, Any] = {"pool": pool, "bucket": bucket}
            if after is not None:
                args["after"] = after
            reply = await self.request(peer, PULL, args)
            index = reply.get("index") if isinstance(reply, dict) else None
            if not isinstance(index, list) or len(index) > CHUNK:
                raise MemoryStoreError(f"{peer} sent a malformed index for pool {pool!r}")
            wanted = newer_keys(self.store, pool, index)
            while wanted:  # only the rows that would win here travel
                got = await self.request(peer, PULL, {"pool": pool, "keys": wanted})
                rows = got.get("rows") if isinstance(got, dict) else None
                if not isinstance(rows, list) or len(rows) > len(wanted):
                    raise MemoryStoreError(f"{peer} sent malformed rows for pool {pool!r}")
                counts["pulled"] += len(rows)
                counts.update(merge_rows(self.store, pool, rows, source=peer))
                sent = {row.get("key") for row in rows if isinstance(row, dict)}
                if not sent:  # expired or gone there since its index was made
                    break
                wanted = [key for key in wanted if key not in sent]
            following = reply.get("next")
            if not isinstance(following, str) or following == after:
                return
            after = following

    # ------------------------------------------------------------------ serving

    def pull_command(self) -> CommandSpec:
        """``mem.pull``: a pool's digest, or one bucket's rows in chunks; members only."""
        return CommandSpec(
            PULL, self._pull, "a shared memory pool's digest, or a chunk of one bucket's "
            "sealed rows (members of the pool only)",
            args={"pool": Arg(str, help="the pool"),
                  "bucket": Arg(int, required=False, help="0-15: rows of this bucket"),
                  "after": Arg(str, required=False, help="continue after this key"),
                  "keys": Arg(list, required=False, help="the sealed rows of these keys"),
                  "since": Arg(int, required=False, help="rows written after this seq"),
                  "epoch": Arg(str, required=False, help="the database `since` counts in")},
        )

    async def _pull(self, call: CommandCall) -> dict[str, Any]:
        pool = call.args["pool"]
        try:
            check_name(pool, "pool")
        except ValueError as exc:
            raise CommandRefused("bad_args", str(exc)) from None
        members = self.sharing.members(pool)
        if call.caller not in members or self.device_id not in members:
            raise CommandRefused("forbidden", f"{call.caller!r} is not a member of pool "
                                              f"{pool!r} on this device")
        keys, bucket, since = call.args["keys"], call.args["bucket"], call.args["since"]
        if since is not None:
            return self._delta(pool, since, call.args["epoch"], call.caller)
        if keys is not None:
            if len(keys) > CHUNK or not all(isinstance(key, str) for key in keys):
                raise CommandRefused("bad_args", f"keys is a list of at most {CHUNK} strings")
            return {"rows": rows_for(self.store, pool, keys)}
        if bucket is None:
            return {**self.digest(pool), "epoch": db_epoch(self.store),
                    "head": head_seq(self.store)}
        if not 0 <= bucket < BUCKETS:
            raise CommandRefused("bad_args", f"bucket is 0 to {BUCKETS - 1}, got {bucket}")
        index, following = bucket_index(self.store, pool, bucket, after=call.args["after"])
        return {"index": index, "next": following}

    def _delta(self, pool: str, since: int, epoch: str | None, caller: str) -> dict[str, Any]:
        """The rows written after ``since``, or ``reset`` if ``since`` counts in another
        database than this one (or is ahead of it: restored from an older copy)."""
        mine, head = db_epoch(self.store), head_seq(self.store)
        if epoch != mine or not 0 <= since <= head:
            return {"reset": True, "epoch": mine, "head": head}
        rows, last, more = rows_since(self.store, pool, since, skip_source=caller)
        reply: dict[str, Any] = {"rows": rows, "next": last, "more": more}
        if not more:
            reply["root"] = self.digest(pool)["root"]
        return reply
