"""Policy sync: the operator-signed, versioned policy document every device follows.

An operator signs the document (``igris policy push``) and publishes it
retained on ``policy``, so a device that joins late gets it from the broker.
A device accepts it only if the signer's certificate (checked against the
fleet CA by the channel) has the operator role, the document passes the
schema, and its version is higher than the one in force. It then applies it
atomically: the policy row and its ledger entry commit in one transaction,
and only after that do components see the new document. A rejected policy
is logged and recorded with its reason and changes nothing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.compat import canonical_json, sha256
from agent.db import Database
from agent.errors import PolicyRejected
from agent.identity.channel import SignedChannel
from agent.mesh.policy_schema import default_policy, validate_policy
from agent.transport.base import Message
from agent.wire import Envelope, Topics

log = logging.getLogger(__name__)

PolicyListener = Callable[[dict[str, Any]], None]
Recorder = Callable[[str, dict[str, Any]], object]
_REJECTION_MEMORY = 256


def policy_digest(doc: dict[str, Any]) -> str:
    """Hex SHA-256 of the canonical document: what the ledger and ``policy show`` name."""
    return sha256(canonical_json(doc)).hex()


def policy_body(doc: dict[str, Any], cert: dict[str, Any]) -> dict[str, Any]:
    """The body of a ``policy`` envelope: the document and the signer's certificate."""
    return {"policy": validate_policy(doc), "cert": cert}


def stored_policy(conn: sqlite3.Connection) -> tuple[dict[str, Any], str, int] | None:
    """The newest applied policy in a device database: (document, author, applied ms).

    None when none was ever applied (the shipped default is in force) or the
    stored one no longer validates (logged; the default is then in force).
    """
    row = conn.execute(
        "SELECT document, author, applied_ms FROM policy ORDER BY version DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    try:
        return validate_policy(json.loads(row[0])), row[1], row[2]
    except (ValueError, PolicyRejected) as exc:
        # Written by us after validation, so only a hand edit or a newer schema gets here.
        log.error("stored policy is not valid (%s); using the shipped default", exc)
        return None


class PolicySync:
    """Hold the policy in force; accept newer operator-signed ones from ``policy``.

    >>> sync = PolicySync(channel, topics, db, record=ledger.append)   # doctest: +SKIP
    >>> sync.add_listener(lambda doc: apply_timeouts(doc))             # doctest: +SKIP
    >>> await sync.start()                                             # doctest: +SKIP
    """

    def __init__(
        self,
        channel: SignedChannel,
        topics: Topics,
        db: Database,
        *,
        record: Recorder,
        now_ms: Callable[[], int],
    ):
        self.channel = channel
        self.topics = topics
        self.db = db
        self._record = record
        self._now_ms = now_ms
        self._listeners: list[PolicyListener] = []
        self.document: dict[str, Any] = default_policy()
        # What sections fall back to; parsed once (section() runs per command and decision).
        self._defaults: dict[str, Any] = default_policy()
        self.author = "default"
        self.applied_ms: int | None = None
        self.rejected: Counter[str] = Counter()
        self.last_rejection: str | None = None
        self._rejected_ids: list[str] = []
        self._load()

    @property
    def version(self) -> int:
        return int(self.document["version"])

    def add_listener(self, listener: PolicyListener) -> None:
        """Call ``listener(document)`` now, and again after each policy is applied."""
        self._listeners.append(listener)
        listener(self.document)

    def section(self, name: str) -> dict[str, Any]:
        """A section of the policy in force, falling back to the shipped default's."""
        return self.document.get(name) or self._defaults.get(name, {})

    def show(self) -> dict[str, Any]:
        """What ``igris policy show`` prints."""
        return {
            "version": self.version,
            "author": self.author,
            "applied_ms": self.applied_ms,
            "digest": policy_digest(self.document),
            "rejected": dict(self.rejected),
            "last_rejection": self.last_rejection,
            "document": self.document,
        }

    async def start(self) -> None:
        await self.channel.subscribe(self.topics.policy(), self._on_policy)

    async def stop(self) -> None:
        """Nothing to flush: every accepted policy is committed when applied."""

    def _load(self) -> None:
        stored = stored_policy(self.db.conn)
        if stored is not None:
            self.document, self.author, self.applied_ms = stored

    def _on_policy(self, env: Envelope, _message: Message) -> None:
        doc = env.body.get("policy")
        try:
            self.apply(env)
        except PolicyRejected as exc:
            if env.id in self._rejected_ids:
                return  # the same retained message again, after a resubscribe
            self._rejected_ids = [*self._rejected_ids[-_REJECTION_MEMORY + 1:], env.id]
            reason = str(exc)
            self.rejected[getattr(exc, "code", "schema")] += 1
            self.last_rejection = reason
            version = doc.get("version") if isinstance(doc, dict) else None
            log.warning("rejected policy version %r from %s: %s", version, env.src, reason)
            self._record("policy_rejected", {
                "author": env.src, "version": version if type(version) is int else None,
                "reason": reason[:200], "envelope": env.id,
            })

    def apply(self, env: Envelope) -> bool:
        """Apply the policy in ``env``; False for the one already in force, else raises."""
        cert = self.channel.trust.certificate(env.src)
        if cert is None or cert.role != "operator":
            role = cert.role if cert else "unknown"
            raise _rejected(
                "role", f"signer {env.src!r} has role {role!r}; a policy must be signed by an "
                "operator"
            )
        doc = env.body.get("policy")
        validate_policy(doc)
        digest = policy_digest(doc)
        if doc["version"] == self.version and digest == policy_digest(self.document):
            return False
        if doc["version"] <= self.version:
            raise _rejected(
                "version", f"version {doc['version']} is not newer than version "
                f"{self.version} in force"
            )
        now = self._now_ms()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO policy (version, document, author, envelope, applied_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (doc["version"], canonical_json(doc).decode(), env.src,
                 env.encode().decode(), now),
            )
            self._record("policy", {"version": doc["version"], "digest": digest,
                                    "author": env.src})
        self.document, self.author, self.applied_ms = doc, env.src, now
        log.info("policy version %d from %s applied", doc["version"], env.src)
        for listener in self._listeners:
            try:
                listener(doc)
            except Exception:
                log.exception("policy listener %r failed", listener)
        return True


def _rejected(code: str, reason: str) -> PolicyRejected:
    """A rejection with a countable ``code`` (schema errors carry none: "schema")."""
    exc = PolicyRejected(reason)
    exc.code = code  # type: ignore[attr-defined]
    return exc
