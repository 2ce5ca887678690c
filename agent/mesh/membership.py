"""Membership and failure detection: who is alive, from births, heartbeats and deaths.

A peer becomes ``alive`` on a signed birth (retained on ``node/<dev>/state``,
its certificate checked against the fleet CA by the channel), stays alive on
heartbeats, turns ``suspect`` and then ``dead`` when heartbeats stop (timeouts
from policy), ``dead`` at once when the broker delivers its last will (kill -9,
power loss after the keepalive) and ``left`` on a graceful stop. Session
numbers order it all: a death or birth from an older session than the one we
know is stale and ignored, so an old session's will never kills a device that
has already come back.

**Scope scales with the group.** In ``group`` scope a device does not
subscribe to the fleet's presence topics. Each device keeps a retained
marker on ``group/<g>/<dev>`` for each of its groups; a device subscribes to
the markers of its own groups and then to the presence topics of just those
peers. Subscriptions and traffic grow with the group, not the fleet, and
everything is plain MQTT (retained messages, ``+`` filters), so any broker or
broker cluster serves. ``fleet`` scope (operators, schedulers, devices in no
group) follows ``node/+/state`` and ``node/+/hb``.

**Lite devices, relayed.** A lite device cannot sign; its gateway checks its
MACs and publishes a signed, retained relay of its state on
``node/<gw>/lite/<lite>``, followed like the gateway's own presence. A relay
counts only if its signer's certificate has the capability ``gateway``
(else it is dropped and counted as ``not_gateway``), never shadows a peer
that signs for itself, and is believed only while its gateway is alive or
suspect: a gateway that is dead or gone takes its lite devices with it.
Relayed peers are listed apart (``lite_peers()``), not in ``peers()``: they
answer no bus command and run no task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.db import Database
from agent.errors import TopicInvalid
from agent.identity.certificate import Certificate
from agent.identity.channel import SignedChannel
from agent.mesh.peers import (
    ALIVE,
    BLOCKED,
    DEAD,
    LEFT,
    REACHABLE,
    SUSPECT,
    UNKNOWN,
    Peer,
    PeerTable,
    RelayedPeer,
)
from agent.transport.base import Message, Subscription
from agent.wire import Envelope, Topics, compare_ts

log = logging.getLogger(__name__)

GROUP = "group"
FLEET = "fleet"
GATEWAY_CAP = "gateway"
"""The certificate capability (``igris enroll --cap gateway``) that lets a device relay
lite devices into everyone's membership."""
PeerListener = Callable[[Peer], None]


def resolve_scope(setting: str, cert: Certificate) -> str:
    """``auto`` → ``fleet`` for operators, schedulers and devices in no group, else ``group``."""
    if setting in (GROUP, FLEET):
        return setting if (setting == FLEET or cert.groups) else FLEET
    return FLEET if cert.role != "device" or not cert.groups else GROUP


class Membership:
    """Follow peers' presence; ``peers()`` is the table ``igris peers`` prints.

    >>> m = Membership(channel, topics, db, scope="group",
    ...                suspect_after_s=30, dead_after_s=90, now_ms=clock)  # doctest: +SKIP
    >>> await m.start()                                                     # doctest: +SKIP
    """

    def __init__(
        self,
        channel: SignedChannel,
        topics: Topics,
        db: Database,
        *,
        scope: str,
        suspect_after_s: float,
        dead_after_s: float,
        now_ms: Callable[[], int],
        tick_s: float = 1.0,
        flush_s: float = 30.0,
        is_blocked: Callable[[str], bool] = lambda _dev: False,
        announce: bool = True,
    ):
        self.channel = channel
        self.topics = topics
        self.table = PeerTable(db)
        self.scope = scope
        self._now_ms = now_ms
        self.tick_s = tick_s
        self.flush_s = flush_s
        self._is_blocked = is_blocked
        self._me = channel.identity.device_id
        self._groups = tuple(channel.identity.certificate.groups)
        # An observer (``igris cmd`` watching the fleet) follows but is not a member.
        self._marked_groups = self._groups if announce else ()
        self._peers: dict[str, Peer] = {}
        self._heard: dict[str, int] = {}  # device -> ms heard, for timeouts (memory only)
        self._relayed: dict[tuple[str, str], tuple[list[int], RelayedPeer]] = {}  # (gw, lite)
        self._unflushed: dict[str, int] = {}
        self._followed: set[str] = set()
        self._discovery: list[Subscription] = []
        self._listeners: list[PeerListener] = []
        self._body_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._online = False
        self.ignored: Counter[str] = Counter()
        self.set_timeouts(suspect_after_s, dead_after_s)

    # ------------------------------------------------------------------ public

    def set_timeouts(self, suspect_after_s: float, dead_after_s: float) -> None:
        """Heartbeat timeouts (from policy); takes effect at the next check."""
        if not 0 < suspect_after_s < dead_after_s:
            raise ValueError(
                f"need 0 < suspect_after_s ({suspect_after_s}) < dead_after_s ({dead_after_s})"
            )
        self.suspect_after_ms = int(suspect_after_s * 1000)
        self.dead_after_ms = int(dead_after_s * 1000)

    def add_listener(self, listener: PeerListener) -> None:
        """Call ``listener(peer)`` on the loop whenever a peer's state changes."""
        self._listeners.append(listener)

    def add_body_listener(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``listener(device, body)`` with each accepted birth or heartbeat body of a
        peer that is not blocked (memory sync reads the pool digests heartbeats carry)."""
        self._body_listeners.append(listener)

    def peer(self, device_id: str) -> Peer | None:
        peer = self._peers.get(device_id)
        if peer is not None and self._is_blocked(device_id):
            return peer.with_(state=BLOCKED)
        return peer

    def peers(self) -> list[Peer]:
        return [p for p in (self.peer(d) for d in sorted(self._peers)) if p is not None]

    def counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter(p.state for p in self.peers())
        return dict(counts)

    def lite_peers(self) -> list[RelayedPeer]:
        """Lite devices relayed by gateways, as this device should believe them now.

        A relay is only as good as its gateway: while the gateway is alive or
        suspect its word stands; once it is dead, left or blocked the device
        is shown ``dead``, and ``unknown`` while the gateway is not known at all.
        When two gateways relay the same device, a reachable account wins, then
        the most recent change.
        """
        best: dict[str, RelayedPeer] = {}
        for (via, dev), (_ts, relayed) in self._relayed.items():
            if dev in self._peers:
                continue  # a device that signs for itself is never shadowed by a relay
            shown = self._through_gateway(via, relayed)
            if self._is_blocked(dev):
                shown = shown.with_(state=BLOCKED)
            known = best.get(dev)
            if known is None or _rank(shown) > _rank(known):
                best[dev] = shown
        return [best[d] for d in sorted(best)]

    async def start(self) -> None:
        now = self._now_ms()
        self._peers = self.table.load()
        # Restarted: give every peer we believed up a full timeout to show itself.
        self._heard = {dev: now for dev, p in self._peers.items() if p.state in REACHABLE}
        self._online = self.channel.transport.connected
        self.channel.transport.add_connection_listener(self._on_connection)
        if self.scope == GROUP:
            for dev in list(self._peers):
                await self._follow(dev)
        await self._discover()
        if self._online:  # else the connection listener publishes them on connect
            await self._publish_markers()
        self._ticker = asyncio.create_task(self._tick(), name="igris.membership.tick")

    async def rediscover(self) -> None:
        """Subscribe again to what finds peers, so the broker resends the retained births
        and markers; for when the trust anchors change (CA rotation) and messages dropped
        before may now verify."""
        for sub in self._discovery:
            sub.cancel()
        await self._discover()

    async def _discover(self) -> None:
        if self.scope == FLEET:
            filters = [(self.topics.filter("node", "+", "state"), self._on_node),
                       (self.topics.filter("node", "+", "hb"), self._on_node),
                       (self.topics.filter("node", "+", "lite", "+"), self._on_relay)]
        else:
            filters = [(self.topics.filter("group", g, "+"), self._on_member)
                       for g in self._groups]
        self._discovery = [await self.channel.subscribe(f, handler) for f, handler in filters]

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._ticker] if self._ticker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ticker = None
        self.flush()

    def flush(self) -> None:
        """Write the heartbeat times gathered since the last flush (one transaction)."""
        seen, self._unflushed = self._unflushed, {}
        self.table.save_last_seen(seen)

    def check_timeouts(self) -> None:
        """alive → suspect → dead for peers whose heartbeats stopped (not while we are offline)."""
        if not self._online:
            return
        now = self._now_ms()
        for dev, heard in list(self._heard.items()):
            peer = self._peers[dev]
            silent = now - heard
            if peer.state == ALIVE and silent > self.suspect_after_ms:
                self._set(peer.with_(state=SUSPECT), f"no heartbeat for {silent} ms")
            elif peer.state == SUSPECT and silent > self.dead_after_ms:
                self._heard.pop(dev, None)
                self._set(peer.with_(state=DEAD), f"no heartbeat for {silent} ms")

    # ------------------------------------------------------------------ messages

    def _on_member(self, env: Envelope, message: Message) -> None:
        try:
            parsed = self.topics.parse(message.topic)
        except TopicInvalid:
            self.ignored["bad_topic"] += 1
            return
        dev = parsed.params.get("dev")
        if dev == self._me or env.kind != "state":
            return
        cert = self.channel.trust.certificate(env.src)
        if env.src != dev or cert is None or parsed.params["group"] not in cert.groups:
            self.ignored["bad_marker"] += 1
            log.warning("ignored group marker on %s from %s", message.topic, env.src)
            return
        self._spawn(self._follow(dev))

    async def _follow(self, dev: str) -> None:
        if dev in self._followed:
            return
        self._followed.add(dev)
        await self.channel.subscribe(self.topics.state(dev), self._on_node)
        await self.channel.subscribe(self.topics.hb(dev), self._on_node)
        await self.channel.subscribe(self.topics.filter("node", dev, "lite", "+"), self._on_relay)

    def _on_node(self, env: Envelope, message: Message) -> None:
        dev = env.src
        if dev == self._me:
            return
        try:
            parsed = self.topics.parse(message.topic)
        except TopicInvalid:
            parsed = None
        if parsed is None or parsed.params.get("dev") != dev:
            # A device may speak only for itself (the broker's ACL should stop it too).
            self.ignored["wrong_topic"] += 1
            log.warning("ignored %s from %s on %s", env.kind, dev, message.topic)
            return
        session = env.body.get("session")
        if type(session) is not int or session < 0:
            self.ignored["bad_body"] += 1
            return
        if env.kind == "death":
            self._on_death(dev, session, str(env.body.get("reason", "lost")))
        elif env.kind == "state":
            self._on_alive(dev, session, env.body, birth=parsed.name == "state")

    def _on_alive(self, dev: str, session: int, body: dict[str, Any], *, birth: bool) -> None:
        now = self._now_ms()
        known = self._peers.get(dev)
        if known is not None and session < known.session:
            self.ignored["stale_session"] += 1
            return
        if known is not None and session == known.session and known.state == LEFT:
            return  # a straggler from a session that said goodbye
        if not self._is_blocked(dev):
            for listener in self._body_listeners:
                listener(dev, body)
        info = dict(known.info) if known else {}
        if "health" in body and isinstance(body["health"], dict):
            info["health"] = body["health"]
        if birth:
            for key in ("target", "version"):
                if isinstance(body.get(key), str):
                    info[key] = body[key]
        self._heard[dev] = now
        if (known is not None and known.state == ALIVE and known.session == session
                and not birth):
            self._peers[dev] = known.with_(info=info, last_seen_ms=now)
            self._unflushed[dev] = now
            return
        cert = self.channel.trust.certificate(dev)
        base = known or Peer(dev, ALIVE, session, now, now)
        peer = base.with_(
            state=ALIVE, session=session, last_seen_ms=now, info=info,
            role=cert.role if cert else base.role,
            groups=cert.groups if cert else base.groups,
            caps=cert.caps if cert else base.caps,
        )
        self._set(peer, "birth" if birth else "heartbeat", force_save=birth)

    def _on_death(self, dev: str, session: int, reason: str) -> None:
        known = self._peers.get(dev)
        if known is not None and session < known.session:
            self.ignored["stale_death"] += 1
            log.info("ignored a stale death of %s (session %d < %d)", dev, session,
                     known.session)
            return
        now = self._now_ms()
        state = LEFT if reason == "shutdown" else DEAD
        self._heard.pop(dev, None)
        base = known or Peer(dev, state, session, now, now)
        if known is not None and known.state == state and known.session == session:
            return  # the retained death again, after a resubscribe
        self._set(base.with_(state=state, session=session), "death: " + reason)

    def _on_relay(self, env: Envelope, message: Message) -> None:
        if env.src == self._me:
            return  # this device's own gateway lists its lite devices first-hand
        try:
            params = self.topics.parse(message.topic).params
        except TopicInvalid:
            params = {}
        cert = self.channel.trust.certificate(env.src)
        if cert is None or GATEWAY_CAP not in cert.caps:
            self.ignored["not_gateway"] += 1
            log.warning("dropped a lite relay on %s from %s: its certificate lacks the %r "
                        "capability (enroll gateways with --cap %s)", message.topic, env.src,
                        GATEWAY_CAP, GATEWAY_CAP)
            return
        try:
            relayed = RelayedPeer.from_relay(env.body)
            if env.kind != "state" or env.src != params.get("dev") or \
                    env.src != relayed.via or relayed.device_id != params.get("lite"):
                raise ValueError(f"a {env.kind} about {relayed.device_id!r} via "
                                 f"{relayed.via!r} does not belong on {message.topic}")
        except ValueError as exc:
            self.ignored["bad_relay"] += 1
            log.warning("dropped a lite relay from %s: %s", env.src, exc)
            return
        key = (relayed.via, relayed.device_id)
        known = self._relayed.get(key)
        if known is not None and (relayed.session < known[1].session
                                  or compare_ts(env.ts, known[0]) <= 0):
            return  # older than what we hold (or the retained copy again)
        if len(self._relayed) > 65536:
            self._relayed.clear()
        self._relayed[key] = (env.ts, relayed)

    def _through_gateway(self, via: str, relayed: RelayedPeer) -> RelayedPeer:
        gateway = self.peer(via)
        if gateway is None:
            return relayed.with_(state=UNKNOWN)
        if gateway.state in REACHABLE or relayed.state in (DEAD, LEFT):
            return relayed
        return relayed.with_(state=DEAD)

    # ------------------------------------------------------------------ plumbing

    def _set(self, peer: Peer, why: str, *, force_save: bool = False) -> None:
        old = self._peers.get(peer.device_id)
        changed = old is None or old.state != peer.state or old.session != peer.session
        if changed:
            peer = peer.with_(changed_ms=self._now_ms())
        self._peers[peer.device_id] = peer
        self._unflushed.pop(peer.device_id, None)
        if changed or force_save:
            self.table.save(peer)
        if not changed:
            return
        log.info("peer %s is %s (session %d): %s", peer.device_id, peer.state, peer.session, why)
        shown = self.peer(peer.device_id)
        for listener in self._listeners:
            try:
                listener(shown or peer)
            except Exception:
                log.exception("membership listener %r failed", listener)

    def _on_connection(self, connected: bool) -> None:
        self._online = connected
        if connected:
            # Heartbeats could not reach us while we were cut off: start the clocks again.
            now = self._now_ms()
            for dev in self._heard:
                self._heard[dev] = now
            self._spawn(self._publish_markers())

    async def _publish_markers(self) -> None:
        cert = self.channel.identity.certificate.to_dict()
        for group in self._marked_groups:
            await self.channel.publish(
                self.topics.member(group, self._me), "state", {"group": group, "cert": cert},
                qos=1, retain=True,
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tick(self) -> None:
        since_flush = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            self.check_timeouts()
            since_flush += self.tick_s
            if since_flush >= self.flush_s:
                since_flush = 0.0
                self.flush()


def _rank(peer: RelayedPeer) -> tuple[bool, int]:
    return peer.state in REACHABLE, peer.changed_ms
