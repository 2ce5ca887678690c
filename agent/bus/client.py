"""The caller's side of the command bus: fan a signed command out, gather the replies.

``await bus.request(target, command, args, timeout=5, mode="all")`` where
target is a device id, ``group:<name>`` or ``all``. Who should answer comes
from membership, so a request returns as soon as its mode is satisfied or
nobody it still waits for can answer, not at its timeout; devices that are
known dead, gone or blocked are reported missing at once, with the reason.

Modes: ``all`` (every expected device answers ok), ``quorum:N`` (N ok
answers), ``first`` (the first answer, whatever it says), ``any`` (the first
ok answer).

Each request gets its own reply topic ``reply/<me>/<request>`` (also the
MQTT 5 response topic, with the request as correlation data), so replies
are matched by topic, and a late reply to a finished request is simply
dropped. A reply must also name the command envelope it answers (``re``).

Requests ask for MACed replies (``reply_mac``): each device answers with
HMAC-SHA256 under the key it shares with this caller instead of a
signature, which the gate checks (docs/bus.md, "Replies").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.compat import b64url_encode, random_bytes
from agent.errors import CommandError, CommandFailed, TopicInvalid
from agent.identity.channel import SignedChannel
from agent.transport.base import Message
from agent.wire import Envelope, Topics, check_name

log = logging.getLogger(__name__)

_REACHABLE = ("alive", "suspect")


class PeerView(Protocol):
    """What the bus reads of a peer (the mesh's ``Peer``)."""

    @property
    def device_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...


class PeerSource(Protocol):
    """Where the expected set comes from (the mesh's ``Membership``)."""

    def peers(self) -> Sequence[PeerView]: ...
    def peer(self, device_id: str) -> PeerView | None: ...
    def add_listener(self, listener: Callable[[Any], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """One device's answer."""

    device: str
    ok: bool
    result: Any
    error: dict[str, Any] | None
    ms: float  # since the request was sent

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "ok": self.ok, "result": self.result,
                "error": self.error, "ms": round(self.ms, 2)}


@dataclass(slots=True)
class RequestResult:
    """What came back: replies, the devices missing and why, and whether the mode is met."""

    id: str
    target: str
    command: str
    mode: str
    expected: list[str]
    replies: dict[str, Reply] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # device -> dead|left|blocked|timeout
    complete: bool = False
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "target": self.target, "command": self.command, "mode": self.mode,
            "complete": self.complete, "elapsed_ms": round(self.elapsed_ms, 2),
            "expected": self.expected,
            "replies": {d: r.to_dict() for d, r in sorted(self.replies.items())},
            "missing": dict(sorted(self.missing.items())),
        }


def parse_mode(mode: str) -> tuple[str, int]:
    """``"quorum:3"`` → ``("quorum", 3)``; raises CommandError for anything else."""
    if mode in ("all", "first", "any"):
        return mode, 0
    if mode.startswith("quorum:"):
        try:
            n = int(mode[7:])
        except ValueError:
            n = 0
        if n >= 1:
            return "quorum", n
    raise CommandError(f"mode {mode!r}: expected one of all, first, any, quorum:N (N >= 1)")


class _Pending:
    """A request in flight."""

    def __init__(self, result: RequestResult, mode: str, quorum: int, waiting: set[str],
                 started: float, on_reply: Callable[[Reply], None] | None):
        self.result = result
        self.mode = mode
        self.quorum = quorum
        self.waiting = waiting
        self.started = started
        self.on_reply = on_reply
        self.oks = 0  # ok replies so far: counted as they come, not per reply (K^2 on fan-out)
        self.command_id = ""  # the id of the command envelope sent: replies name it in "re"
        self.done = asyncio.get_running_loop().create_future()

    def add(self, reply: Reply) -> None:
        """Take one device's reply (a repeat replaces its earlier one)."""
        r = self.result
        earlier = r.replies.get(reply.device)
        self.oks += reply.ok - (earlier is not None and earlier.ok)
        r.replies[reply.device] = reply
        self.waiting.discard(reply.device)
        r.missing.pop(reply.device, None)
        if not reply.ok:
            code = (reply.error or {}).get("code", "error")
            r.missing[reply.device] = f"refused: {code}"

    def check(self) -> None:
        r = self.result
        oks = self.oks
        if self.mode == "all":
            r.complete = not self.waiting and not r.missing and oks == len(r.replies)
        elif self.mode == "quorum":
            r.complete = oks >= self.quorum
        elif self.mode == "first":
            r.complete = bool(r.replies)
        else:
            r.complete = oks >= 1
        if (r.complete or not self.waiting) and not self.done.done():
            self.done.set_result(None)


class Bus:
    """Send commands and aggregate replies.

    >>> bus = Bus(channel, topics, membership=membership, serves_commands=True)  # doctest: +SKIP
    >>> await bus.start()                                                       # doctest: +SKIP
    >>> result = await bus.request("group:kitchen", "ping", timeout=2)          # doctest: +SKIP
    """

    def __init__(
        self,
        channel: SignedChannel,
        topics: Topics,
        *,
        membership: PeerSource | None,
        serves_commands: bool,
    ):
        self.channel = channel
        self.topics = topics
        self.membership = membership
        self.serves_commands = serves_commands  # this device answers its own fan-outs
        self._me = channel.identity.device_id
        self._pending: dict[str, _Pending] = {}
        self.late_replies = 0

    async def start(self) -> None:
        await self.channel.subscribe(self.topics.filter("reply", self._me, "+"), self._on_reply)
        if self.membership is not None:
            self.membership.add_listener(self._on_peer)

    async def stop(self) -> None:
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.cancel()

    def expected(self, target: str) -> tuple[list[str], dict[str, str]]:
        """Who should answer ``target`` (device, ``group:<g>``, ``all``), and who cannot."""
        me = self.channel.identity.certificate
        if target == "all":
            peers = self._peers()
            include_me = self.serves_commands
        elif target.startswith("group:"):
            group = check_name(target[6:], "group")
            peers = [p for p in self._peers() if group in p.groups]
            include_me = self.serves_commands and group in me.groups
        else:
            check_name(target, "device id")
            known = self.membership.peer(target) if self.membership else None
            if target == self._me:
                return ([self._me] if self.serves_commands else []), {}
            return [target], ({} if known is None or known.state in _REACHABLE
                              else {target: known.state})
        expected = sorted({p.device_id for p in peers} | ({self._me} if include_me else set()))
        missing = {p.device_id: p.state for p in peers if p.state not in _REACHABLE}
        return expected, missing

    async def request(
        self,
        target: str,
        command: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float = 5.0,
        mode: str = "all",
        on_reply: Callable[[Reply], None] | None = None,
    ) -> RequestResult:
        """Send ``command`` to ``target`` and wait for what ``mode`` asks (or ``timeout``)."""
        kind, quorum = parse_mode(mode)
        topic = self._topic(target)
        expected, missing = self.expected(target)
        loop = asyncio.get_running_loop()
        rid = b64url_encode(random_bytes(12))
        reply_to = self.topics.reply(self._me, rid)
        result = RequestResult(rid, target, command, mode, expected, missing=dict(missing))
        pending = _Pending(result, kind, quorum, set(expected) - set(missing), loop.time(),
                           on_reply)
        self._pending[rid] = pending
        try:
            now = self.channel.hlc.now()[0]
            body = {"cmd": command, "args": args or {}, "reply_to": reply_to,
                    "deadline_ms": now + int(timeout * 1000),
                    "cert": self.channel.identity.certificate.to_dict(),
                    "reply_mac": True}
            sent = await self.channel.publish(topic, "cmd", body, qos=1, response_topic=reply_to,
                                              correlation_data=rid.encode())
            pending.command_id = sent.id
            if not pending.waiting and expected:
                pending.check()
            try:
                await asyncio.wait_for(asyncio.shield(pending.done), timeout)
            except asyncio.TimeoutError:
                for device in pending.waiting:
                    result.missing[device] = "timeout"
                pending.waiting.clear()
                pending.check()
        finally:
            self._pending.pop(rid, None)
        result.elapsed_ms = (loop.time() - pending.started) * 1000
        return result

    async def request_one(self, device: str, command: str, args: dict[str, Any] | None = None,
                          *, timeout: float = 5.0) -> Any:
        """``command`` on one device: its result, or :class:`CommandFailed` saying why not
        (the reply's error code, or ``timeout``/``dead``/... when none came)."""
        result = await self.request(device, command, args, timeout=timeout, mode="first")
        reply = result.replies.get(device)
        if reply is None:
            raise CommandFailed(result.missing.get(device, "timeout"),
                                f"{command} to {device}: no reply")
        if not reply.ok:
            error = reply.error or {}
            raise CommandFailed(str(error.get("code", "error")),
                                f"{command} on {device}: {error.get('message', '')}")
        return reply.result

    def _topic(self, target: str) -> str:
        if target == "all":
            return self.topics.cmd_all()
        if target.startswith("group:"):
            return self.topics.cmd_group(target[6:])
        return self.topics.cmd(target)

    def _peers(self) -> Sequence[PeerView]:
        return self.membership.peers() if self.membership is not None else []

    def _on_reply(self, env: Envelope, message: Message) -> None:
        try:
            rid = self.topics.parse(message.topic).params["request"]
        except (TopicInvalid, KeyError):
            return
        pending = self._pending.get(rid)
        body = env.body
        # The reply must name our command, and its sender itself: the topic and the
        # correlation data are not signed, so a broker could move a reply between
        # requests; "re" is.
        if pending is None or env.kind != "reply" or body.get("device") != env.src \
                or body.get("re") != pending.command_id:
            self.late_replies += 1
            return
        reply = Reply(env.src, body.get("ok") is True, body.get("result"),
                      body.get("error") if isinstance(body.get("error"), dict) else None,
                      (asyncio.get_running_loop().time() - pending.started) * 1000)
        pending.add(reply)
        if pending.on_reply is not None:
            pending.on_reply(reply)
        pending.check()

    def _on_peer(self, peer: PeerView) -> None:
        # A device we wait for died (or left, or was blocked) mid-request: stop waiting.
        if peer.state in _REACHABLE:
            return
        for pending in self._pending.values():
            if peer.device_id in pending.waiting:
                pending.waiting.discard(peer.device_id)
                pending.result.missing[peer.device_id] = peer.state
                pending.check()
