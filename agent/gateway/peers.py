"""The lite devices a gateway follows: alive, suspect, dead or left, by session.

The same rules as the mesh's membership (``docs/mesh.md``), applied to
MAC-checked messages: a birth or heartbeat makes a device ``alive``, silence
makes it ``suspect`` after 3 of its heartbeat periods and ``dead`` after 6,
its last will makes it ``dead`` at once and a graceful stop ``left``. A
death or birth of an older session than the one known is stale and ignored.
Kept in memory: the broker's retained birth or death tells a restarted
gateway where each device stands. Every change (state, session, a device
first seen) is handed to ``on_change``: the gateway relays it to the mesh.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.mesh.peers import ALIVE, DEAD, LEFT, SUSPECT  # the mesh's own states

SUSPECT_BEATS = 3
DEAD_BEATS = 6
_BIRTH_INFO = ("version", "pins", "writable", "commands")


@dataclass(frozen=True, slots=True)
class LitePeer:
    """One lite device as its gateway last knew it."""

    device_id: str
    state: str
    session: int
    last_seen_ms: int
    changed_ms: int
    via: str  # the gateway's device id
    heartbeat_s: float = 10.0
    info: dict[str, Any] = field(default_factory=dict)  # version, pins, telemetry, heap

    def relay_body(self) -> dict[str, Any]:
        """What the gateway signs on ``node/<gw>/lite/<dev>`` for the rest of the mesh
        (read there by ``agent.mesh.peers.RelayedPeer.from_relay``)."""
        return {"device_id": self.device_id, "via": self.via, "lite": True,
                "state": self.state, "session": self.session,
                "last_seen_ms": self.last_seen_ms, "changed_ms": self.changed_ms}

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "state": self.state, "session": self.session,
                "role": "lite", "lite": True, "via": self.via, "info": self.info,
                "heartbeat_s": self.heartbeat_s, "last_seen_ms": self.last_seen_ms,
                "changed_ms": self.changed_ms}


class LitePeers:
    """Apply births, heartbeats, telemetry and deaths; ``check_timeouts`` ages them."""

    def __init__(self, via: str, now_ms: Callable[[], int],
                 on_change: Callable[[LitePeer], None] | None = None):
        self.via = via
        self._now_ms = now_ms
        self._on_change = on_change
        self._peers: dict[str, LitePeer] = {}
        self.ignored: Counter[str] = Counter()

    def get(self, device_id: str) -> LitePeer | None:
        return self._peers.get(device_id)

    def peers(self) -> list[LitePeer]:
        return [self._peers[d] for d in sorted(self._peers)]

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.state for p in self._peers.values()))

    def alive(self, device_id: str, session: int, body: dict[str, Any], *, birth: bool) -> None:
        now = self._now_ms()
        known = self._peers.get(device_id)
        if known is not None and session < known.session:
            self.ignored["stale_session"] += 1
            return
        if known is not None and session == known.session and known.state == LEFT:
            return  # a straggler from a session that said goodbye
        base = known or LitePeer(device_id, ALIVE, session, now, now, self.via)
        info = dict(base.info)
        heartbeat_s = base.heartbeat_s
        if birth:
            info.update({k: body[k] for k in _BIRTH_INFO if k in body})
            if isinstance(body.get("heartbeat_s"), (int, float)) and body["heartbeat_s"] > 0:
                heartbeat_s = float(body["heartbeat_s"])
        if isinstance(body.get("heap"), dict):
            info["heap"] = body["heap"]
        self._set(base, state=ALIVE, session=session, last_seen_ms=now, info=info,
                  heartbeat_s=heartbeat_s)

    def telemetry(self, device_id: str, session: int, values: Any) -> None:
        known = self._peers.get(device_id)
        if known is None or session != known.session:
            self.ignored["telemetry_without_birth"] += 1
            return
        info = {**known.info, "telemetry": values, "telemetry_ms": self._now_ms()}
        self._set(known, state=ALIVE if known.state == SUSPECT else known.state,
                  last_seen_ms=self._now_ms(), info=info)

    def death(self, device_id: str, session: int, reason: str) -> None:
        now = self._now_ms()
        known = self._peers.get(device_id)
        if known is not None and session < known.session:
            self.ignored["stale_death"] += 1
            return
        base = known or LitePeer(device_id, DEAD, session, now, now, self.via)
        state = LEFT if reason == "shutdown" else DEAD
        self._set(base, state=state, session=session, info={**base.info, "reason": reason})

    def check_timeouts(self) -> None:
        now = self._now_ms()
        for peer in list(self._peers.values()):
            silent = now - peer.last_seen_ms
            beat_ms = peer.heartbeat_s * 1000
            if peer.state == ALIVE and silent > SUSPECT_BEATS * beat_ms:
                self._set(peer, state=SUSPECT)
            elif peer.state == SUSPECT and silent > DEAD_BEATS * beat_ms:
                self._set(peer, state=DEAD)

    def _set(self, peer: LitePeer, **changes: Any) -> None:
        new = replace(peer, **changes)
        changed = new.state != peer.state or new.session != peer.session or \
            peer.device_id not in self._peers
        if changed:
            new = replace(new, changed_ms=self._now_ms())
        self._peers[new.device_id] = new
        if changed and self._on_change is not None:
            self._on_change(new)
