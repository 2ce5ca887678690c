"""The signed, hash-chained, append-only ledger: what happened on this device, provably.

Each entry's hash is the SHA-256 of the canonical JSON of
``{"seq", "prev", "ts", "kind", "body", "author"}``; ``prev`` is the hash of
the entry before it (32 zero bytes for the first) and the device signs the
hash with its Ed25519 key. Editing a row, deleting or inserting one,
reordering rows or re-signing one with another key therefore breaks a hash,
a link or a signature, and :func:`verify_ledger` names the first entry where
that happens and why. Cutting off the newest rows leaves a shorter chain
that still verifies; that is what checkpoints are for
(:mod:`agent.security_mesh.checkpoints`): peers remember the sizes and heads
they saw. The ledger detects tampering; it does not prevent it.

>>> ledger = Ledger(db, identity, hlc)                               # doctest: +SKIP
>>> ledger.append("command", {"who": "ops", "what": "reboot", "result": "..."})  # doctest: +SKIP
>>> verify_ledger(db.path, {key_id(pub): pub}).ok                  # doctest: +SKIP
True
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions

from agent.compat import b64url_encode, canonical_json, sha256
from agent.db import Database
from agent.errors import LedgerError
from agent.identity.certificate import key_id
from agent.identity.identity import Identity
from agent.wire import MAX_BYTES, HybridClock, check_name

GENESIS = bytes(32)
"""The ``prev`` of entry 1: there is nothing before it."""

MAX_BODY_BYTES = MAX_BYTES
"""A ledger entry records an event, not a payload: bodies larger than a message are refused."""

_COLUMNS = "seq, prev, hash, ts_ms, ts_counter, kind, body, author, sig"
_INSERT = f"INSERT INTO ledger ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_HEAD = "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1"
# Kinds are topic-level names and authors are base64url key ids: neither can
# hold a quote, which keeps the assembled canonical form unambiguous (below).
_NAME_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_B64URL_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One entry as stored: its place in the chain, what it records, who signed it.

    The body is kept as the canonical JSON text that was hashed and parsed
    on access: the entry cannot drift from its hash when the caller's dict
    changes later, and appends (whose entries are mostly not looked at) do
    not pay for a parse.
    """

    seq: int
    prev: bytes
    hash: bytes
    ts: tuple[int, int]
    kind: str
    body_json: str
    author: str
    sig: bytes

    @property
    def body(self) -> dict[str, Any]:
        """The body as a new dict (changing it changes nothing stored)."""
        return json.loads(self.body_json)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (binary fields as base64url), for ``igris ledger show``."""
        return {
            "seq": self.seq, "prev": b64url_encode(self.prev), "hash": b64url_encode(self.hash),
            "ts": list(self.ts), "kind": self.kind, "body": self.body, "author": self.author,
            "sig": b64url_encode(self.sig),
        }


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """The outcome of a verification.

    ``size`` and ``head`` describe the verified prefix: the whole ledger when
    ``ok``, else the entries before ``bad_seq``; ``reason`` says, in words,
    what is wrong with entry ``bad_seq``.
    """

    ok: bool
    size: int
    head: bytes
    bad_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "size": self.size, "head": b64url_encode(self.head),
                "bad_seq": self.bad_seq, "reason": self.reason}


def entry_bytes(seq: int, prev: bytes, ts_ms: int, ts_counter: int, kind: bytes,
                body: bytes, author: bytes) -> bytes:
    """The canonical JSON an entry's hash covers, assembled from its stored parts.

    Equal to ``canonical_json({"seq", "prev": b64url(prev), "ts", "kind",
    "body", "author"})`` when ``body`` is the canonical JSON of the body (as
    stored), but without parsing and re-encoding the body: verification
    hashes the stored bytes, so even a change that keeps the JSON's meaning
    (a space) shows. It is unambiguous because kind and author hold no quote
    and the numbers are integers: one byte string, one set of fields.
    """
    return b'{"author":"%s","body":%s,"kind":"%s","prev":"%s","seq":%d,"ts":[%d,%d]}' % (
        author, body, kind, base64.urlsafe_b64encode(prev).rstrip(b"="), seq, ts_ms, ts_counter,
    )


class Ledger:
    """This device's ledger in the agent's database, signed with its identity.

    Every write goes through :meth:`Database.transaction`, so a caller may
    wrap a change and its ledger entry in one transaction (both land or
    neither does). Verification (:meth:`verify`) reads on its own read-only
    connection, so it can run in an executor thread while the loop appends.
    """

    def __init__(self, db: Database, identity: Identity, hlc: HybridClock):
        self.db = db
        self.identity = identity
        self.hlc = hlc
        self.author = key_id(identity.certificate.sign_key)
        self._author_bytes = self.author.encode()

    def append(self, kind: str, body: dict[str, Any]) -> LedgerEntry:
        """Record one event; returns the entry as stored."""
        return self.append_many(((kind, body),))[0]

    def append_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> list[LedgerEntry]:
        """Record several events in one transaction (one commit for all of them).

        Every item is checked before anything is written, so a bad one
        leaves the ledger as it was.
        """
        prepared = [_prepare(kind, body) for kind, body in items]
        if not prepared:
            return []
        author, author_bytes = self.author, self._author_bytes
        sign, now = self.identity.sign, self.hlc.now
        rows = []
        entries = []
        with self.db.transaction() as conn:
            # The head is read inside the write transaction rather than cached:
            # an outer transaction that rolls back would leave a cached head
            # ahead of the table, and the next append would open a gap.
            seq, prev = _read_head(conn)
            for kind, body_bytes in prepared:
                seq += 1
                ts_ms, ts_counter = now()
                digest = sha256(entry_bytes(seq, prev, ts_ms, ts_counter, kind.encode(),
                                            body_bytes, author_bytes))
                sig = sign(digest)
                body_text = body_bytes.decode()
                rows.append((seq, prev, digest, ts_ms, ts_counter, kind, body_text, author, sig))
                entries.append(LedgerEntry(seq, prev, digest, (ts_ms, ts_counter), kind,
                                           body_text, author, sig))
                prev = digest
            conn.executemany(_INSERT, rows)
        return entries

    def head(self) -> tuple[int, bytes]:
        """``(size, hash of the newest entry)``; ``(0, GENESIS)`` when empty."""
        return _read_head(self.db.conn)

    def __len__(self) -> int:
        return self.head()[0]

    def entries(self, after_seq: int = 0, limit: int = 100) -> list[LedgerEntry]:
        """Up to ``limit`` entries after ``after_seq``, oldest first (for paging)."""
        cursor = self.db.conn.execute(
            f"SELECT {_COLUMNS} FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_entry(row) for row in cursor]

    def head_at(self, sizes: Iterable[int]) -> dict[int, bytes]:
        """The head the ledger had at each of ``sizes`` (the hash of entry ``size``).

        Sizes beyond the ledger are left out; size 0 maps to :data:`GENESIS`.
        """
        wanted = sorted(set(sizes))
        heads = {0: GENESIS} if 0 in wanted else {}
        positive = [s for s in wanted if s > 0]
        if positive:
            marks = ",".join("?" * len(positive))
            heads.update(self.db.conn.execute(
                f"SELECT seq, hash FROM ledger WHERE seq IN ({marks})", positive).fetchall())
        return heads

    def verify(self) -> LedgerReport:
        """Verify the whole ledger against this device's key (blocking: use an executor)."""
        key = self.identity.certificate.sign_key
        return verify_ledger(self.db.path, {self.author: key})


def _prepare(kind: str, body: dict[str, Any]) -> tuple[str, bytes]:
    check_name(kind, "ledger entry kind")
    if not isinstance(body, dict):
        raise TypeError(f"ledger entry body must be a dict, got {type(body).__name__}")
    body_bytes = canonical_json(body)
    if len(body_bytes) > MAX_BODY_BYTES:
        raise ValueError(
            f"ledger entry body of kind {kind!r} is {len(body_bytes)} bytes, over the "
            f"{MAX_BODY_BYTES}-byte limit; record a digest of large data instead"
        )
    return kind, body_bytes


def _read_head(conn: sqlite3.Connection) -> tuple[int, bytes]:
    row = conn.execute(_HEAD).fetchone()
    return (0, GENESIS) if row is None else (row[0], row[1])


def _entry(row: tuple[Any, ...]) -> LedgerEntry:
    seq, prev, digest, ts_ms, ts_counter, kind, body, author, sig = row
    return LedgerEntry(seq, prev, digest, (ts_ms, ts_counter), kind, body, author, sig)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to an agent database that refuses to create one.

    In WAL mode a reader does not block the agent's writer, and sees the
    last committed state, so this works while the agent runs.
    """
    if not path.is_file():
        raise LedgerError(f"no agent database at {str(path)!r}; is --root right?")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        conn.execute("PRAGMA busy_timeout=5000")
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger in {str(path)!r}: {exc}") from None
    if found is None:
        conn.close()
        raise LedgerError(
            f"{str(path)!r} has no ledger table; start the agent once to create it")
    return conn


def read_entries(path: Path, *, limit: int = 20, kind: str | None = None) -> list[LedgerEntry]:
    """The newest ``limit`` entries (of ``kind``, if given), oldest first, read-only."""
    conn = _connect_readonly(path)
    try:
        where, params = ("WHERE kind = ?", (kind, limit)) if kind else ("", (limit,))
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM ledger {where} ORDER BY seq DESC LIMIT ?", params
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger in {str(path)!r}: {exc}") from None
    finally:
        conn.close()
    return [_entry(row) for row in reversed(rows)]


def verify_ledger(path: Path, keys: Mapping[str, bytes]) -> LedgerReport:
    """Check every entry of the ledger in the database at ``path``, in order.

    ``keys`` maps author key ids to Ed25519 public keys. Rows are streamed
    on a read-only connection (one consistent snapshot, little memory), so
    this is safe while the agent runs; it is blocking, CPU-bound work.
    Stops at the first bad entry and says what is wrong with it.
    """
    by_author = {author.encode(): key for author, key in keys.items()}
    conn = _connect_readonly(path)
    # TEXT columns as bytes: they are hashed as stored, never decoded.
    conn.text_factory = bytes
    expected, last = 1, GENESIS
    open_signed = nacl.bindings.crypto_sign_open
    bad_signature = nacl.exceptions.BadSignatureError
    try:
        for seq, prev, stored, ts_ms, ts_counter, kind, body, author, sig in conn.execute(
            f"SELECT {_COLUMNS} FROM ledger ORDER BY seq"
        ):
            if seq != expected:
                missing = (f"entry {expected} is" if seq == expected + 1
                           else f"entries {expected} to {seq - 1} are")
                return _bad(expected, last, f"{missing} missing: the sequence jumps from "
                                            f"{expected - 1} to {seq} (rows were deleted)")
            problem = _malformed(prev, stored, ts_ms, ts_counter, kind, body, author, sig)
            if problem is not None:
                return _bad(seq, last, f"entry {seq} is malformed ({problem}): the row was "
                                       "written outside the agent")
            if prev != last:
                after = (f"does not follow entry {seq - 1}: its 'prev' is not the hash of "
                         f"entry {seq - 1}" if seq > 1 else
                         "does not start the chain: its 'prev' is not the genesis value")
                return _bad(seq, last, (
                    f"entry {seq} {after} (a row was inserted, rows were reordered, or rows "
                    "were deleted and the rest renumbered)"))
            digest = sha256(entry_bytes(seq, prev, ts_ms, ts_counter, kind, body, author))
            if digest != stored:
                return _bad(seq, last, (
                    f"entry {seq} was edited: its contents (kind, body, time or author) no "
                    "longer match its hash"))
            key = by_author.get(author)
            if key is None:
                return _bad(seq, last, (
                    f"entry {seq} is signed by an unknown key {author.decode()!r}, not this "
                    "device's (the row was rewritten and signed by someone else)"))
            try:
                open_signed(sig + digest, key)
            except (bad_signature, ValueError):
                return _bad(seq, last, (
                    f"entry {seq} has a bad signature: it does not verify under the key of "
                    f"its author {author.decode()!r} (the row was rewritten and re-hashed, or "
                    "re-signed with another key)"))
            expected, last = seq + 1, digest
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger in {str(path)!r}: {exc}") from None
    finally:
        conn.close()
    return LedgerReport(True, expected - 1, last)


def _bad(seq: int, head: bytes, reason: str) -> LedgerReport:
    return LedgerReport(False, seq - 1, head, seq, reason)


def _malformed(prev: object, stored: object, ts_ms: object, ts_counter: object, kind: object,
               body: object, author: object, sig: object) -> str | None:
    """What about a row no agent could have written, or None (the common, cheap case)."""
    if type(ts_ms) is not int or type(ts_counter) is not int:
        return "its time is not a pair of integers"
    if not (type(prev) is bytes and type(stored) is bytes and type(sig) is bytes
            and type(body) is bytes):
        return "a field has the wrong type"
    if not (type(kind) is bytes and 0 < len(kind) <= 64 and not kind.strip(_NAME_BYTES)):
        return "its kind is not a name"
    if not (type(author) is bytes and author and not author.strip(_B64URL_BYTES)):
        return "its author is not a key id"
    return None


class AuthFailureTally:
    """Count authentication failures in memory; :meth:`flush` writes one summary entry.

    A flood of bad messages must not fill the disk, so failures are never
    recorded one by one: the runtime calls :meth:`flush` periodically and
    each call writes at most one ``auth_failures`` entry: exact totals by
    reason, the ``top`` (reason, source) pairs by count, and the rest as one
    number. Memory is bounded too: when ``max_pairs`` distinct pairs are
    held, the smaller half is forgotten (still counted in the totals), so
    spoofed sources cannot crowd out one that keeps failing.

    >>> tally = AuthFailureTally(ledger)                        # doctest: +SKIP
    >>> tally.add("bad_signature", "pi-07")                     # doctest: +SKIP
    >>> tally.flush().body["total"]                             # doctest: +SKIP
    1
    """

    MAX_TEXT = 64

    def __init__(self, ledger: Ledger, *, top: int = 10, max_pairs: int = 1024):
        self.ledger = ledger
        self.top = top
        self.max_pairs = max_pairs
        self._by_reason: Counter[str] = Counter()
        self._pairs: Counter[tuple[str, str]] = Counter()

    def add(self, reason: str, source: str, count: int = 1) -> None:
        """Count ``count`` failures of ``reason`` from ``source`` (a device id, a client)."""
        reason = reason[: self.MAX_TEXT]
        pair = (reason, source[: self.MAX_TEXT])
        self._by_reason[reason] += count
        if pair not in self._pairs and len(self._pairs) >= self.max_pairs:
            self._pairs = Counter(dict(self._pairs.most_common(self.max_pairs // 2)))
        self._pairs[pair] += count

    @property
    def pending(self) -> int:
        """Failures counted since the last flush."""
        return sum(self._by_reason.values())

    def flush(self) -> LedgerEntry | None:
        """Write the counts as one ledger entry and start again; None if there were none."""
        total = self.pending
        if total == 0:
            return None
        top = self._pairs.most_common(self.top)
        body = {
            "total": total,
            "by_reason": dict(self._by_reason),
            "top": [{"reason": reason, "source": source, "count": n}
                    for (reason, source), n in top],
            "others": total - sum(n for _, n in top),
        }
        entry = self.ledger.append("auth_failures", body)
        self._by_reason.clear()
        self._pairs.clear()
        return entry
