"""Pool sharing: each pool key wrapped for each member device, in signed messages.

A pool's members are device ids. A member (or an operator) publishes a
signed ``mem`` envelope, retained so late joiners get it, on
``mem/<pool>/keys``::

    {"pool": "notes", "key_id": "2.xxxxxxxx", "version": 2, "members": ["a", "b"],
     "wrapped": {"a": "<b64url SealedBox>", "b": "<b64url SealedBox>"}}

``key_id``/``version`` name the pool's newest key. Each ``wrapped`` entry is
a SealedBox to that member's X25519 box key (from its certificate in the
trust store) over the canonical JSON of ``{"pool", "keys": [{"key_id",
"version", "key"}, ...]}``: every key version the sender holds, so a new
member can read documents written before a rotation too. The signature
says who sent it; the sealed entry names its pool, so it cannot be lifted
into another pool's message.

On receipt a device named in ``wrapped`` opens its entry with its own box
key and installs the keys (:meth:`PoolKeys.install`, idempotent); a device
not named installs and stores nothing. Who may send a pool's key message: a
device in the member list this device holds for the pool; for a pool this
device created and never shared, only itself; for a pool it has never heard
of, a device among the message's own members (whoever starts sharing a pool
is its first member). Operators may always. Others are refused and counted.
The member list kept is the newest accepted (key version, then HLC stamp);
keys from an older message are still installed, so two members rotating at
once lose no documents.

Removing a member rotates the key and wraps the new version only for the
members that remain; old versions stay, so old documents still open (the
removed device keeps the old versions it had: re-encrypting old documents
is a later step).

>>> sharing = PoolSharing(db, channel, topics, keys, now_ms=clock)   # doctest: +SKIP
>>> await sharing.start()                                           # doctest: +SKIP
>>> await sharing.share("notes", ["pi-02"])                          # doctest: +SKIP
>>> await sharing.remove("notes", "pi-02")                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public

from agent.compat import b64url_decode, b64url_encode, canonical_json
from agent.db import Database
from agent.errors import (
    CertificateInvalid,
    EnvelopeRejected,
    MemoryStoreError,
    PoolNotFound,
    TopicInvalid,
)
from agent.identity.channel import SignedChannel
from agent.memory.keys import KEY_BYTES, PoolKey, PoolKeys
from agent.security_mesh.auth import OPERATOR, signer_certificate
from agent.transport.base import Message, Subscription
from agent.wire import MAX_BYTES, Envelope, Topics, check_name

log = logging.getLogger(__name__)

KEYS = "keys"
"""The last topic level of a pool's key messages: ``mem/<pool>/keys``."""

MAX_MEMBERS = 64

# Why a key message was refused (counted in PoolSharing.refused).
MALFORMED = "malformed"
NOT_MEMBER = "not_member"
UNOPENED = "unopened"
CONFLICT = "conflict"

_BODY = {"pool", "key_id", "version", "members", "wrapped"}

Recorder = Callable[[str, dict[str, Any]], object]


class PoolMemberUnknown(MemoryStoreError):
    """A member's key cannot be wrapped: its certificate is unknown, blocked or expired."""


@dataclass(frozen=True, slots=True)
class PoolShare:
    """The member list held for a pool, and the key message it came from."""

    pool: str
    members: tuple[str, ...]
    key_id: str
    version: int
    ts: tuple[int, int]
    author: str

    def newer_than(self, other: PoolShare) -> bool:
        return (self.version, self.ts, self.key_id) > (other.version, other.ts, other.key_id)

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "members": list(self.members), "key_id": self.key_id,
                "version": self.version, "ts": list(self.ts), "author": self.author}


class PoolSharing:
    """Share this device's pool keys with member devices, and install the keys shared with it.

    ``refused`` counts key messages refused by reason (``malformed``,
    ``not_member``, ``unopened``, ``conflict``); ``excluded`` counts valid
    ones that did not name this device (nothing kept); ``installed`` counts
    accepted ones.
    """

    def __init__(self, db: Database, channel: SignedChannel, topics: Topics, keys: PoolKeys, *,
                 record: Recorder | None = None, now_ms: Callable[[], int]):
        self.db = db
        self.channel = channel
        self.topics = topics
        self.keys = keys
        self._record = record
        self._now_ms = now_ms
        self._unbox = nacl.public.SealedBox(channel.identity.box_key)
        self.refused: Counter[str] = Counter()
        self.excluded = 0
        self.installed = 0
        self._subs: list[Subscription] = []

    @property
    def device_id(self) -> str:
        return self.channel.identity.device_id

    async def start(self) -> None:
        self._subs.append(await self.channel.subscribe(
            self.topics.filter("mem", "+", KEYS), self._on_keys))

    async def stop(self) -> None:
        for sub in self._subs:
            sub.cancel()
        self._subs.clear()

    # ------------------------------------------------------------------ queries

    def share_of(self, pool: str) -> PoolShare | None:
        """The member list stored for ``pool`` (None if it was never shared)."""
        row = self.db.conn.execute(
            "SELECT members, key_id, version, ts_ms, ts_counter, author FROM pool_members "
            "WHERE pool = ?", (pool,)).fetchone()
        if row is None:
            return None
        members, key_id, version, ts_ms, ts_counter, author = row
        return PoolShare(pool, tuple(json.loads(members)), key_id, version,
                         (ts_ms, ts_counter), author)

    def members(self, pool: str) -> list[str]:
        """The pool's member devices: the stored list, or just this device for a pool it
        holds a key of but never shared, or none."""
        share = self.share_of(pool)
        if share is not None:
            return list(share.members)
        return [self.device_id] if self.keys.has_key(pool) else []

    def counters(self) -> dict[str, Any]:
        """What ``igris status`` could show."""
        shared = self.db.conn.execute("SELECT count(*) FROM pool_members").fetchone()[0]
        return {"shared_pools": shared, "installed": self.installed, "excluded": self.excluded,
                "refused": dict(self.refused)}

    # ------------------------------------------------------------------ sending

    async def share(self, pool: str, devices: Iterable[str]) -> PoolShare:
        """Add ``devices`` to the pool's members and send them every key version held.

        Raises :class:`PoolNotFound` if this device holds no key of ``pool``
        and :class:`PoolMemberUnknown` (nothing sent) naming the members
        whose certificates are unknown, blocked or expired.
        """
        check_name(pool, "pool")
        added = [check_name(device, "device id") for device in devices]
        return await self._publish(pool, {*self.members(pool), self.device_id, *added})

    async def remove(self, pool: str, device: str) -> PoolShare:
        """Take ``device`` out of the pool: a new key version, sent to the remaining members only.

        Documents written before stay readable (old versions are kept); new
        writes are sealed under the new key, which ``device`` never receives.
        """
        check_name(pool, "pool")
        current = self.members(pool)
        if device not in current:
            raise MemoryStoreError(
                f"{device!r} is not a member of pool {pool!r} (members: "
                f"{', '.join(current) or 'none'})")
        if device == self.device_id:
            raise MemoryStoreError(
                "a device cannot remove itself from a pool; another member removes it")
        return await self._publish(pool, set(current) - {device}, rotate=True)

    async def _publish(self, pool: str, members: set[str], *, rotate: bool = False) -> PoolShare:
        """Rotate (if asked), store and send the key message, or change nothing on a refusal."""
        with self.db.transaction():
            env = self._prepare(pool, members, rotate)
        await self.channel.transport.publish(self.topics.mem(pool, KEYS), env.encode(),
                                             qos=1, retain=True)
        share = self.share_of(pool)
        assert share is not None
        log.info("memory pool %s: key %s sent to %s", pool, share.key_id,
                 ", ".join(share.members))
        return share

    def _prepare(self, pool: str, members: set[str], rotate: bool) -> Envelope:
        if not self.keys.has_key(pool):
            raise PoolNotFound(f"memory pool {pool!r} has no key on this device to share")
        if len(members) > MAX_MEMBERS:
            raise MemoryStoreError(f"a pool has at most {MAX_MEMBERS} members")
        boxes = self._box_keys(members)
        if rotate:
            self.keys.rotate(pool)
        held = self._held_keys(pool)
        newest = self.keys.key_for(pool)
        plain = canonical_json({"pool": pool, "keys": [
            {"key_id": k.key_id, "version": k.version, "key": b64url_encode(k.key)}
            for k in held]})
        body = {
            "pool": pool, "key_id": newest.key_id, "version": newest.version,
            "members": sorted(members),
            "wrapped": {device: b64url_encode(bytes(nacl.public.SealedBox(box).encrypt(plain)))
                        for device, box in sorted(boxes.items())},
        }
        size = len(canonical_json(body))
        if size > min(self.channel.max_bytes, MAX_BYTES) - 512:
            raise MemoryStoreError(
                f"the key message of pool {pool!r} would be {size} bytes, over the message "
                f"limit ({len(members)} members, {len(held)} key versions)")
        env = self.channel.seal("mem", body)
        self._accept(pool, env)  # our own state first; the echo from the broker is stale
        return env

    def _box_keys(self, members: Iterable[str]) -> dict[str, nacl.public.PublicKey]:
        boxes, unknown = {}, []
        for device in members:
            if device == self.device_id:
                boxes[device] = self.channel.identity.box_key.public_key
                continue
            cert = self.channel.trust.certificate(device)
            try:
                self.channel.trust.verify_key(device)
            except EnvelopeRejected as exc:
                unknown.append(f"{device} ({exc})")
                continue
            assert cert is not None
            boxes[device] = nacl.public.PublicKey(cert.box_key)
        if unknown:
            raise PoolMemberUnknown(
                "cannot wrap the pool key for " + "; ".join(sorted(unknown)) +
                ": this device needs each member's valid certificate (from its birth)")
        return boxes

    def _held_keys(self, pool: str) -> list[PoolKey]:
        rows = self.db.conn.execute(
            "SELECT key_id FROM pool_keys WHERE pool = ? ORDER BY version, key_id", (pool,))
        held = [self.keys.key_by_id(pool, key_id) for (key_id,) in rows.fetchall()]
        return [key for key in held if key is not None]

    # ---------------------------------------------------------------- receiving

    def _on_keys(self, env: Envelope, message: Message) -> None:
        levels = message.topic[len(self.topics.base):].split("/")
        pool = levels[1] if len(levels) == 3 else ""
        try:
            self._accept(pool, env)
        except EnvelopeRejected as exc:
            self.refused[exc.reason] += 1
            log.warning("refused key message %s from %s for pool %r: %s", env.id, env.src,
                        pool, exc)

    def _accept(self, pool: str, env: Envelope) -> None:
        """Check ``env`` and install the keys it wraps for us; EnvelopeRejected if refused."""
        share = _parse(pool, env)
        known = self.share_of(pool)
        if known is not None:
            allowed = set(known.members)
        elif self.keys.has_key(pool):
            allowed = {self.device_id}
        else:
            allowed = set(share.members)
        if env.src not in allowed:
            try:
                signer_certificate(self.channel.trust, env.src, OPERATOR)
            except CertificateInvalid:
                raise EnvelopeRejected(NOT_MEMBER, (
                    f"{env.src!r} is not a member of pool {pool!r} (members: "
                    f"{', '.join(sorted(allowed))}) nor an operator")) from None
        sealed = env.body["wrapped"].get(self.device_id)
        if sealed is None:
            self.excluded += 1
            log.info("key message %s for pool %r does not include this device", env.id, pool)
            return
        keys = self._open(share, sealed)
        try:
            with self.db.transaction() as conn:
                for key in keys:
                    self.keys.install(pool, key.key_id, key.version, key.key)
                newer = known is None or share.newer_than(known)
                if newer:
                    conn.execute(
                        "INSERT OR REPLACE INTO pool_members (pool, members, key_id, version, "
                        "ts_ms, ts_counter, author, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (pool, json.dumps(list(share.members)), share.key_id, share.version,
                         share.ts[0], share.ts[1], share.author, self._now_ms()))
                if self._record is not None and (newer or env.src != self.device_id):
                    self._record("mem_keys", {**share.to_dict(), "message": env.id,
                                              "members_updated": newer})
        except (MemoryStoreError, ValueError) as exc:
            raise EnvelopeRejected(CONFLICT, str(exc)) from None
        self.installed += 1

    def _open(self, share: PoolShare, sealed: Any) -> list[PoolKey]:
        try:
            entry = json.loads(self._unbox.decrypt(b64url_decode(sealed)))
            if entry["pool"] != share.pool or not isinstance(entry["keys"], list):
                raise ValueError("the sealed entry is for another pool")
            keys = [PoolKey(share.pool, check_name(k["key_id"], "key id"), k["version"],
                            b64url_decode(k["key"])) for k in entry["keys"]]
        except (nacl.exceptions.CryptoError, ValueError, TypeError, KeyError) as exc:
            raise EnvelopeRejected(
                UNOPENED, f"our wrapped key does not open with this device's box key: {exc}"
            ) from None
        for key in keys:
            if type(key.version) is not int or key.version < 1 or len(key.key) != KEY_BYTES:
                raise EnvelopeRejected(UNOPENED, f"wrapped key {key.key_id!r} is malformed")
        if not any((k.key_id, k.version) == (share.key_id, share.version) for k in keys):
            raise EnvelopeRejected(
                UNOPENED, f"the wrapped keys do not include the newest key {share.key_id!r}")
        return keys


def _parse(pool: str, env: Envelope) -> PoolShare:
    body = env.body
    if env.kind != "mem" or not isinstance(body, dict) or set(body) != _BODY:
        raise EnvelopeRejected(MALFORMED, f"{env.kind} from {env.src!r} is not a key message")
    members, wrapped, version = body["members"], body["wrapped"], body["version"]
    try:
        check_name(pool, "pool")
        if body["pool"] != pool:
            raise TopicInvalid(f"the message is for pool {body['pool']!r}, sent on {pool!r}")
        check_name(body["key_id"], "key id")
        if not isinstance(members, list) or not 0 < len(members) <= MAX_MEMBERS:
            raise TopicInvalid(f"members must be a list of 1-{MAX_MEMBERS} device ids")
        for device in members:
            check_name(device, "device id")
        if not isinstance(wrapped, dict) or not set(wrapped) <= set(members) or not all(
                isinstance(value, str) for value in wrapped.values()):
            raise TopicInvalid("wrapped must map members to sealed keys")
        if type(version) is not int or version < 1:
            raise TopicInvalid(f"version must be a positive integer, got {version!r}")
    except TopicInvalid as exc:
        raise EnvelopeRejected(MALFORMED, str(exc)) from None
    return PoolShare(pool, tuple(sorted(set(members))), body["key_id"], version,
                     (env.ts[0], env.ts[1]), env.src)
