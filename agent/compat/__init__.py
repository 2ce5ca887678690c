"""Portable shim: the few primitives the wire layer needs, on CPython and MicroPython.

Stdlib only, no typing, no dataclasses, nothing MicroPython lacks (its unix
port has no ``hmac``; its WebAssembly port has no ``os.urandom``). The lite
agent copies this file to the board, so full and lite devices share one
implementation of canonical JSON, base64url, hashing and clocks.
"""

import binascii
import hashlib
import json
import time

try:
    import os

    _urandom = os.urandom
except (ImportError, AttributeError):
    _urandom = None


def random_bytes(n: int) -> bytes:
    """``n`` random bytes: ``os.urandom`` where the port has it.

    The WebAssembly MicroPython port has no ``os.urandom``; there we fall
    back to ``random.getrandbits``, good for message ids, not for keys.
    """
    if _urandom is not None:
        return _urandom(n)
    import random

    return bytes(random.getrandbits(8) for _ in range(n))


def wall_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch."""
    if hasattr(time, "time_ns"):
        return time.time_ns() // 1000000
    return int(time.time() * 1000)


def monotonic_ms() -> int:
    """Milliseconds from a clock that never goes backwards (for timeouts)."""
    if hasattr(time, "monotonic_ns"):
        return time.monotonic_ns() // 1000000
    return time.ticks_ms()


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 section 5)."""
    text = binascii.b2a_base64(data).decode().strip()
    return text.replace("+", "-").replace("/", "_").rstrip("=")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; raises ``ValueError`` on bad input."""
    if not isinstance(text, str):
        raise ValueError("base64url text must be a string")
    for ch in text:
        if not (ch.isalpha() or ch.isdigit() or ch in "-_"):
            raise ValueError("not base64url: " + repr(text[:16]))
    if len(text) % 4 == 1:
        raise ValueError("base64url text has an impossible length")
    padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    return binascii.a2b_base64(padded.encode())


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


_BLOCK = 64


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104), written out because MicroPython may lack ``hmac``."""
    if len(key) > _BLOCK:
        key = sha256(key)
    key = key + b"\x00" * (_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def digests_equal(a: bytes, b: bytes) -> bool:
    """Compare two digests in time independent of where they differ."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t"}


def _encode_str(s: str, out: list) -> None:
    out.append('"')
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')


def _encode_float(f: float) -> str:
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("canonical JSON has no NaN or infinity")
    text = repr(f)
    if float(text) != f:
        raise ValueError("float does not round-trip: " + text)
    return text


def _encode(obj, out: list) -> None:
    # bool before int: True is an int in Python.
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, float):
        out.append(_encode_float(obj))
    elif isinstance(obj, str):
        _encode_str(obj, out)
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        first = True
        for item in obj:
            if not first:
                out.append(",")
            first = False
            _encode(item, out)
        out.append("]")
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for key in sorted(obj):
            if not isinstance(key, str):
                raise ValueError("canonical JSON keys must be strings, got " + repr(key))
            if not first:
                out.append(",")
            first = False
            _encode_str(key, out)
            out.append(":")
            _encode(obj[key], out)
        out.append("}")
    else:
        raise ValueError("cannot encode " + repr(type(obj)) + " as canonical JSON")


def canonical_json_portable(obj) -> bytes:
    """Canonical JSON by the portable encoder (what MicroPython uses)."""
    out = []
    _encode(obj, out)
    return "".join(out).encode("utf-8")


def _native_canonical_json(obj) -> bytes:
    # CPython's C encoder writes exactly what the portable encoder does
    # (same escapes, shortest round-trip floats) at several times the speed.
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return text.encode("utf-8")


def _has_native_sort_keys() -> bool:
    try:
        json.dumps({}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except TypeError:
        return False
    return True


_NATIVE_JSON = _has_native_sort_keys()


def canonical_json(obj) -> bytes:
    """Canonical JSON as UTF-8 bytes: keys sorted at every depth, no spaces.

    Floats are written in their shortest round-trip form; NaN and infinity
    are refused. MicroPython's ``json`` has no ``sort_keys``, so there the
    portable encoder runs; on CPython the C encoder gives the same bytes faster.
    """
    if _NATIVE_JSON:
        return _native_canonical_json(obj)
    return canonical_json_portable(obj)
