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

    __slots__ = ("_signing", "_split", "body", "id", "kind", "mac", "sig", "src", "ts", "v")

    def __init__(self, src, kind, body, ts, id=None, v=VERSION, sig=None, mac=None):
        self.v = v
        self.id = id if id is not None else b64url_encode(random_bytes(ID_BYTES))
        self.src = src
        self.ts = [int(ts[0]), int(ts[1])]
        self.kind = kind
        self.body = body
        self.sig = sig
        self.mac = mac
        # The bytes signed or parsed: an envelope is not edited once it has been
        # signed or received, so encode() and verification reuse them.
        self._signing = None
        self._split = -1  # where ``,"src":`` starts in _signing, when known

    def unsigned_dict(self) -> dict:
        return {
            "v": self.v, "id": self.id, "src": self.src, "ts": self.ts,
            "kind": self.kind, "body": self.body,
        }

    def signing_bytes(self) -> bytes:
        """The canonical JSON of every field but ``sig``/``mac``: what gets signed."""
        if self._signing is not None:
            return self._signing
        if type(self.v) is int and _plain(self.id) and _plain(self.kind) and _plain(self.src):
            # What we send: the same bytes canonical_json() gives (keys in sorted
            # order, nothing to escape), built around the body's encoding, and
            # with the place a sig goes already known. A quarter of the cost of
            # sealing is the JSON; this saves the outer object's share of it.
            head = (b'{"body":' + canonical_json(self.body) + b',"id":"' + self.id.encode()
                    + b'","kind":"' + self.kind.encode() + b'"')
            self._split = len(head)
            return head + (b',"src":"' + self.src.encode() + b'","ts":[' + str(self.ts[0]).encode()
                           + b"," + str(self.ts[1]).encode() + b'],"v":' + str(self.v).encode()
                           + b"}")
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
        unsigned = self.signing_bytes()
        return _wire_form(unsigned, self.sig, self.mac, self._split)

    def __repr__(self):
        return "Envelope(%s from %r id=%s ts=%r)" % (self.kind, self.src, self.id, self.ts)


# Top-level keys sort as body, id, kind, mac, sig, src, ts, v, so ``mac`` and
# ``sig`` sit just before ``,"src":``. That is the last occurrence of that
# text in canonical bytes: only src's string value (where a bare quote cannot
# occur), ts and v follow it. So the signed bytes and the wire bytes differ
# by one slice, and neither side has to encode twice.
_SRC_KEY = b',"src":'
_PLAIN_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PLAIN_NAME = _PLAIN_B64 + "."  # device ids, kinds and ids: JSON needs no escapes


def _auth_fields(sig, mac) -> bytes:
    out = b""
    for name, value in ((b"mac", mac), (b"sig", sig)):
        if value is None:
            continue
        if value.strip(_PLAIN_B64):  # not plain base64url: let the encoder escape it
            out += b',"' + name + b'":' + canonical_json(value)
        else:
            out += b',"' + name + b'":"' + value.encode() + b'"'
    return out


def _plain(text) -> bool:
    """A string JSON writes as is: our names, ids and kinds (see _PLAIN_NAME)."""
    return type(text) is str and not text.strip(_PLAIN_NAME)


def _wire_form(unsigned: bytes, sig, mac, split=-1) -> bytes:
    """The canonical bytes of a whole envelope from those of its unsigned part."""
    extra = _auth_fields(sig, mac)
    if not extra:
        return unsigned
    i = split if split >= 0 else unsigned.rfind(_SRC_KEY)
    return unsigned[:i] + extra + unsigned[i:]


def _unsigned_form(data: bytes, sig, mac) -> bytes:
    """The bytes a sender signed, cut out of the received wire bytes.

    Refuses (``not_json``) a sig or mac that is not where canonical JSON puts
    it. Any other departure from canonical bytes changes the signed bytes, so
    the signature check refuses it: the receiver never encodes anything.
    """
    extra = _auth_fields(sig, mac)
    if not extra:
        return data
    i = data.rfind(_SRC_KEY)
    start = i - len(extra)
    if i < 0 or start < 0 or data[start:i] != extra:
        raise EnvelopeRejected(NOT_JSON, "sig/mac not where canonical JSON puts them")
    return data[:start] + data[i:]


def _no_constant(name):
    raise ValueError(name + " is not JSON")


def _decoder():
    # CPython's json takes NaN and Infinity, which have no canonical form; the
    # hook refuses them at no cost to ordinary numbers. (An overflowing 1e400
    # still parses, to inf, but no canonical encoder writes it, so it cannot
    # carry a valid signature.) One decoder, made once: json.loads with a hook
    # would build a new one per message. MicroPython's json has neither.
    try:
        return json.JSONDecoder(parse_constant=_no_constant).decode
    except AttributeError:
        return json.loads


_loads = _decoder()


def sign_envelope(env: Envelope, sign) -> Envelope:
    """Set ``env.sig`` from ``sign(message_bytes) -> signature_bytes``."""
    env._signing = env.signing_bytes()
    env.sig = b64url_encode(sign(env._signing))
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
    env._signing = env.signing_bytes()
    env.mac = b64url_encode(hmac_sha256(key, env._signing))
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


_ALLOWED = _FIELDS + ("sig", "mac")


def _structure_problem(d):
    """What makes ``d`` not an envelope, or None (messages built only on failure)."""
    if not isinstance(d, dict):
        return "not a JSON object"
    for name in _FIELDS:
        if name not in d:
            return "missing " + repr(name)
    if len(d) > len(_FIELDS):
        for name in d:
            if name not in _ALLOWED:
                return "unknown field " + repr(name)
    if not (isinstance(d["id"], str) and 0 < len(d["id"]) <= 64):
        return "bad id"
    if not (isinstance(d["src"], str) and 0 < len(d["src"]) <= 64):
        return "bad src"
    ts = d["ts"]
    if not (isinstance(ts, list) and len(ts) == 2 and type(ts[0]) is int
            and type(ts[1]) is int and ts[0] >= 0 and ts[1] >= 0):
        return "ts must be [wall_ms, counter]"
    if d["kind"] not in KINDS:
        return "unknown kind " + repr(d["kind"])
    if not isinstance(d["body"], dict):
        return "body must be an object"
    for name in ("sig", "mac"):
        value = d.get(name)
        if value is not None and not isinstance(value, str):
            return name + " must be a string"
    return None


def parse_envelope(data, max_bytes: int = MAX_BYTES) -> Envelope:
    """Bytes from the wire to an :class:`Envelope` (signature not yet checked).

    Senders write canonical JSON (:meth:`Envelope.encode`). The receiver does
    not encode again: the signed bytes are the wire bytes less the sig/mac
    field, so anything not canonical fails verification (both ports alike,
    whatever their json parsers accept); NaN and Infinity are refused here as
    ``not_json``.
    """
    try:
        if isinstance(data, str):
            data = data.encode("utf-8")  # the size limit is in bytes
        data = bytes(data)
    except UnicodeError:
        raise EnvelopeRejected(NOT_JSON, "text has no UTF-8 form") from None
    if len(data) > max_bytes:
        raise EnvelopeRejected(OVERSIZE, "%d bytes > %d" % (len(data), max_bytes))
    try:
        d = _loads(data.decode("utf-8"))
    except (ValueError, UnicodeError, RuntimeError) as exc:  # RuntimeError: nesting too deep
        raise EnvelopeRejected(NOT_JSON, str(exc)[:80]) from None
    problem = _structure_problem(d)
    if problem is not None:
        raise EnvelopeRejected(NOT_ENVELOPE, problem)
    if type(d["v"]) is not int or d["v"] != VERSION:  # true == 1 in Python
        raise EnvelopeRejected(BAD_VERSION, repr(d["v"]))
    env = Envelope(
        d["src"], d["kind"], d["body"], d["ts"], id=d["id"], v=d["v"],
        sig=d.get("sig"), mac=d.get("mac"),
    )
    env._signing = _unsigned_form(data, env.sig, env.mac)
    return env
