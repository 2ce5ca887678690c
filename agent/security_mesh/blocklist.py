"""The fleet blocklist: operator-signed block and unblock entries every device enforces.

An entry is a signed ``block`` envelope from an operator::

    {"action": "block" | "unblock", "target": "device:<id>" | "key:<key id>",
     "reason": "...", "expires_ms": <wall ms> | null, "cert": <operator certificate>}

The operator's certificate rides in the body, so a device that never saw
the operator's birth can still verify it. Entries travel live on ``block``
(not retained: each is an event every device records in its ledger) and,
all together, in a retained snapshot on ``block/snapshot`` so a device that
joins late (or was offline) learns them from the broker. Each entry in a
snapshot is verified on its own, against its own operator's signature.

Per target the entry with the newest HLC timestamp wins; an older entry or
the same one again (a retained snapshot is redelivered on every reconnect)
changes nothing and is not recorded twice. A device accepts entries only
from operator certificates, so no device can lock anyone out. The entries in
force go into the :class:`~agent.identity.TrustStore`, where every envelope
from a blocked device id or key is dropped and counted as ``blocked``; a
block with ``expires_ms`` stops applying by itself at that time.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.compat import canonical_json
from agent.db import Database
from agent.errors import CertificateInvalid, EnvelopeRejected, TopicInvalid
from agent.identity.certificate import Certificate
from agent.identity.channel import SignedChannel
from agent.identity.trust import TrustStore
from agent.security_mesh.auth import OPERATOR, require_role, signer_certificate
from agent.transport.base import Message, Subscription
from agent.wire import MAX_BYTES, Envelope, Topics, check_name
from agent.wire.envelope import OVERSIZE

log = logging.getLogger(__name__)

BLOCK = "block"
UNBLOCK = "unblock"
ACTIONS = (BLOCK, UNBLOCK)
DEVICE = "device:"
KEY = "key:"
MAX_REASON = 200

# Why an entry was refused (counted in Blocklist.refused).
MALFORMED = "malformed"
NOT_OPERATOR = "not_operator"
UNVERIFIED = "unverified"

Recorder = Callable[[str, dict[str, Any]], object]


def parse_target(text: str) -> str:
    """``pi-07``, ``device:pi-07`` or ``key:<key id>`` → ``device:pi-07`` / ``key:<key id>``.

    Raises :class:`TopicInvalid` (a ``ValueError``) for anything else.
    """
    if not isinstance(text, str):
        raise TopicInvalid(f"block target must be text, got {text!r:.40}")
    if text.startswith(KEY):
        return KEY + check_name(text[len(KEY):], "key id")
    name = text[len(DEVICE):] if text.startswith(DEVICE) else text
    return DEVICE + check_name(name, "device id")


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """One verified entry: what it says about its target, and the signed envelope itself."""

    target: str
    blocked: bool
    reason: str
    expires_ms: int | None
    ts: tuple[int, int]
    id: str
    author: str
    envelope: dict[str, Any]

    @classmethod
    def from_envelope(cls, env: Envelope, trust: TrustStore) -> BlockEntry:
        """Read an accepted ``block`` envelope; EnvelopeRejected (malformed, not_operator)."""
        body = env.body
        if env.kind != "block" or set(body) != {"action", "target", "reason", "expires_ms",
                                                "cert"}:
            raise EnvelopeRejected(
                MALFORMED, f"{env.kind} from {env.src!r} is not a blocklist entry"
            )
        action, reason, expires = body["action"], body["reason"], body["expires_ms"]
        if action not in ACTIONS:
            raise EnvelopeRejected(MALFORMED, f"action {action!r} is not one of {ACTIONS}")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise EnvelopeRejected(
                MALFORMED, f"reason must be text of at most {MAX_REASON} characters"
            )
        if expires is not None and (type(expires) is not int or expires < 0):
            raise EnvelopeRejected(MALFORMED, f"expires_ms must be wall ms or null: {expires!r}")
        try:
            target = parse_target(body["target"])
        except TopicInvalid as exc:
            raise EnvelopeRejected(MALFORMED, str(exc)) from None
        try:
            signer_certificate(trust, env.src, OPERATOR)
        except CertificateInvalid as exc:
            raise EnvelopeRejected(NOT_OPERATOR, str(exc)) from None
        return cls(
            target=target, blocked=action == BLOCK, reason=reason,
            expires_ms=expires if action == BLOCK else None,
            ts=(env.ts[0], env.ts[1]), id=env.id, author=env.src, envelope=env.to_dict(),
        )

    def in_force(self, now_ms: int) -> bool:
        """True while this entry blocks its target."""
        return self.blocked and (self.expires_ms is None or now_ms < self.expires_ms)

    def supersedes(self, other: BlockEntry) -> bool:
        """Newest HLC timestamp wins (the envelope id breaks an exact tie)."""
        return (self.ts, self.id) > (other.ts, other.id)

    def describe(self, now_ms: int) -> dict[str, Any]:
        """What ``igris block list`` and ``Blocklist.entries()`` show."""
        state = "blocked" if self.in_force(now_ms) else "expired" if self.blocked else "unblocked"
        return {
            "target": self.target, "state": state, "reason": self.reason,
            "expires_ms": self.expires_ms, "author": self.author, "ts": list(self.ts),
            "id": self.id,
        }


def make_entry(
    channel: SignedChannel, action: str, target: str, reason: str, expires_ms: int | None = None
) -> BlockEntry:
    """Seal a new entry as the operator behind ``channel`` (CertificateInvalid if not one)."""
    cert = channel.identity.certificate
    require_role(cert, OPERATOR)
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    env = channel.seal("block", {
        "action": action, "target": parse_target(target), "reason": reason,
        "expires_ms": expires_ms if action == BLOCK else None, "cert": cert.to_dict(),
    })
    return BlockEntry.from_envelope(env, channel.trust)


def merge_snapshot(
    entries: Iterable[BlockEntry], new: BlockEntry, *, now_ms: int
) -> list[BlockEntry]:
    """``entries`` plus ``new``: newest per target, blocks that have run out dropped.

    Unblocks stay (as tombstones): a device that was offline while its
    block was lifted learns of it only from the snapshot.
    """
    newest: dict[str, BlockEntry] = {}
    for entry in (*entries, new):
        known = newest.get(entry.target)
        if known is None or entry.supersedes(known):
            newest[entry.target] = entry
    return sorted(
        (e for e in newest.values() if e.in_force(now_ms) or not e.blocked),
        key=lambda e: e.target,
    )


def snapshot_body(
    entries: Iterable[BlockEntry], cert: Certificate, *, max_bytes: int = MAX_BYTES
) -> dict[str, Any]:
    """The body of the retained snapshot, within the message size limit.

    When the entries do not fit, the oldest unblock tombstones go first;
    if blocks alone do not fit, EnvelopeRejected(oversize) says so.
    """
    kept = list(entries)
    tombstones = sorted((e for e in kept if not e.blocked), key=lambda e: (e.ts, e.id))
    # An envelope's own fields (id, src, ts, sig, ...) take well under 512 bytes.
    budget = max_bytes - 512
    while True:
        body = {"entries": [e.envelope for e in kept], "cert": cert.to_dict()}
        size = len(canonical_json(body))
        if size <= budget:
            return body
        if not tombstones:
            raise EnvelopeRejected(
                OVERSIZE, f"the blocklist snapshot of {len(kept)} entries would be {size} "
                f"bytes, over the {max_bytes}-byte message limit; unblock some targets"
            )
        kept.remove(tombstones.pop(0))


def unpack_snapshot(
    channel: SignedChannel, env: Envelope, topic: str
) -> tuple[list[BlockEntry], Counter[str]]:
    """The verified operator entries in snapshot ``env``, and refusals by reason.

    ``env`` itself must be an operator's (EnvelopeRejected otherwise). Each
    entry goes through the channel's gate as a retained message would (so
    it may be old, and it teaches its operator's certificate), then through
    :meth:`BlockEntry.from_envelope`.
    """
    items = env.body.get("entries")
    if env.kind != "block" or not isinstance(items, list):
        raise EnvelopeRejected(MALFORMED, f"{env.kind} from {env.src!r} is not a snapshot")
    try:
        signer_certificate(channel.trust, env.src, OPERATOR)
    except CertificateInvalid as exc:
        raise EnvelopeRejected(NOT_OPERATOR, str(exc)) from None
    entries: list[BlockEntry] = []
    refused: Counter[str] = Counter()
    for item in items:
        try:
            payload = canonical_json(item)
        except (TypeError, ValueError):
            refused[MALFORMED] += 1
            continue
        inner = channel.admit(Message(topic, payload, qos=1, retain=True))
        if inner is None:
            refused[UNVERIFIED] += 1
            continue
        try:
            entries.append(BlockEntry.from_envelope(inner, channel.trust))
        except EnvelopeRejected as exc:
            refused[exc.reason] += 1
            log.warning("refused snapshot entry %s from %s: %s", inner.id, inner.src, exc)
    return entries, refused


def load_entries(db: Database) -> list[BlockEntry]:
    """The entries stored in ``db`` (newest per target), by target."""
    rows = db.conn.execute(
        "SELECT target, blocked, reason, expires_ms, ts_ms, ts_counter, author, envelope "
        "FROM blocklist ORDER BY target"
    ).fetchall()
    entries = []
    for target, blocked, reason, expires, ts_ms, ts_counter, author, envelope in rows:
        stored = json.loads(envelope)
        entries.append(BlockEntry(
            target=target, blocked=bool(blocked), reason=reason, expires_ms=expires,
            ts=(ts_ms, ts_counter), id=stored["id"], author=author, envelope=stored,
        ))
    return entries


class Blocklist:
    """This device's copy of the fleet blocklist, enforced through the channel's trust store.

    >>> bl = Blocklist(db, channel, topics, record=ledger.append, now_ms=clock)  # doctest: +SKIP
    >>> await bl.start()                                                        # doctest: +SKIP
    >>> bl.is_blocked("pi-07")                                                  # doctest: +SKIP

    The stored entries are enforced from construction on, before any
    message arrives. ``refused`` counts entries refused by reason
    (``malformed``, ``not_operator``, ``unverified``); ``stale`` counts
    entries that were older than, or the same as, the one already held.
    """

    def __init__(
        self,
        db: Database,
        channel: SignedChannel,
        topics: Topics,
        *,
        record: Recorder,
        now_ms: Callable[[], int],
    ):
        self.db = db
        self.channel = channel
        self.topics = topics
        self._record = record
        self._now_ms = now_ms
        self.refused: Counter[str] = Counter()
        self.stale = 0
        self.applied = 0
        self._subs: list[Subscription] = []
        self._entries = {entry.target: entry for entry in load_entries(db)}
        self._push()

    async def start(self) -> None:
        self._subs.append(await self.channel.subscribe(self.topics.block(), self._on_entry))
        self._subs.append(
            await self.channel.subscribe(self.topics.block_snapshot(), self._on_snapshot)
        )

    async def stop(self) -> None:
        """Stop listening; every applied entry is already committed."""
        for sub in self._subs:
            sub.cancel()
        self._subs.clear()

    def entries(self) -> list[dict[str, Any]]:
        """Every entry held (newest per target), by target, with its state now."""
        now = self._now_ms()
        return [self._entries[t].describe(now) for t in sorted(self._entries)]

    def is_blocked(self, device_id: str) -> bool:
        """True if ``device_id``, or the key of its known certificate, is blocked now."""
        return self.channel.trust.is_blocked(device_id)

    def counters(self) -> dict[str, Any]:
        """What ``igris status`` shows."""
        now = self._now_ms()
        return {
            "entries": len(self._entries),
            "blocked": sum(e.in_force(now) for e in self._entries.values()),
            "applied": self.applied,
            "stale": self.stale,
            "refused": dict(self.refused),
        }

    def apply(self, entry: BlockEntry) -> bool:
        """Store, record and enforce ``entry`` if it is newer than what we hold for its target.

        The row and its ledger record commit together. Returns False (and
        counts it as stale) for an older or repeated entry.
        """
        known = self._entries.get(entry.target)
        if known is not None and not entry.supersedes(known):
            self.stale += 1
            return False
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO blocklist (target, blocked, reason, expires_ms, ts_ms, ts_counter,"
                " author, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(target) DO UPDATE"
                " SET blocked = excluded.blocked, reason = excluded.reason,"
                " expires_ms = excluded.expires_ms, ts_ms = excluded.ts_ms,"
                " ts_counter = excluded.ts_counter, author = excluded.author,"
                " envelope = excluded.envelope",
                (entry.target, int(entry.blocked), entry.reason, entry.expires_ms, entry.ts[0],
                 entry.ts[1], entry.author, canonical_json(entry.envelope).decode()),
            )
            self._record("block", {
                "action": BLOCK if entry.blocked else UNBLOCK, "target": entry.target,
                "reason": entry.reason, "expires_ms": entry.expires_ms,
                "author": entry.author, "entry": entry.id, "ts": list(entry.ts),
            })
        self._entries[entry.target] = entry
        self.applied += 1
        self._push()
        log.warning("blocklist: %s %s by %s (%s)", BLOCK if entry.blocked else UNBLOCK,
                    entry.target, entry.author, entry.reason or "no reason given")
        return True

    def _push(self) -> None:
        devices: dict[str, int | None] = {}
        keys: dict[str, int | None] = {}
        for entry in self._entries.values():
            if entry.blocked:
                kind, _, name = entry.target.partition(":")
                (devices if kind == "device" else keys)[name] = entry.expires_ms
        self.channel.trust.set_blocked(devices, keys)

    def _on_entry(self, env: Envelope, _message: Message) -> None:
        try:
            entry = BlockEntry.from_envelope(env, self.channel.trust)
        except EnvelopeRejected as exc:
            self._refuse(exc.reason, env, exc)
            return
        self.apply(entry)

    def _on_snapshot(self, env: Envelope, message: Message) -> None:
        try:
            entries, refused = unpack_snapshot(self.channel, env, message.topic)
        except EnvelopeRejected as exc:
            self._refuse(exc.reason, env, exc)
            return
        self.refused.update(refused)
        for entry in entries:
            self.apply(entry)

    def _refuse(self, reason: str, env: Envelope, exc: Exception) -> None:
        self.refused[reason] += 1
        log.warning("refused blocklist message %s from %s: %s", env.id, env.src, exc)
