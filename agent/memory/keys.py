"""Pool keys: the SecretBox key each memory pool's documents are sealed under.

A pool has one or more key versions; the newest seals new writes and the
older ones stay, so documents written before a rotation still open (they
are not re-encrypted: a later step may do that and then drop old versions).

Keys rest in the ``pool_keys`` table sealed with a ``crypto_box`` from this
device's X25519 box key to itself. Only the holder of the box secret
(``keys/box.key``) can open an entry, so the database file alone does not
reveal a pool key. A ``SealedBox`` would hide them as well, but it is
anonymous: anyone can seal to our public box key (it is in our
certificate), so a keyring of sealed boxes would accept a key planted by
whoever can write the file, and the documents written after it would be
readable by them. A box from the device to itself can only be made with
the box secret. Each sealed entry also names its pool, key id and
version, so an entry moved to another pool or relabelled fails its check.

Key ids are ``<version>.<8 random base64url characters>``: the version for
people and ordering, the random part so two devices that rotate the same
pool at once (once keys are shared between members) do not mint one id for
two keys. The newest key is the one with the highest version, ties broken by
key id, the same choice on every device.

>>> keys = PoolKeys(db, identity.box_key)           # doctest: +SKIP
>>> first = keys.create("notes")                     # doctest: +SKIP
>>> keys.rotate("notes").version                     # doctest: +SKIP
2
>>> keys.key_by_id("notes", first.key_id) == first   # doctest: +SKIP
True
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.public
import nacl.utils

from agent.compat import b64url_decode, b64url_encode, canonical_json, wall_ms
from agent.db import Database
from agent.errors import MemoryStoreError, MemoryTampered, PoolNotFound
from agent.wire import check_name

KEY_BYTES = 32
"""A pool key is a 32-byte XSalsa20-Poly1305 (SecretBox) key."""

_COLUMNS = "key_id, version, sealed"
_NEWEST = (f"SELECT {_COLUMNS} FROM pool_keys WHERE pool = ? "
           "ORDER BY version DESC, key_id DESC LIMIT 1")
_BY_ID = f"SELECT {_COLUMNS} FROM pool_keys WHERE pool = ? AND key_id = ?"


@dataclass(frozen=True, slots=True)
class PoolKey:
    """One version of a pool's key. ``key`` is secret: it is kept out of ``repr``."""

    pool: str
    key_id: str
    version: int
    key: bytes = field(repr=False)


class PoolKeys:
    """This device's keyring of pool keys, in the agent's database.

    Opened keys are cached in memory by key id (ids never change meaning),
    so a document read costs no public-key operation; which key is newest is
    read from the table on each :meth:`key_for`, so a rotation made by
    another process (``igris mem`` beside a running agent) is seen at once.
    """

    def __init__(self, db: Database, box_key: nacl.public.PrivateKey, *,
                 now_ms: Callable[[], int] = wall_ms):
        self.db = db
        self.now_ms = now_ms
        self._box = nacl.public.Box(box_key, box_key.public_key)
        self._opened: dict[tuple[str, str], PoolKey] = {}

    def key_for(self, pool: str) -> PoolKey:
        """The newest key of ``pool``, which new writes are sealed under."""
        row = self.db.conn.execute(_NEWEST, (pool,)).fetchone()
        if row is None:
            raise PoolNotFound(f"memory pool {pool!r} has no key on this device")
        key_id, version, sealed = row
        opened = self._opened.get((pool, key_id))
        if opened is not None and opened.version == version:
            return opened
        return self._open(pool, key_id, version, sealed)

    def key_by_id(self, pool: str, key_id: str) -> PoolKey | None:
        """The key of ``pool`` with id ``key_id``, or None if this device does not hold it."""
        opened = self._opened.get((pool, key_id))
        if opened is not None:
            return opened
        row = self.db.conn.execute(_BY_ID, (pool, key_id)).fetchone()
        return None if row is None else self._open(pool, *row)

    def has_key(self, pool: str) -> bool:
        """Whether this device holds any key of ``pool``."""
        return self.db.conn.execute(
            "SELECT 1 FROM pool_keys WHERE pool = ? LIMIT 1", (pool,)).fetchone() is not None

    def summary(self) -> dict[str, tuple[str, int]]:
        """Pool -> (newest key id, how many versions are held), opening no key."""
        rows = self.db.conn.execute(
            "SELECT pool, key_id, count(*) OVER (PARTITION BY pool), row_number() OVER "
            "(PARTITION BY pool ORDER BY version DESC, key_id DESC) FROM pool_keys")
        return {pool: (key_id, count) for pool, key_id, count, rank in rows if rank == 1}

    def create(self, pool: str) -> PoolKey:
        """Make the first key of a new pool (version 1)."""
        with self.db.transaction():
            if self.has_key(pool):
                raise MemoryStoreError(
                    f"memory pool {pool!r} already has a key; rotate it for a new one")
            return self.install(pool, _new_key_id(1), 1, nacl.utils.random(KEY_BYTES))

    def rotate(self, pool: str) -> PoolKey:
        """Make a new newest key for ``pool``; older versions stay, so old documents open."""
        with self.db.transaction():
            version = self.key_for(pool).version + 1
            return self.install(pool, _new_key_id(version), version,
                                nacl.utils.random(KEY_BYTES))

    def install(self, pool: str, key_id: str, version: int, key: bytes) -> PoolKey:
        """Store a key under ``key_id``: one made here, or one received from another member.

        The caller vouches for the key (key distribution checks who sent it).
        Installing the same key again changes nothing; another key under an
        id already held is refused, since documents sealed under that id
        would stop opening.
        """
        check_name(pool, "pool")
        check_name(key_id, "key id")
        if type(version) is not int or version < 1:
            raise ValueError(f"key version must be a positive integer, got {version!r}")
        if type(key) is not bytes or len(key) != KEY_BYTES:
            raise ValueError(f"a pool key is {KEY_BYTES} bytes")
        pool_key = PoolKey(pool, key_id, version, key)
        with self.db.transaction() as conn:
            # The table, not the cache, says what is held: an install whose
            # transaction rolled back may have left its key in the cache.
            row = conn.execute(_BY_ID, (pool, key_id)).fetchone()
            if row is not None:
                if self._open(pool, *row) != pool_key:
                    raise MemoryStoreError(
                        f"memory pool {pool!r} already holds another key with id {key_id!r}")
                return pool_key
            conn.execute(
                "INSERT INTO pool_keys (pool, key_id, version, sealed, created_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (pool, key_id, version, bytes(self._box.encrypt(_entry(pool_key))),
                 self.now_ms()),
            )
        return pool_key

    def _open(self, pool: str, key_id: str, version: int, sealed: bytes) -> PoolKey:
        try:
            entry = json.loads(self._box.decrypt(sealed))
            pool_key = PoolKey(entry["pool"], entry["key_id"], entry["version"],
                               b64url_decode(entry["key"]))
        except (nacl.exceptions.CryptoError, ValueError, TypeError, KeyError) as exc:
            raise MemoryTampered(pool, None, (
                f"key {key_id!r} does not open with this device's box key ({exc}): it was "
                "edited, or sealed by another device or outside the agent")) from None
        if (pool_key.pool, pool_key.key_id, pool_key.version) != (pool, key_id, version):
            raise MemoryTampered(pool, None, (
                f"key {key_id!r} (version {version}) was sealed as key "
                f"{pool_key.key_id!r} (version {pool_key.version}) of pool "
                f"{pool_key.pool!r}: the entry was moved or relabelled"))
        self._opened[(pool, key_id)] = pool_key
        return pool_key


def _entry(pool_key: PoolKey) -> bytes:
    return canonical_json({"pool": pool_key.pool, "key_id": pool_key.key_id,
                           "version": pool_key.version, "key": b64url_encode(pool_key.key)})


def _new_key_id(version: int) -> str:
    return f"{version}.{b64url_encode(nacl.utils.random(6))}"
