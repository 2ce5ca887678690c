"""A full agent as gateway for lite devices: check their MACs, follow them, command them.

Lite devices (``targets/micropython``) publish MAC'd envelopes under
``lite/<device>/``. The gateway subscribes there and admits a message only
if it is small enough, an envelope, from the device its topic names, with a
record in ``[gateway] lite_dir`` and a MAC that checks under that record's
key, and newer than the last one of that session (lite boards may have no
wall clock, so HLC order within a session, not a skew window, rules out
replays; a death, like a will, may be older). Anything else is dropped,
counted by reason (``igris status``: ``gateway.dropped``) and tallied into
the ledger with the other authentication failures.

Admitted births, heartbeats, telemetry and deaths drive :class:`LitePeers`
(shown by ``igris peers`` as ``lite``). Each change of a device's state is
relayed to the whole mesh as a signed, retained ``state`` on
``node/<gw>/lite/<dev>`` (and again every ``relay_refresh_s`` while the device
keeps speaking, so its "last seen" stays fresh); other agents' membership
believes it only because this device's certificate has the ``gateway``
capability. Signed bus commands to the gateway
reach the devices: ``lite.cmd`` (read-only: ping, status, gpio.read) and
``lite.gpio.write`` (operators and schedulers) become a MAC'd command on
``lite/<device>/cmd`` naming the device's session, and the device's MAC'd
reply comes back as the gateway's own bus reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.bus.registry import ROLES_MUTATE, Arg, CommandCall, CommandSpec
from agent.errors import CommandRefused, EnvelopeRejected, TopicInvalid
from agent.gateway.keyring import LiteKeyring
from agent.gateway.peers import LitePeer, LitePeers
from agent.gateway.topics import COMMAND, LiteTopics
from agent.identity.channel import SignedChannel
from agent.mesh.membership import GATEWAY_CAP  # what peers require of a relay's signer
from agent.mesh.peers import REACHABLE
from agent.transport.base import Message, Subscription
from agent.wire import Envelope, compare_ts, mac_envelope, parse_envelope, verify_envelope_mac

log = logging.getLogger(__name__)

MAX_LITE_BYTES = 4096
"""Lite messages are small; anything bigger is refused before parsing."""
COMMAND_TIMEOUT_S = 5.0
READ_ONLY = ("ping", "status", "gpio.read")
RELAY_REFRESH_S = 30.0
_UNPARSED = "(unparsed)"


def lite_command(src: str, key: bytes, ts: list[int], session: int, command: str,
                 args: dict[str, Any]) -> Envelope:
    """A MAC'd command for a lite device's ``session`` (what its ``cmd`` topic carries)."""
    env = Envelope(src, "cmd", {"cmd": command, "args": args, "session": session}, ts)
    return mac_envelope(env, key)


class _Seen:
    """Per device: the newest session and timestamp admitted (the replay rule)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, list[int]]] = {}

    def check(self, env: Envelope, session: int, retained: bool) -> bool:
        """True to take ``env``; False for a retained copy already taken; raises on a replay."""
        known = self._last.get(env.src)
        if known is not None and session < known[0]:
            raise EnvelopeRejected("stale_session", f"session {session} < {known[0]}")
        if env.kind == "death":
            return True  # a will is sealed at connect: older than what followed it
        if known is not None and session == known[0] and compare_ts(env.ts, known[1]) <= 0:
            if retained:
                return False
            raise EnvelopeRejected("replay", f"{env.id} is not newer than the last message")
        if len(self._last) > 65536:
            self._last.clear()
        self._last[env.src] = (session, env.ts)
        return True


class Gateway:
    """Relay lite devices into the mesh.

    >>> gw = Gateway(channel, topics, LiteKeyring(root / "lite"), now_ms=clock,
    ...              on_drop=tally.add)                       # doctest: +SKIP
    >>> for spec in gw.commands(): registry.add(spec)         # doctest: +SKIP
    >>> await gw.start()                                      # doctest: +SKIP
    """

    def __init__(
        self,
        channel: SignedChannel,
        topics: LiteTopics,
        keyring: LiteKeyring,
        *,
        now_ms: Callable[[], int],
        on_drop: Callable[[str, str], None] | None = None,
        max_bytes: int = MAX_LITE_BYTES,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        tick_s: float = 1.0,
        relay_refresh_s: float = RELAY_REFRESH_S,
    ):
        self.channel = channel
        self.topics = topics
        self.keyring = keyring
        self.max_bytes = max_bytes
        self.command_timeout_s = command_timeout_s
        self.tick_s = tick_s
        self.relay_refresh_s = relay_refresh_s
        self._on_drop = on_drop
        self._now_ms = now_ms
        self._me = channel.identity.device_id
        self.peers = LitePeers(self._me, now_ms, on_change=self._relay_peer)
        self._relayed_ms: dict[str, int] = {}  # device -> when its relay was last sent
        self._relays: set[asyncio.Task[None]] = set()
        self.relays_sent = 0
        self._seen = _Seen()
        self._pending: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._subs: list[Subscription] = []
        self._ticker: asyncio.Task[None] | None = None
        self.accepted = 0
        self.dropped: Counter[str] = Counter()
        self.commands_sent = 0
        self.command_timeouts = 0

    async def start(self) -> None:
        if GATEWAY_CAP not in self.channel.identity.certificate.caps:
            log.warning("this gateway's certificate lacks the %r capability: other agents "
                        "will drop its lite relays; enroll it again with --cap %s",
                        GATEWAY_CAP, GATEWAY_CAP)
        transport = self.channel.transport
        self._subs = [await transport.subscribe(f, self._on_message, qos=1)
                      for f in self.topics.uplink_filters()]
        self._ticker = asyncio.create_task(self._tick(), name="igris.gateway.tick")

    async def stop(self) -> None:
        for sub in self._subs:
            sub.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for _dev, future in self._pending.values():
            future.cancel()
        for task in self._relays:  # not sent by now: the broker may be gone
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"lite_dir": str(self.keyring.directory), "enrolled": len(self.keyring.enrolled()),
                "peers": self.peers.counts(), "accepted": self.accepted,
                "dropped": dict(self.dropped), "bad_records": self.keyring.bad_records,
                "relays_sent": self.relays_sent,
                "commands": {"sent": self.commands_sent, "timeouts": self.command_timeouts,
                             "waiting": len(self._pending)}}

    # ------------------------------------------------------------------ uplink

    def _on_message(self, message: Message) -> None:
        source = _UNPARSED
        try:
            device, leaf = self.topics.parse(message.topic)
            env = parse_envelope(message.payload, self.max_bytes)
            source = env.src
            session = self._admit(env, device)
            if not self._seen.check(env, session, message.retain):
                return
        except (EnvelopeRejected, TopicInvalid) as exc:
            reason = exc.reason if isinstance(exc, EnvelopeRejected) else "wrong_topic"
            self.dropped[reason] += 1
            log.warning("dropped lite message on %s: %s", message.topic, exc)
            if self._on_drop is not None:
                self._on_drop(reason, source)
            return
        self.accepted += 1
        self._deliver(env, leaf, session)

    def _admit(self, env: Envelope, device: str) -> int:
        if env.src != device:
            raise EnvelopeRejected("wrong_topic", f"{env.src!r} on {device!r}'s topic")
        key = self.keyring.key(device)
        if key is None:
            raise EnvelopeRejected("unknown_device", f"no lite record for {device!r} in "
                                   f"{self.keyring.directory}; run 'igris enroll --lite'")
        verify_envelope_mac(env, key)
        session = env.body.get("session")
        if type(session) is not int or session < 0:
            raise EnvelopeRejected("not_envelope", "body has no session number")
        return session

    def _deliver(self, env: Envelope, leaf: str, session: int) -> None:
        body = env.body
        if leaf == "state" and env.kind == "death":
            self.peers.death(env.src, session, str(body.get("reason", "lost")))
        elif leaf in ("state", "hb") and env.kind == "state":
            self.peers.alive(env.src, session, body, birth=leaf == "state")
        elif leaf == "tele" and env.kind == "tele":
            self.peers.telemetry(env.src, session, body.get("values"))
        elif leaf == "reply" and env.kind == "reply":
            waiting = self._pending.get(str(body.get("re")))
            if waiting is not None and waiting[0] == env.src and not waiting[1].done():
                waiting[1].set_result(body)
        else:
            self.peers.ignored["wrong_kind"] += 1

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.peers.check_timeouts()
            self.refresh_relays()

    # ------------------------------------------------------------------ relays to the mesh

    def refresh_relays(self) -> None:
        """Relay again each device heard since its last relay, once ``relay_refresh_s`` passed."""
        now = self._now_ms()
        for peer in self.peers.peers():
            sent = self._relayed_ms.get(peer.device_id, 0)
            if peer.last_seen_ms > sent and now - sent >= self.relay_refresh_s * 1000:
                self._relay_peer(peer)

    def _relay_peer(self, peer: LitePeer) -> None:
        self._relayed_ms[peer.device_id] = self._now_ms()
        body = {**peer.relay_body(), "cert": self.channel.identity.certificate.to_dict()}
        task = asyncio.get_running_loop().create_task(
            self._publish_relay(peer.device_id, body), name="igris.gateway.relay")
        self._relays.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._relays.discard)

    async def _publish_relay(self, device: str, body: dict[str, Any]) -> None:
        try:
            await self.channel.publish(self.topics.relay(self._me, device), "state",
                                       body, qos=1, retain=True)
            self.relays_sent += 1
        except Exception:
            log.exception("relay of lite device %s not sent", device)

    # ------------------------------------------------------------------ commands

    async def send(self, device: str, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """MAC a command to ``device`` and wait for its reply (``{"ok": ..., ...}``)."""
        peer = self.peers.get(device)
        if peer is None or peer.state not in REACHABLE:
            state = peer.state if peer is not None else "unknown to this gateway"
            raise CommandRefused("unreachable", f"lite device {device!r} is {state}")
        key = self.keyring.key(device)
        if key is None:
            raise CommandRefused("unknown_device", f"no lite record for {device!r}")
        env = lite_command(self._me, key, self.channel.hlc.now(), peer.session, command, args)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[env.id] = (device, future)
        try:
            await self.channel.transport.publish(self.topics.topic(device, COMMAND),
                                                 env.encode(), qos=1)
            self.commands_sent += 1
            return await asyncio.wait_for(future, self.command_timeout_s)
        except asyncio.TimeoutError:
            self.command_timeouts += 1
            raise CommandRefused("timeout", f"lite device {device!r} did not answer {command} "
                                 f"in {self.command_timeout_s:g} s") from None
        finally:
            self._pending.pop(env.id, None)

    async def _relay(self, device: str, command: str, args: dict[str, Any]) -> Any:
        reply = await self.send(device, command, args)
        if reply.get("ok") is not True:
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            raise CommandRefused(str(error.get("code", "failed")),
                                 f"{device}: {error.get('message', 'no reason given')}")
        return reply.get("result")

    def commands(self) -> list[CommandSpec]:
        """The bus commands that reach lite devices through this gateway."""
        timeout = self.command_timeout_s + 1

        async def lite_cmd(call: CommandCall) -> Any:
            return await self._relay(call.args["device"], call.args["cmd"], call.args["args"])

        async def lite_write(call: CommandCall) -> Any:
            return await self._relay(call.args["device"], "gpio.write",
                                     {"pin": call.args["pin"], "value": call.args["value"]})

        async def lite_peers(_call: CommandCall) -> list[dict[str, Any]]:
            return [peer.to_dict() for peer in self.peers.peers()]

        device = Arg(str, help="the lite device's id")
        return [
            CommandSpec("lite.cmd", lite_cmd, "a read-only command on a lite device via this "
                        "gateway", {"device": device, "cmd": Arg(str, choices=READ_ONLY),
                                    "args": Arg(dict, required=False, default={})},
                        timeout_s=timeout),
            CommandSpec("lite.gpio.write", lite_write, "drive a pin a lite device's config "
                        "lets be written", {"device": device, "pin": Arg(str),
                                            "value": Arg(int, choices=(0, 1))},
                        mutates=True, roles=ROLES_MUTATE, timeout_s=timeout),
            CommandSpec("lite.peers", lite_peers, "the lite devices this gateway follows"),
        ]
