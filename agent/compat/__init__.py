"""Portable shim: the few primitives the wire layer needs, on CPython and MicroPython.

Stdlib only, no typing, no dataclasses, nothing MicroPython lacks (its unix
port has no ``hmac``; its WebAssembly port has no ``os.urandom``). The lite
agent copies this file to the board, so full and lite devices share one
implementation of canonical JSON, base64url, hashing and clocks.
"""

import binascii
import hashlib
import struct
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


if hasattr(time, "time_ns"):  # chosen once: the receive gate reads the clock several times

    def wall_ms() -> int:
        """Wall-clock milliseconds since the Unix epoch."""
        return time.time_ns() // 1000000

else:

    def wall_ms() -> int:
        """Wall-clock milliseconds since the Unix epoch."""
        return int(time.time() * 1000)


def monotonic_ms() -> int:
    """Milliseconds from a clock that never goes backwards (for timeouts)."""
    if hasattr(time, "monotonic_ns"):
        return time.monotonic_ns() // 1000000
    return time.ticks_ms()


_B64URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PAD_BITS = (0, 0, 0x0F, 0x03)  # by len(text) % 4 (1 is refused before)
try:  # CPython: one C pass instead of two str.replace (MicroPython has no maketrans)
    _URL_TO_STD = bytes.maketrans(b"-_", b"+/")
    _STD_TO_URL = bytes.maketrans(b"+/", b"-_")
except AttributeError:
    _URL_TO_STD = _STD_TO_URL = None


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 section 5)."""
    if _STD_TO_URL is not None:  # one C pass maps the alphabet and drops "=" and newline
        return binascii.b2a_base64(data).translate(_STD_TO_URL, b"=\n").decode()
    text = binascii.b2a_base64(data).decode().strip()
    return text.replace("+", "-").replace("/", "_").rstrip("=")


def random_b64url(count: int, size: int) -> list:
    """``count`` random values of ``size`` bytes, base64url: ids from one random read.

    Each text is ``b64url_encode`` of ``size`` random bytes. On CPython one
    base64 pass makes them all: the values sit ``size`` rounded up to a
    multiple of 3 bytes apart, so each one's text is a run of the whole's,
    and the byte after each is zeroed, so the run ends in the zero pad bits
    its own encoding would. (MicroPython can neither assign a strided slice
    nor translate: there, one ``b64url_encode`` per value.)
    """
    if _STD_TO_URL is None:
        pool = random_bytes(count * size)
        return [b64url_encode(pool[i:i + size]) for i in range(0, len(pool), size)]
    stride = size + -size % 3
    spaced = bytearray(random_bytes(count * stride))
    if stride != size:
        spaced[size::stride] = bytes(count)
    text = binascii.b2a_base64(spaced, newline=False).translate(_STD_TO_URL).decode()
    chars, step = (size * 4 + 2) // 3, stride // 3 * 4
    return [text[i:i + chars] for i in range(0, len(text), step)]


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; raises ``ValueError`` on bad input.

    Only the canonical form is accepted (ASCII alphabet, no padding, zero pad
    bits), so one byte string has exactly one text.
    """
    if _URL_TO_STD is not None and type(text) is str:
        # CPython: decode leniently, then accept only if that is the one text
        # these bytes encode to. Same verdict as the checks below, in two C calls.
        raw = text.encode()
        try:
            data = binascii.a2b_base64(raw.translate(_URL_TO_STD) + b"==")
        except ValueError:
            data = None
        if data is not None and binascii.b2a_base64(data, newline=False).translate(
                _STD_TO_URL).rstrip(b"=") == raw:
            return data
    return _b64url_decode_checked(text)


def _b64url_decode_checked(text):
    # The portable path, and on CPython the one that says what is wrong (the fast path
    # above has accepted every canonical text there).
    if not isinstance(text, str):
        raise ValueError("base64url text must be a string")
    # strip() leaves something only if a character is outside the alphabet (an
    # explicit ASCII set: isalpha/isdigit are Unicode-wide on CPython).
    if text.strip(_B64URL_CHARS):
        raise ValueError("not base64url: " + repr(text[:16]))
    if len(text) % 4 == 1:
        raise ValueError("base64url text has an impossible length")
    # The last character of a 2- or 3-character tail carries 4 or 2 pad bits.
    pad_mask = _PAD_BITS[len(text) % 4]
    if pad_mask and _B64URL_CHARS.index(text[-1]) & pad_mask:
        raise ValueError("base64url text has non-zero pad bits: " + repr(text[-4:]))
    padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    return binascii.a2b_base64(padded.encode())


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


_BLOCK = 64

try:
    from hmac import digest as _hmac_digest  # CPython: one C call, a third of the time
except ImportError:
    _hmac_digest = None


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104): ``hmac.digest`` where the port has it, else written
    out (MicroPython may lack ``hmac``)."""
    if _hmac_digest is not None:
        return _hmac_digest(key, msg, "sha256")
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
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # MicroPython's str holds them; UTF-8 has no form
            raise ValueError("canonical JSON has no lone surrogates")
        else:
            out.append(ch)
    out.append('"')


def _encode_float(f: float) -> str:
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("canonical JSON has no NaN or infinity")
    text = _shortest_repr(f)
    if float(text) != f:
        raise ValueError("float does not round-trip: " + text)
    return text


def _shortest_repr(f: float) -> str:
    """``repr(f)`` as CPython writes it (shortest round-trip digits), in exact integers.

    MicroPython's repr is round-trip but not always shortest (1.27 writes
    -85.85431503591251 for -85.8543150359125, 4.940656458412465e-324 for 5e-324),
    so canonical JSON cannot use it there. Finite ``f`` only.
    """
    bits = struct.unpack(">Q", struct.pack(">d", f))[0]
    sign = "-" if bits >> 63 else ""
    exp_bits = (bits >> 52) & 0x7FF
    frac = bits & 0xFFFFFFFFFFFFF
    if exp_bits == 0 and frac == 0:
        return sign + "0.0"
    if exp_bits == 0:
        m, e = frac, -1074
    else:
        m, e = frac | (1 << 52), exp_bits - 1075
    # f = m * 2**e; everything below is scaled by 4 * 2**-e so the rounding interval's
    # ends (half an ulp each side, a quarter below at a power of two) are integers.
    lower = 1 if (frac == 0 and exp_bits > 1) else 2
    if e >= 2:
        scale, den = 1 << (e - 2), 1
    else:
        scale, den = 1, 1 << (2 - e)
    num = 4 * m * scale
    high = (4 * m + 2) * scale
    low = (4 * m - lower) * scale
    inclusive = m % 2 == 0  # round-half-even: a tie reads back as f only if m is even
    # decimal exponent: 10**k10 <= f < 10**(k10 + 1)
    k10 = len(str(num // den)) - 1 if num >= den else -len(str(den // num))
    while _cmp_pow10(num, den, k10 + 1) >= 0:
        k10 += 1
    while _cmp_pow10(num, den, k10) < 0:
        k10 -= 1
    for digits in range(1, 18):
        k = k10 - digits + 1
        if k >= 0:
            n, d = num, den * 10 ** k
        else:
            n, d = num * 10 ** (-k), den
        q = n // d
        best = None
        for cand in (q, q + 1):  # the two nearest decimals with this many digits
            if k >= 0:
                c_n, c_d = cand * 10 ** k, 1
            else:
                c_n, c_d = cand, 10 ** (-k)
            lo_ok = c_n * den > low * c_d or (inclusive and c_n * den == low * c_d)
            hi_ok = c_n * den < high * c_d or (inclusive and c_n * den == high * c_d)
            if lo_ok and hi_ok:
                dist = abs(c_n * den - num * c_d)
                # nearest to f; on a tie the even one, as CPython's repr does
                if best is None or dist < best[0] or (dist == best[0] and cand % 2 == 0):
                    best = (dist, cand)
        if best is not None:
            return sign + _format_repr(best[1], k)
    raise ValueError("no round-trip form for %r" % f)


def _cmp_pow10(num, den, k):
    # sign of num/den - 10**k
    if k >= 0:
        a, b = num, den * 10 ** k
    else:
        a, b = num * 10 ** (-k), den
    return (a > b) - (a < b)


def _format_repr(q: int, k: int) -> str:
    # q * 10**k, laid out as CPython's float repr does
    while q % 10 == 0:
        q //= 10
        k += 1
    digits = str(q)
    point = len(digits) + k  # value = 0.<digits> * 10**point
    if -4 < point <= 16:
        if point <= 0:
            return "0." + "0" * (-point) + digits
        if point >= len(digits):
            return digits + "0" * (point - len(digits)) + ".0"
        return digits[:point] + "." + digits[point:]
    exp = point - 1
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return mantissa + ("e-" if exp < 0 else "e+") + ("%02d" % abs(exp))


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
        for key in obj:  # check before sorting: sorted() raises TypeError on mixed types
            if not isinstance(key, str):
                raise ValueError("canonical JSON keys must be strings, got " + repr(key))
        for key in sorted(obj):
            if not first:
                out.append(",")
            first = False
            _encode_str(key, out)
            out.append(":")
            _encode(obj[key], out)
        out.append("}")
    else:
        raise ValueError("cannot encode " + repr(type(obj)) + " as canonical JSON")


def _portable_text(obj) -> str:
    out = []
    _encode(obj, out)
    return "".join(out)


def _portable_string(text: str) -> str:
    out = []
    _encode_str(text, out)
    return "".join(out)


def canonical_json_portable(obj) -> bytes:
    """Canonical JSON by the portable encoder (what MicroPython uses)."""
    return _portable_text(obj).encode("utf-8")


def _not_json(obj):
    raise TypeError("cannot encode " + repr(type(obj)) + " as canonical JSON")


def _native_encoders():
    """CPython's C JSON encoder, set up once: ``(text of a value, text of a string)``.

    It writes exactly what the portable encoder does (same escapes, shortest
    round-trip floats) at several times the speed. One difference is left on
    purpose: it turns non-string keys into strings where the portable encoder
    refuses them; walking every body to refuse them here would cost more than
    half of an encode. Bodies use string keys.

    ``JSONEncoder.encode`` would build a new C encoder on every call (a sixth
    of the cost of a small body), so it is built here once, with the arguments
    ``JSONEncoder.iterencode`` gives it (the same from Python 3.6 to 3.13).
    None where there is no C encoder (MicroPython has no ``json.encoder``).
    """
    try:
        from json.encoder import c_encode_basestring, c_make_encoder
    except ImportError:
        return None
    if c_make_encoder is None or c_encode_basestring is None:
        return None
    # No markers, so no circular check: message bodies are trees we build; a
    # cycle still fails, as a RecursionError, which becomes ValueError below.
    # Then: indent None, key and item separators, sort_keys, skipkeys, allow_nan.
    encode = c_make_encoder(None, _not_json, c_encode_basestring, None, ":", ",", True, False,
                            False)

    def text(obj) -> str:
        try:
            return "".join(encode(obj, 0))
        except (TypeError, RecursionError) as exc:
            raise ValueError(str(exc)) from None

    return text, c_encode_basestring


_NATIVE = _native_encoders()
# canonical_text(obj) -> str: canonical JSON as text, for callers that build a
# larger canonical text around it and encode once; its UTF-8 encoding (strict,
# which refuses lone surrogates) is canonical_json(obj).
# json_string(text) -> str: the canonical JSON of one str, quotes included.
canonical_text, json_string = _NATIVE if _NATIVE is not None else (
    _portable_text, _portable_string)


def canonical_json(obj) -> bytes:
    """Canonical JSON as UTF-8 bytes: keys sorted at every depth, no spaces.

    Floats are written in their shortest round-trip form; NaN and infinity
    are refused. MicroPython's ``json`` has no ``sort_keys``, so there the
    portable encoder runs; on CPython the C encoder gives the same bytes faster.
    """
    return canonical_text(obj).encode("utf-8")
