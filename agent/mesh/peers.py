"""The peer table: what this device knows about each peer it follows, in SQLite.

Kept in the ``peers`` table so that after a restart the device still knows
its peers (and their last session numbers, which decide stale deaths) before
the first message arrives. Heartbeats only touch memory; a row is written
when a peer's state, session or description changes, and ``last_seen`` is
flushed in one batch now and then.

Lite devices relayed by a gateway (:class:`RelayedPeer`) are not stored: their
relays are retained on the broker, which hands them back after a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from agent.db import Database

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"
LEFT = "left"  # stopped gracefully
BLOCKED = "blocked"  # shown, never stored: the blocklist decides it
REACHABLE = (ALIVE, SUSPECT)  # may still answer
UNKNOWN = "unknown"  # a relayed lite peer whose gateway this device does not know (yet)
RELAYED_STATES = (ALIVE, SUSPECT, DEAD, LEFT)
"""What a gateway may say of a lite device."""


@dataclass(frozen=True, slots=True)
class Peer:
    """One peer as this device last knew it."""

    device_id: str
    state: str
    session: int
    last_seen_ms: int
    changed_ms: int
    role: str = "device"
    groups: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)  # target, version, health

    def with_(self, **changes: Any) -> Peer:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "state": self.state,
            "session": self.session,
            "role": self.role,
            "groups": list(self.groups),
            "caps": list(self.caps),
            "info": self.info,
            "lite": False,
            "via": None,
            "last_seen_ms": self.last_seen_ms,
            "changed_ms": self.changed_ms,
        }


@dataclass(frozen=True, slots=True)
class RelayedPeer:
    """A lite device as its gateway ``via`` last relayed it (``node/<via>/lite/<dev>``).

    >>> RelayedPeer.from_relay({"device_id": "esp-1", "via": "gw", "lite": True,
    ...     "state": "alive", "session": 3, "last_seen_ms": 5, "changed_ms": 4}).state
    'alive'
    """

    device_id: str
    via: str
    state: str
    session: int
    last_seen_ms: int
    changed_ms: int

    @classmethod
    def from_relay(cls, body: dict[str, Any]) -> RelayedPeer:
        """Read a relay's body; :class:`ValueError` naming the field for anything malformed."""
        if body.get("lite") is not True:
            raise ValueError("a relay must say \"lite\": true")
        for name in ("device_id", "via"):
            if not isinstance(body.get(name), str):
                raise ValueError(f"relay field {name!r} must be a device id, "
                                 f"got {body.get(name)!r}")
        if body.get("state") not in RELAYED_STATES:
            raise ValueError(f"relay state {body.get('state')!r} is not one of "
                             f"{', '.join(RELAYED_STATES)}")
        for name in ("session", "last_seen_ms", "changed_ms"):
            value = body.get(name)
            if type(value) is not int or value < 0:
                raise ValueError(f"relay field {name!r} must be an integer >= 0, got {value!r}")
        return cls(body["device_id"], body["via"], body["state"], body["session"],
                   body["last_seen_ms"], body["changed_ms"])

    def with_(self, **changes: Any) -> RelayedPeer:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The shape of :meth:`Peer.to_dict`, with ``lite`` and ``via`` (a lite device is
        in no group and has no capabilities: it has no certificate to say so)."""
        return {
            "device_id": self.device_id,
            "state": self.state,
            "session": self.session,
            "role": "lite",
            "groups": [],
            "caps": [],
            "info": {},
            "lite": True,
            "via": self.via,
            "last_seen_ms": self.last_seen_ms,
            "changed_ms": self.changed_ms,
        }


class PeerTable:
    """Read and write :class:`Peer` rows."""

    def __init__(self, db: Database):
        self.db = db

    def load(self) -> dict[str, Peer]:
        rows = self.db.conn.execute(
            "SELECT device_id, state, session, last_seen_ms, changed_ms, role, "
            "groups_json, caps_json, info_json FROM peers"
        ).fetchall()
        peers = {}
        for dev, state, session, seen, changed, role, groups, caps, info in rows:
            peers[dev] = Peer(
                dev, state, session, seen, changed, role,
                tuple(json.loads(groups)), tuple(json.loads(caps)), json.loads(info),
            )
        return peers

    def save(self, peer: Peer) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO peers (device_id, state, session, role, groups_json, caps_json, "
                "info_json, last_seen_ms, changed_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(device_id) DO UPDATE SET state = excluded.state, "
                "session = excluded.session, role = excluded.role, "
                "groups_json = excluded.groups_json, caps_json = excluded.caps_json, "
                "info_json = excluded.info_json, last_seen_ms = excluded.last_seen_ms, "
                "changed_ms = excluded.changed_ms",
                (peer.device_id, peer.state, peer.session, peer.role,
                 json.dumps(list(peer.groups)), json.dumps(list(peer.caps)),
                 json.dumps(peer.info, sort_keys=True), peer.last_seen_ms, peer.changed_ms),
            )

    def save_last_seen(self, seen: dict[str, int]) -> None:
        """Write many peers' ``last_seen_ms`` in one transaction."""
        if not seen:
            return
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE peers SET last_seen_ms = ? WHERE device_id = ?",
                [(ms, dev) for dev, ms in seen.items()],
            )
