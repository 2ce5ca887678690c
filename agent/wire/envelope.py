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
    canonical_text,
    digests_equal,
    hmac_sha256,
    json_string,
    random_b64url,
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

    __slots__ = ("_signing", "_wire", "body", "id", "kind", "mac", "sig", "src", "ts", "v")

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
        self._wire = None  # (sig, mac, wire bytes) as last encoded; see encode()

    def unsigned_dict(self) -> dict:
        return {
            "v": self.v, "id": self.id, "src": self.src, "ts": self.ts,
            "kind": self.kind, "body": self.body,
        }

    def signing_bytes(self) -> bytes:
        """The canonical JSON of every field but ``sig``/``mac``: what gets signed."""
        if self._signing is not None:
            return self._signing
        head, tail = _halves(self)
        return head + tail

    def to_dict(self) -> dict:
        d = self.unsigned_dict()
        if self.sig is not None:
            d["sig"] = self.sig
        if self.mac is not None:
            d["mac"] = self.mac
        return d

    def encode(self) -> bytes:
        """Wire bytes (canonical JSON, so the same envelope is always the same bytes)."""
        done = self._wire
        if done is not None and done[0] is self.sig and done[1] is self.mac:
            return done[2]  # signed or received as they are: those bytes
        head, tail = _halves(self)
        return head + _auth_fields(self.sig, self.mac) + tail

    def __repr__(self):
        return "Envelope(%s from %r id=%s ts=%r)" % (self.kind, self.src, self.id, self.ts)


# Top-level keys sort as body, id, kind, mac, sig, src, ts, v, so ``mac`` and
# ``sig`` sit just before ``,"src":``. That is the last occurrence of that
# text in canonical bytes: only src's string value (where a bare quote cannot
# occur), ts and v follow it. So the signed bytes and the wire bytes differ
# by one slice, and neither side has to encode twice.
_SRC_KEY = b',"src":'


def _halves(env: Envelope):
    """The unsigned canonical bytes of ``env`` cut where sig/mac go: ``(head, tail)``."""
    signing = env._signing
    if signing is None:
        ts = env.ts
        if (type(env.v) is int and type(ts[0]) is int and type(ts[1]) is int
                and type(env.id) is str and type(env.kind) is str and type(env.src) is str):
            head, tail = _unsigned_text(env.src, env.kind, env.body, ts, env.id, env.v)
            return head.encode(), tail.encode()
        signing = canonical_json(env.unsigned_dict())
    i = signing.rfind(_SRC_KEY)
    return signing[:i], signing[i:]


def _unsigned_text(src, kind, body, ts, env_id, v):
    # What we send: the text canonical_json() encodes for these fields (strings,
    # int ts and v), written around the body's, cut where sig/mac go. Its
    # (strict) UTF-8 encoding is canonical_json()'s, lone surrogates refused.
    return ('{"body":' + canonical_text(body) + ',"id":' + json_string(env_id) + ',"kind":'
            + json_string(kind), ',"src":' + json_string(src) + ',"ts":[%d,%d],"v":%d}' % (
                ts[0], ts[1], v))


_blank = object.__new__  # seal_envelope fills every slot itself


def _auth_fields(sig, mac) -> bytes:
    """The canonical bytes of the ``mac`` and ``sig`` fields (with leading commas)."""
    out = ""
    if mac is not None:
        out = ',"mac":' + (json_string(mac) if type(mac) is str else canonical_text(mac))
    if sig is not None:
        out += ',"sig":' + (json_string(sig) if type(sig) is str else canonical_text(sig))
    return out.encode("utf-8")


def _unsigned_form(data: bytes, sig, mac) -> bytes:
    """The bytes a sender signed, cut out of the received wire bytes.

    Refuses (``not_json``) a sig or mac that is not where canonical JSON puts
    it, or that has no canonical form (a lone surrogate, written escaped).
    Any other departure from canonical bytes changes the signed bytes, so
    the signature check refuses it: the receiver never encodes anything.
    """
    try:
        extra = _auth_fields(sig, mac)
    except ValueError:  # UnicodeError included
        raise EnvelopeRejected(NOT_JSON, "sig/mac has no canonical JSON form") from None
    if not extra:
        return data
    i = data.rfind(_SRC_KEY)
    start = i - len(extra)
    if i < 0 or start < 0 or data[start:i] != extra:
        raise EnvelopeRejected(NOT_JSON, "sig/mac not where canonical JSON puts them")
    return data[:start] + data[i:]


def fresh_ids(batch: int = 256):
    """Envelope ids (random 128-bit, base64url) without end, for one sender.

    The default id costs a read of the OS's random source and a base64 pass
    per envelope, about an eighth of what sealing a heartbeat costs beside
    its signature; this does both once per ``batch`` ids. Each sender keeps
    its own; not to be shared across a fork (both processes would hand out
    the same ids).
    """
    while True:
        yield from random_b64url(batch, ID_BYTES)


def _no_constant(name):
    raise ValueError(name + " is not JSON")


def _decoder():
    # CPython's json takes NaN and Infinity, which have no canonical form; the
    # hook refuses them at no cost to ordinary numbers. (An overflowing 1e400
    # still parses, to inf, but no canonical encoder writes it, so it cannot
    # carry a valid signature.) One decoder, made once: json.loads with a hook
    # would build a new one per message. MicroPython's json has neither.
    try:
        decoder = json.JSONDecoder(parse_constant=_no_constant)
    except AttributeError:
        return json.loads
    scan, decode = decoder.scan_once, decoder.decode

    def loads(text):
        # A canonical envelope is one JSON value from the first character to
        # the last: the (C) scanner alone reads it, without decode()'s two
        # whitespace matches. Anything else goes through decode(), which
        # accepts or refuses it and says why.
        try:
            value, end = scan(text, 0)
        except StopIteration:
            return decode(text)
        return value if end == len(text) else decode(text)

    return loads


_loads = _decoder()


def seal_envelope(src: str, kind: str, body: dict, ts, env_id: str, sign,
                  auth: str = "sig") -> Envelope:
    """A new envelope, signed and encoded in one pass: what a sender does per message.

    The same as ``sign_envelope(Envelope(src, kind, body, ts, env_id), sign)``
    for the fields a sender has in hand (``ts`` from its clock, ``env_id``
    from :func:`fresh_ids`), without reading them back out of an Envelope,
    and with the signature (base64url: nothing to escape) put straight into
    the wire text, which ``encode()`` then returns. ``ts`` must be a list of
    two ints of its own, as ``HybridClock.now()`` gives: the envelope keeps it.
    With ``auth="mac"``, ``sign`` gives a MAC and it goes into ``mac`` instead.
    """
    head, tail = _unsigned_text(src, kind, body, ts, env_id, VERSION)
    signing = (head + tail).encode()
    tag = b64url_encode(sign(signing))
    # Envelope() less its defaults and conversions, one per message sent.
    env = _blank(Envelope)
    env.v = VERSION
    env.id = env_id
    env.src = src
    env.ts = ts
    env.kind = kind
    env.body = body
    if auth == "sig":
        env.sig, env.mac = tag, None
    elif auth == "mac":
        env.sig, env.mac = None, tag
    else:
        raise ValueError("auth must be 'sig' or 'mac', not " + repr(auth))
    env._signing = signing
    env._wire = (env.sig, env.mac, (head + ',"' + auth + '":"' + tag + '"' + tail).encode())
    return env


def sign_envelope(env: Envelope, sign) -> Envelope:
    """Set ``env.sig`` from ``sign(message_bytes) -> signature_bytes``."""
    head, tail = _halves(env)
    env._signing = head + tail
    env.sig = b64url_encode(sign(env._signing))
    _seal(env, head, tail)
    return env


def _seal(env: Envelope, head: bytes, tail: bytes) -> None:
    # Encode now, from the halves just signed: publishing is what comes next.
    env._wire = (env.sig, env.mac, head + _auth_fields(env.sig, env.mac) + tail)


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
    head, tail = _halves(env)
    env._signing = head + tail
    env.mac = b64url_encode(hmac_sha256(key, env._signing))
    _seal(env, head, tail)
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
    sig, mac = d.get("sig"), d.get("mac")
    env = Envelope(d["src"], d["kind"], d["body"], d["ts"], d["id"], d["v"], sig, mac)
    env._signing = _unsigned_form(data, sig, mac)
    env._wire = (sig, mac, data)  # the canonical form, if the signature holds
    return env
