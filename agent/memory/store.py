"""The memory store: encrypted JSON documents in named pools, with expiry.

Each document is one row of ``documents`` keyed by ``(pool, key)``. Its
value is sealed with one SecretBox (XSalsa20-Poly1305) under the pool's
newest key; the row's ``blob`` is ``nonce (24 bytes) || ciphertext`` of the
canonical JSON of::

    {"deleted", "expires_ms", "key", "pool", "ts": [ms, counter], "value", "version"}

SecretBox has no associated data, so what binds a value to its place is
inside the ciphertext: on every read the sealed pool, key, version, time,
expiry and deleted flag must equal the row's columns. A row edited, moved to
another pool or key, swapped with another row, relabelled with another
version or key id, or sealed under another pool's key therefore fails to
open or to match, and is reported as :class:`MemoryTampered` naming the
row; its value is never returned. What no local check can see is a row
deleted or rolled back to an older, once valid state (including one made to
look expired): like a ledger cut short, that takes a copy held elsewhere,
which memory sync will compare.

Every write is one ``Database.transaction()``; a method returns only after
its commit (or, called inside a caller's transaction, commits with it). The
database runs WAL with ``synchronous=NORMAL``: a committed write survives
the process being killed at any point; a power cut may lose the last
commits but never leaves a torn row.

Expiry is local. ``put`` stamps ``expires_ms`` from a TTL (or the pool's
default); reads leave expired documents out at once, and :meth:`sweep`
deletes their rows later. Deletes are tombstones (``deleted = 1``, the next
version, a new time, no value), because sync passes deletions on (a
tombstone wins over an older write, so a delete never comes back); a
tombstone keeps the expiry of the document it deleted, so the sweep removes
it once the document would have expired anyway. Tombstones of documents
without expiry are kept (not yet collected).

>>> store = MemoryStore(db, PoolKeys(db, identity.box_key), hlc)   # doctest: +SKIP
>>> store.put("notes", "kitchen/temp", {"c": 21.5}, ttl_s=3600)   # doctest: +SKIP
Document(pool='notes', key='kitchen/temp', version=1, ...)
>>> store.get("notes", "kitchen/temp").value                     # doctest: +SKIP
{'c': 21.5}
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.utils

from agent.compat import canonical_json, wall_ms
from agent.db import Database
from agent.errors import DocumentInvalid, MemoryTampered, PoolNotFound
from agent.memory.keys import PoolKey, PoolKeys
from agent.suggest import close_match
from agent.wire import HybridClock, check_name

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 256
"""Document keys are names (UTF-8, no control characters), not data."""

MAX_VALUE_BYTES = 32 * 1024
"""Canonical JSON of a value: small enough that a sealed document, base64-encoded in a
sync message, fits one 64 KiB envelope."""

_CONTROL = re.compile("[\x00-\x1f\x7f]")
_NONCE = nacl.bindings.crypto_secretbox_NONCEBYTES
_MAC = nacl.bindings.crypto_secretbox_MACBYTES
_ROW = "version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob"
_COLUMNS = "pool, key, version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob"
# INSERT OR REPLACE gives the row a new seq (migration 10): delta sync finds every write.
_UPSERT = f"INSERT OR REPLACE INTO documents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
MERGE_UPSERT = (f"INSERT OR REPLACE INTO documents ({_COLUMNS}, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
"""A row merged from a peer, with the peer it came from (``source``)."""


@dataclass(frozen=True, slots=True)
class Document:
    """A live document as stored: where it sits, which write it is, its value."""

    pool: str
    key: str
    version: int
    ts: tuple[int, int]
    expires_ms: int | None
    value: Any

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, for ``igris mem get --json``."""
        return {"pool": self.pool, "key": self.key, "version": self.version,
                "ts": list(self.ts), "expires_ms": self.expires_ms, "value": self.value}


@dataclass(frozen=True, slots=True)
class Listing:
    """What a :meth:`MemoryStore.query` found: the documents that open, and the rows
    that did not (tampered), so one bad row does not hide the rest of a pool."""

    documents: list[Document]
    problems: list[MemoryTampered]


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A pool on this device: its counts, default TTL and newest key."""

    pool: str
    documents: int
    expired: int
    tombstones: int
    default_ttl_s: int | None
    key_id: str | None
    key_versions: int

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "documents": self.documents, "expired": self.expired,
                "tombstones": self.tombstones, "default_ttl_s": self.default_ttl_s,
                "key_id": self.key_id, "key_versions": self.key_versions}


class MemoryStore:
    """Put, get, delete, list and expire the encrypted documents of this device's pools.

    A pool comes into being with its first :meth:`put` (or :meth:`set_pool_ttl`),
    with a fresh key from ``keys``. Reads of a pool that does not exist raise
    :class:`PoolNotFound`, so a misspelt name is not mistaken for an empty pool.
    ``now_ms`` is the wall clock expiry is measured on; ``hlc`` stamps writes.
    """

    def __init__(self, db: Database, keys: PoolKeys, hlc: HybridClock, *,
                 now_ms: Callable[[], int] = wall_ms):
        self.db = db
        self.keys = keys
        self.hlc = hlc
        self.now_ms = now_ms

    # ------------------------------------------------------------------ writes

    def put(self, pool: str, key: str, value: Any, *, ttl_s: float | None = None) -> Document:
        """Store ``value`` (any JSON value) under ``key``; returns it as :meth:`get` would.

        ``ttl_s`` (seconds) sets when the document expires; without it the
        pool's default TTL applies, if it has one.
        """
        return self.put_many(pool, ((key, value),), ttl_s=ttl_s)[0]

    def put_many(self, pool: str, items: Iterable[tuple[str, Any]], *,
                 ttl_s: float | None = None) -> list[Document]:
        """Store several documents in one transaction (one commit for all of them).

        Every item is checked before anything is written, so a bad one
        leaves the pool as it was. A key given twice is written twice, in
        order (two versions).
        """
        check_name(pool, "pool")
        prepared = [(_check_key(key), _encode_value(pool, key, value)) for key, value in items]
        if ttl_s is not None:
            _check_ttl(ttl_s)
        if not prepared:
            return []
        documents = []
        with self.db.transaction() as conn:
            default_ttl_s = self._ensure_pool(conn, pool)
            ttl = ttl_s if ttl_s is not None else default_ttl_s
            expires_ms = None if ttl is None else self.now_ms() + math.ceil(ttl * 1000)
            pool_key = self.keys.key_for(pool)
            rows = []
            written: dict[str, tuple[int, list[int]]] = {}
            for key, value_json in prepared:
                version, ts = self._next_write(conn, pool, key, written)
                written[key] = (version, ts)
                rows.append(_seal_row(pool_key, key, version, ts, expires_ms, False, value_json))
                documents.append(Document(pool, key, version, (ts[0], ts[1]), expires_ms,
                                          json.loads(value_json)))
            conn.executemany(_UPSERT, rows)
        return documents

    def delete(self, pool: str, key: str) -> bool:
        """Delete a document (a tombstone); False if there was no live one to delete."""
        with self.db.transaction() as conn:
            previous = _previous(conn, pool, key)
            if previous is None:
                self._require_pool(pool)
                return False
            version, ts, expires_ms, deleted = previous
            if deleted or self._expired(expires_ms, self.now_ms()):
                return False
            conn.execute(_UPSERT, _seal_row(self.keys.key_for(pool), key, version + 1,
                                            self.hlc.observe(ts), expires_ms, True, b"null"))
        return True

    def set_pool_ttl(self, pool: str, seconds: int | None) -> None:
        """Set the TTL (whole seconds, or None for none) of documents later put without one.

        Documents already stored keep their expiry. Makes the pool if it is new.
        """
        check_name(pool, "pool")
        if seconds is not None and (type(seconds) is not int or seconds < 1):
            raise DocumentInvalid(
                f"a pool's default TTL is a whole number of seconds (at least 1) or None, "
                f"got {seconds!r}")
        with self.db.transaction() as conn:
            self._ensure_pool(conn, pool)
            conn.execute("UPDATE pools SET default_ttl_s = ? WHERE pool = ?", (seconds, pool))

    def sweep(self, now_ms: int | None = None) -> int:
        """Delete the rows of documents (and tombstones) that have expired; returns how many.

        Reads already leave expired documents out; the sweep reclaims the space.
        It leaves the row with the highest seq (of any pool) until a newer one is
        written: a new row's seq is one above the highest held, so deleting that row
        would let a later write reuse its seq, and a peer that has already pulled up
        to it would miss that write (see :mod:`agent.memory.sync`).
        """
        now = self.now_ms() if now_ms is None else now_ms
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM documents WHERE expires_ms <= ? AND "
                "seq < (SELECT max(seq) FROM documents)", (now,)).rowcount

    # ------------------------------------------------------------------- reads

    def get(self, pool: str, key: str) -> Document | None:
        """The live document under ``key``; None if there is none, or it was deleted or
        has expired. Raises :class:`MemoryTampered` if its row fails its check."""
        row = self.db.conn.execute(
            f"SELECT {_ROW} FROM documents WHERE pool = ? AND key = ?", (pool, key)).fetchone()
        if row is None:
            self._require_pool(pool)
            return None
        if row[4] or self._expired(row[3], self.now_ms()):
            return None
        return self._open(pool, key, row)

    def query(self, pool: str, prefix: str = "", *, limit: int = 100,
              after: str | None = None) -> Listing:
        """Live documents whose key starts with ``prefix``, in key order, at most ``limit``.

        ``after`` continues a listing after that key (paging). Rows that fail
        their check are not returned but listed in :attr:`Listing.problems`
        (and count towards ``limit``), so the caller learns of them while the
        rest of the pool stays readable.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        _check_text(prefix, "key prefix")
        if after is not None and _check_text(after, "key to list after") >= prefix:
            lower, compare = after, "AND key > ?"
        else:
            lower, compare = prefix, "AND key >= ?"
        sql = [f"SELECT key, {_ROW} FROM documents WHERE pool = ? AND deleted = 0",
               "AND (expires_ms IS NULL OR expires_ms > ?)", compare]
        params: list[Any] = [pool, self.now_ms(), lower]
        upper = _prefix_end(prefix)
        if upper is not None:
            sql.append("AND key < ?")
            params.append(upper)
        sql.append("ORDER BY key LIMIT ?")
        params.append(limit)
        documents, problems = [], []
        for key, *row in self.db.conn.execute(" ".join(sql), params):
            try:
                documents.append(self._open(pool, key, row))
            except MemoryTampered as exc:
                problems.append(exc)
        if not documents and not problems:
            self._require_pool(pool)
        return Listing(documents, problems)

    def pools(self) -> list[PoolInfo]:
        """Every pool on this device, by name, with its counts."""
        now = self.now_ms()
        rows = self.db.conn.execute(
            """
            SELECT p.pool, p.default_ttl_s,
                   count(CASE WHEN d.deleted = 0 AND (d.expires_ms IS NULL OR d.expires_ms > ?)
                              THEN 1 END),
                   count(CASE WHEN d.deleted = 0 AND d.expires_ms <= ? THEN 1 END),
                   count(CASE WHEN d.deleted != 0 THEN 1 END)
            FROM pools p LEFT JOIN documents d ON d.pool = p.pool
            GROUP BY p.pool ORDER BY p.pool
            """, (now, now)).fetchall()
        keys = self.keys.summary()
        return [PoolInfo(pool, live, expired, tombstones, default_ttl_s,
                         *keys.get(pool, (None, 0)))
                for pool, default_ttl_s, live, expired, tombstones in rows]

    # ---------------------------------------------------------------- internals

    def _ensure_pool(self, conn: sqlite3.Connection, pool: str) -> int | None:
        """The pool's default TTL, making the pool (and its first key) if it is new."""
        row = conn.execute("SELECT default_ttl_s FROM pools WHERE pool = ?", (pool,)).fetchone()
        if row is not None:
            return row[0]
        conn.execute("INSERT INTO pools (pool, default_ttl_s, created_ms) VALUES (?, NULL, ?)",
                     (pool, self.now_ms()))
        if not self.keys.has_key(pool):
            self.keys.create(pool)
        return None

    def _require_pool(self, pool: str) -> None:
        if self.db.conn.execute("SELECT 1 FROM pools WHERE pool = ?", (pool,)).fetchone():
            return
        known = [name for (name,) in self.db.conn.execute("SELECT pool FROM pools")]
        guess = close_match(pool, known)
        hint = (f"did you mean {guess!r}?" if guess else
                f"a pool is made by its first put (igris mem put {pool} KEY VALUE)")
        raise PoolNotFound(f"no memory pool {pool!r} on this device; {hint}")

    def _next_write(self, conn: sqlite3.Connection, pool: str, key: str,
                    written: dict[str, tuple[int, list[int]]]) -> tuple[int, list[int]]:
        """Version and time of the next write of ``key``: after whatever it replaces.

        The time is merged with the previous write's, so a key's writes are in
        HLC order even when they come from different processes (agent, CLI).
        """
        previous = written.get(key)
        if previous is None:
            stored = _previous(conn, pool, key)
            previous = None if stored is None else (stored[0], stored[1])
        if previous is None:
            return 1, self.hlc.now()
        return previous[0] + 1, self.hlc.observe(previous[1])

    @staticmethod
    def _expired(expires_ms: int | None, now: int) -> bool:
        # Not an int: a row edited outside the agent, left for _open to report.
        return type(expires_ms) is int and expires_ms <= now

    def _open(self, pool: str, key: str, row: Iterable[Any]) -> Document:
        """Open a row's blob and check it against the row; the document, or MemoryTampered."""
        version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob = row
        try:
            sealed = self._unseal(pool, key, key_id, blob)
        except MemoryTampered as exc:
            log.warning("%s", exc)
            raise
        value = sealed.pop("value", None)
        expected = {"pool": pool, "key": key, "version": version, "ts": [ts_ms, ts_counter],
                    "expires_ms": expires_ms, "deleted": bool(deleted)}
        if sealed != expected:
            if (sealed.get("pool"), sealed.get("key")) != (pool, key):
                reason = (f"it holds the document sealed for pool {sealed.get('pool')!r} key "
                          f"{sealed.get('key')!r}: the row was moved or swapped")
            else:
                fields = ", ".join(name for name in expected if sealed.get(name) != expected[name])
                reason = (f"its {fields} column(s) disagree with what was sealed: the row was "
                          "edited or rolled back in part")
            exc = MemoryTampered(pool, key, reason)
            log.warning("%s", exc)
            raise exc
        return Document(pool, key, version, (ts_ms, ts_counter), expires_ms, value)

    def _unseal(self, pool: str, key: str, key_id: Any, blob: Any) -> dict[str, Any]:
        if type(blob) is not bytes or len(blob) < _NONCE + _MAC or type(key_id) is not str:
            raise MemoryTampered(pool, key, "the row is malformed: it was written outside "
                                            "the agent")
        pool_key = self.keys.key_by_id(pool, key_id)
        if pool_key is None:
            raise MemoryTampered(pool, key, (
                f"it names key {key_id!r}, which pool {pool!r} does not have: the row was "
                "moved from another pool or its key id edited"))
        try:
            plain = nacl.bindings.crypto_secretbox_open(blob[_NONCE:], blob[:_NONCE],
                                                        pool_key.key)
            sealed = json.loads(plain)
        except (nacl.exceptions.CryptoError, ValueError):
            sealed = None
        if not isinstance(sealed, dict):
            raise MemoryTampered(pool, key, (
                f"it does not open under key {key_id!r} of pool {pool!r}: its blob was edited, "
                "or sealed under another key"))
        return sealed


def _previous(conn: sqlite3.Connection, pool: str,
              key: str) -> tuple[int, list[int], int | None, bool] | None:
    """The stored write a new one follows: version, time, expiry, deleted.

    None when there is none, or when its columns are not even integers (a row
    written outside the agent): a put then replaces it as if new, while reads
    keep reporting it until then.
    """
    row = conn.execute("SELECT version, ts_ms, ts_counter, expires_ms, deleted FROM documents "
                       "WHERE pool = ? AND key = ?", (pool, key)).fetchone()
    if row is None:
        return None
    version, ts_ms, ts_counter, expires_ms, deleted = row
    if not (type(version) is int and type(ts_ms) is int and type(ts_counter) is int
            and (expires_ms is None or type(expires_ms) is int)):
        return None
    return version, [ts_ms, ts_counter], expires_ms, bool(deleted)


def _seal_row(pool_key: PoolKey, key: str, version: int, ts: list[int],
              expires_ms: int | None, deleted: bool, value_json: bytes) -> tuple[Any, ...]:
    """A ``documents`` row: the columns, and the blob that repeats them with the value.

    The sealed bytes are the canonical JSON of the document, put together
    around the already canonical value rather than encoding it again.
    """
    pool = pool_key.pool
    plain = b'{"deleted":%s,"expires_ms":%s,"key":%s,"pool":%s,"ts":[%d,%d],"value":%s,' \
            b'"version":%d}' % (b"true" if deleted else b"false",
                                b"null" if expires_ms is None else b"%d" % expires_ms,
                                canonical_json(key), canonical_json(pool), ts[0], ts[1],
                                value_json, version)
    nonce = nacl.utils.random(_NONCE)
    blob = nonce + nacl.bindings.crypto_secretbox(plain, nonce, pool_key.key)
    return (pool, key, version, ts[0], ts[1], expires_ms, int(deleted), pool_key.key_id, blob)


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise DocumentInvalid(f"a document key is a non-empty string, got {key!r}")
    size = len(_check_text(key, "document key").encode())
    if size > MAX_KEY_BYTES:
        raise DocumentInvalid(
            f"document key {key[:40]!r}... is {size} bytes, over the {MAX_KEY_BYTES}-byte limit")
    if _CONTROL.search(key):
        raise DocumentInvalid(f"document key {key!r} holds a control character")
    return key


def _check_text(text: str, what: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise DocumentInvalid(f"{what} {text!r} is not valid Unicode text") from None
    return text


def _check_ttl(ttl_s: float) -> None:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not (
            0 < ttl_s < math.inf):
        raise DocumentInvalid(f"a TTL is a positive number of seconds, got {ttl_s!r}")


def _encode_value(pool: str, key: str, value: Any) -> bytes:
    try:
        value_json = canonical_json(value)
    except ValueError as exc:
        raise DocumentInvalid(
            f"the value for pool {pool!r} key {key!r} is not JSON ({exc}); store dicts, "
            "lists, strings, finite numbers, booleans and null") from None
    if len(value_json) > MAX_VALUE_BYTES:
        raise DocumentInvalid(
            f"the value for pool {pool!r} key {key!r} is {len(value_json)} bytes as JSON, "
            f"over the {MAX_VALUE_BYTES}-byte limit; split it over several keys")
    return value_json


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (None: no bound).

    SQLite compares text as UTF-8 bytes, which orders like code points, so
    ``prefix <= key < _prefix_end(prefix)`` is a range scan on the primary key.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1
            return "".join(chars) + chr(following)
    return None
