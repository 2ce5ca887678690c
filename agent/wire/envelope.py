"""The envelope every Igris message travels in (ARCHITECTURE.md, "Wire format").

``{"v":1,"id":..,"src":..,"ts":[wall_ms,counter],"kind":..,"body":{..},"sig":..}``

Signing and verifying are hooks (callables), so this module stays portable:
full agents plug in Ed25519 (PyNaCl), lite agents HMAC-SHA256 under a
per-device key (``"mac"`` instead of ``"sig"``). Every way an envelope can be
refused raises :class:`EnvelopeRejected` with a short ``reason`` that
receivers count.
"""

import json

from agent.compat import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    digests_equal,
    hmac_sha256,
    random_bytes,
)
from agent.errors import EnvelopeRejected

VERSION = 1
KINDS = ("state", "death", "cmd", "reply", "policy", "ledger", "block", "mem", "tele")
MAX_BYTES = 65536
ID_BYTES = 16

# Reasons an envelope is refused; receivers count drops under these names.
OVERSIZE = "oversize"
NOT_JSON = "not_json"
NOT_ENVELOPE = "not_envelope"
BAD_VERSION = "bad_version"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_KEY = "unknown_key"
BLOCKED = "blocked"
EXPIRED = "expired"
CLOCK_SKEW = "clock_skew"
REPLAY = "replay"

_FIELDS = ("v", "id", "src", "ts", "kind", "body")


class Envelope:
    """One message: who sent it, when (HLC), what kind, and its body."""

    __slots__ = ("body", "id", "kind", "mac", "sig", "src", "ts", "v")

    def __init__(self, src, kind, body, ts, id=None, v=VERSION, sig=None, mac=None):
        self.v = v
        self.id = id if id is not None else b64url_encode(random_bytes(ID_BYTES))
        self.src = src
        self.ts = [int(ts[0]), int(ts[1])]
        self.kind = kind
        self.body = body
        self.sig = sig
        self.mac = mac

    def unsigned_dict(self) -> dict:
        return {
            "v": self.v, "id": self.id, "src": self.src, "ts": self.ts,
            "kind": self.kind, "body": self.body,
        }

    def signing_bytes(self) -> bytes:
        """The canonical JSON of every field but ``sig``/``mac``: what gets signed."""
        return canonical_json(self.unsigned_dict())

    def to_dict(self) -> dict:
        d = self.unsigned_dict()
        if self.sig is not None:
            d["sig"] = self.sig
        if self.mac is not None:
            d["mac"] = self.mac
        return d

    def encode(self) -> bytes:
        """Wire bytes (canonical JSON, so the same envelope is always the same bytes)."""
        return canonical_json(self.to_dict())

    def __repr__(self):
        return "Envelope(%s from %r id=%s ts=%r)" % (self.kind, self.src, self.id, self.ts)


def sign_envelope(env: Envelope, sign) -> Envelope:
    """Set ``env.sig`` from ``sign(message_bytes) -> signature_bytes``."""
    env.sig = b64url_encode(sign(env.signing_bytes()))
    return env


def verify_envelope(env: Envelope, verify) -> Envelope:
    """Check ``env.sig`` with ``verify(message_bytes, signature_bytes) -> bool``."""
    if env.sig is None:
        raise EnvelopeRejected(UNSIGNED, "no sig from " + repr(env.src))
    try:
        sig = b64url_decode(env.sig)
    except ValueError:
        raise EnvelopeRejected(BAD_SIGNATURE, "sig is not base64url") from None
    if not verify(env.signing_bytes(), sig):
        raise EnvelopeRejected(BAD_SIGNATURE, "signature does not match " + repr(env.src))
    return env


def mac_envelope(env: Envelope, key: bytes) -> Envelope:
    """Set ``env.mac``: HMAC-SHA256 under a lite device's key."""
    env.mac = b64url_encode(hmac_sha256(key, env.signing_bytes()))
    return env


def verify_envelope_mac(env: Envelope, key: bytes) -> Envelope:
    """Check ``env.mac`` under ``key`` (lite devices and their gateway)."""
    if env.mac is None:
        raise EnvelopeRejected(UNSIGNED, "no mac from " + repr(env.src))
    try:
        mac = b64url_decode(env.mac)
    except ValueError:
        raise EnvelopeRejected(BAD_SIGNATURE, "mac is not base64url") from None
    if not digests_equal(mac, hmac_sha256(key, env.signing_bytes())):
        raise EnvelopeRejected(BAD_SIGNATURE, "mac does not match " + repr(env.src))
    return env


def check_skew(env: Envelope, now_ms: int, window_ms: int) -> Envelope:
    """Refuse an envelope whose wall time is more than ``window_ms`` from ours."""
    if abs(env.ts[0] - now_ms) > window_ms:
        raise EnvelopeRejected(
            CLOCK_SKEW, "ts %d is %d ms from now" % (env.ts[0], env.ts[0] - now_ms)
        )
    return env


def _require(cond, what):
    if not cond:
        raise EnvelopeRejected(NOT_ENVELOPE, what)


def parse_envelope(data, max_bytes: int = MAX_BYTES) -> Envelope:
    """Bytes from the wire to an :class:`Envelope` (signature not yet checked)."""
    if len(data) > max_bytes:
        raise EnvelopeRejected(OVERSIZE, "%d bytes > %d" % (len(data), max_bytes))
    try:
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("utf-8")
        d = json.loads(data)
    except (ValueError, UnicodeError) as exc:
        raise EnvelopeRejected(NOT_JSON, str(exc)[:80]) from None
    _require(isinstance(d, dict), "not a JSON object")
    for name in _FIELDS:
        _require(name in d, "missing " + repr(name))
    for name in d:
        _require(name in _FIELDS or name in ("sig", "mac"), "unknown field " + repr(name))
    if d["v"] != VERSION:
        raise EnvelopeRejected(BAD_VERSION, repr(d["v"]))
    _require(isinstance(d["id"], str) and 0 < len(d["id"]) <= 64, "bad id")
    _require(isinstance(d["src"], str) and 0 < len(d["src"]) <= 64, "bad src")
    ts = d["ts"]
    _require(
        isinstance(ts, list) and len(ts) == 2
        and type(ts[0]) is int and type(ts[1]) is int and ts[0] >= 0 and ts[1] >= 0,
        "ts must be [wall_ms, counter]",
    )
    _require(d["kind"] in KINDS, "unknown kind " + repr(d["kind"]))
    _require(isinstance(d["body"], dict), "body must be an object")
    for name in ("sig", "mac"):
        _require(d.get(name) is None or isinstance(d[name], str), name + " must be a string")
    return Envelope(
        d["src"], d["kind"], d["body"], ts, id=d["id"], v=d["v"],
        sig=d.get("sig"), mac=d.get("mac"),
    )
