"""Signed messaging over a transport: sign what goes out, gate what comes in.

Components publish and subscribe through a :class:`SignedChannel` and deal in
verified :class:`~agent.wire.Envelope` objects only. The gate drops, counts
and logs (never raises to the transport) anything that is over the size
limit, not an envelope, unsigned or wrongly signed, from an unknown,
expired or blocklisted key, outside the clock-skew window, or a replay.

One exception to "signed": a ``reply`` may carry a ``mac`` instead, HMAC-SHA256
under the key its sender shares with this device (:meth:`Identity.pair_key`);
the bus's requests ask for those (docs/bus.md). The sender must still be
trusted; any other kind with a ``mac`` is dropped as unsigned.

A ``"cert"`` field in any envelope's body is checked against the trusted
CAs and teaches the receiver the sender's key; the sender's key must still
be trusted (not blocklisted, not expired, its CA not retired) when the
signature is checked.

Retained state and will-deaths are old by nature (a will is signed when the
session starts and sent whenever the device vanishes), so they skip the skew
window and the replay guard; session numbers and HLC order them instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import nacl.bindings
import nacl.exceptions

from agent.compat import hmac_sha256
from agent.errors import CertificateInvalid, EnvelopeRejected
from agent.identity.certificate import Certificate
from agent.identity.identity import Identity
from agent.identity.trust import TrustStore
from agent.transport.base import Message, Subscription, Transport
from agent.wire import (
    MAX_BYTES,
    Envelope,
    HybridClock,
    ReplayGuard,
    check_skew,
    parse_envelope,
    verify_envelope,
)
from agent.wire.envelope import fresh_ids, seal_envelope, verify_envelope_mac

log = logging.getLogger(__name__)

SIGNATURE_BYTES = 64
UNPARSED = "(unparsed)"  # the source of a drop that was not even an envelope
EnvelopeHandler = Callable[[Envelope, Message], None]


class SignedChannel:
    """Sign-and-publish and verify-and-deliver over one transport."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        trust: TrustStore,
        *,
        hlc: HybridClock,
        now_ms: Callable[[], int],
        max_bytes: int = MAX_BYTES,
        skew_ms: int = 300_000,
    ):
        self.transport = transport
        self.identity = identity
        self.trust = trust
        self.hlc = hlc
        self._now_ms = now_ms
        self.max_bytes = max_bytes
        self.skew_ms = skew_ms
        self.replay = ReplayGuard(horizon_ms=2 * skew_ms)
        self.accepted = 0
        self.dropped: Counter[str] = Counter()
        # ``on_drop(reason, claimed source)`` for each drop: the runtime tallies
        # them into the ledger (the source is unverified: it is what was claimed).
        self.on_drop: Callable[[str, str], None] | None = None
        self._checkers: dict[bytes, Callable[[bytes, bytes], bool]] = {}  # by verify key
        self._seen_certs: dict[str, tuple[dict, Certificate]] = {}  # by sender
        self._pair_keys: dict[bytes, bytes] = {}  # by the peer's box key
        trust.learn(identity.certificate)
        # Read once: sealing is on every message's path.
        self._src = identity.device_id
        self._sign = identity.sign
        self._ids = fresh_ids()

    def seal(self, kind: str, body: dict, *, mac_for: str | None = None) -> Envelope:
        """A new envelope from this device, stamped and signed.

        With ``mac_for`` (a reply only) it is MACed instead, under the key this
        device shares with that peer (:meth:`Identity.pair_key`); signed after
        all when the peer's certificate is not known here.
        """
        if mac_for is not None:
            if kind != "reply":
                raise ValueError(f"only replies may carry a MAC, not {kind!r}")
            cert = self.trust.certificate(mac_for)
            if cert is not None:
                key = self._pair_key(cert.box_key)
                return seal_envelope(self._src, kind, body, self.hlc.now(), next(self._ids),
                                     lambda message: hmac_sha256(key, message), auth="mac")
        return seal_envelope(self._src, kind, body, self.hlc.now(), next(self._ids), self._sign)

    async def publish(
        self,
        topic: str,
        kind: str,
        body: dict,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        mac_for: str | None = None,
    ) -> Envelope:
        """Seal ``body`` (see :meth:`seal`) and publish it; returns the envelope sent."""
        return self.publish_nowait(topic, kind, body, qos=qos, retain=retain,
                                   response_topic=response_topic,
                                   correlation_data=correlation_data, mac_for=mac_for)

    def publish_nowait(
        self,
        topic: str,
        kind: str,
        body: dict,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        mac_for: str | None = None,
    ) -> Envelope:
        """:meth:`publish` from synchronous code (see ``Transport.publish_nowait``)."""
        env = self.seal(kind, body, mac_for=mac_for)
        self.transport.publish_nowait(
            topic, env.encode(), qos=qos, retain=retain,
            response_topic=response_topic, correlation_data=correlation_data,
        )
        return env

    async def subscribe(
        self, topic_filter: str, handler: EnvelopeHandler, *, qos: int = 1
    ) -> Subscription:
        """Deliver verified envelopes on ``topic_filter`` to ``handler(env, message)``."""

        def gated(message: Message) -> None:
            env = self.admit(message)
            if env is not None:
                handler(env, message)

        return await self.transport.subscribe(topic_filter, gated, qos=qos)

    def admit(self, message: Message) -> Envelope | None:
        """The verified envelope in ``message``, or None (dropped and counted)."""
        source = UNPARSED
        try:
            env = parse_envelope(message.payload, self.max_bytes)
            source = env.src
            self._check(env, message)
        except EnvelopeRejected as exc:
            self.dropped[exc.reason] += 1
            log.warning("dropped message on %s: %s", message.topic, exc)
            if self.on_drop is not None:
                self.on_drop(exc.reason, source)
            return None
        self.accepted += 1
        return env

    def _check(self, env: Envelope, message: Message) -> None:
        # Births carry the sender's certificate, and so do operators' policy and
        # block messages, so a device that never saw the operator's birth can
        # still verify them. Whatever the kind, it must be the sender's own.
        cert = env.body.get("cert")
        if cert is not None:
            self._learn(env.src, cert)
        key = self.trust.verify_key(env.src)  # known, not blocked, not expired
        if env.sig is None and env.mac is not None and env.kind == "reply":
            # A reply MACed for us: only its sender and we hold the key.
            verify_envelope_mac(env, self._pair_key(self.trust.certificate(env.src).box_key))
        else:
            check = self._checkers.get(key)
            if check is None:
                if len(self._checkers) > 4096:
                    self._checkers.clear()
                check = self._checkers[key] = _ed25519_check(key)
            verify_envelope(env, check)
        if not message.retain and env.kind != "death":
            now = self._now_ms()
            check_skew(env, now, self.skew_ms)
            self.replay.check(env.src, env.id, now)
            # Only timestamps inside the skew window may move our clock: an old
            # retained message with a far-future stamp would drag it for good.
            self.hlc.observe(env.ts)

    def _pair_key(self, box_key: bytes) -> bytes:
        # One X25519 per peer (about 30 us, less than one signature check), then
        # an HMAC per reply.
        key = self._pair_keys.get(box_key)
        if key is None:
            if len(self._pair_keys) > 4096:
                self._pair_keys.clear()
            key = self._pair_keys[box_key] = self.identity.pair_key(box_key)
        return key

    def _learn(self, src: str, cert: object) -> None:
        # An operator's every command carries the same certificate: when it is
        # the very one we learned last from this sender and the trust store
        # still holds what that gave, learning it again would change nothing
        # (it would parse it only to find the signature it already has).
        seen = self._seen_certs.get(src)
        if seen is not None and seen[0] == cert and self.trust.certificate(src) is seen[1]:
            return
        if not isinstance(cert, dict):
            raise EnvelopeRejected("bad_certificate", "'cert' must be a JSON object")
        try:
            learned = self.trust.learn(cert)
        except CertificateInvalid as exc:
            raise EnvelopeRejected("bad_certificate", str(exc)) from None
        if learned.subject != src:
            raise EnvelopeRejected("bad_certificate", f"certificate is not {src!r}'s")
        if len(self._seen_certs) > 4096:
            self._seen_certs.clear()
        self._seen_certs[src] = (cert, learned)


def _ed25519_check(public_key: bytes) -> Callable[[bytes, bytes], bool]:
    """Adapt an Ed25519 public key to the wire layer's ``verify(msg, sig) -> bool`` hook."""

    def check(message: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + message, public_key)
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    return check
