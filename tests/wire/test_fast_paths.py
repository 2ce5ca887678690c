"""CPython's fast paths in the portable layer give what the portable code gives.

``agent/compat`` and ``agent/wire`` pick faster routes on CPython (the C JSON
encoder and scanner, a decode-and-re-encode base64url check, one-pass
sealing). ``vectors.json`` pins their output on fixed inputs; these tests
compare them with the portable code on many generated inputs (seeded, so a
failure repeats), and pin what the caches in :class:`Envelope` must not hide.
"""

from __future__ import annotations

import base64
import math
import random
import struct

import pytest

from agent import compat
from agent.compat import b64url_encode, canonical_json_portable, canonical_text, json_string
from agent.errors import EnvelopeRejected
from agent.wire import Envelope, parse_envelope, sign_envelope, verify_envelope
from agent.wire.envelope import fresh_ids, seal_envelope

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ODD = "=+/ \n!é\x00\u2028😀"


def toy_sign(message: bytes) -> bytes:
    return compat.sha256(b"toy:" + message)


def toy_verify(message: bytes, signature: bytes) -> bool:
    return signature == toy_sign(message)


def outcome(func, *args):
    try:
        return func(*args)
    except ValueError as exc:
        return type(exc)


def test_the_fast_paths_are_the_ones_running() -> None:
    assert compat.canonical_text is not compat._portable_text
    assert compat.json_string is not compat._portable_string


def test_b64url_decode_accepts_and_refuses_as_the_checks_do() -> None:
    rng = random.Random(1)
    texts = []
    for _ in range(20000):
        pool = ALPHABET + ODD if rng.random() < 0.3 else ALPHABET
        texts.append("".join(rng.choice(pool) for _ in range(rng.randrange(0, 13))))
    for _ in range(2000):
        good = b64url_encode(rng.randbytes(rng.randrange(0, 70)))
        texts += [good, good + "=", good + "==", good + "A", good[:-1], " " + good]
    for text in texts:
        assert outcome(compat.b64url_decode, text) == outcome(
            compat._b64url_decode_checked, text), repr(text)


@pytest.mark.parametrize("native", [True, False])
def test_b64url_encode_is_rfc4648_urlsafe_unpadded(native, monkeypatch) -> None:
    if not native:  # the portable route, as MicroPython (no maketrans) takes it
        monkeypatch.setattr(compat, "_STD_TO_URL", None)
    rng = random.Random(5)
    for n in list(range(70)) + [rng.randrange(70, 400) for _ in range(200)]:
        data = rng.randbytes(n)
        assert b64url_encode(data) == base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 15, 16, 17, 18, 64])
def test_random_b64url_texts_are_canonical_and_of_size_bytes(native, size, monkeypatch) -> None:
    if not native:
        monkeypatch.setattr(compat, "_STD_TO_URL", None)
    texts = compat.random_b64url(300, size)
    assert len(texts) == 300
    for text in texts:
        # b64url_decode refuses non-zero pad bits: the zeroed byte must fill them
        assert len(compat.b64url_decode(text)) == size, text
        assert b64url_encode(compat.b64url_decode(text)) == text
    if size >= 8:
        assert len(set(texts)) == len(texts)


def _random_string(rng: random.Random) -> str:
    chars = [chr(rng.choice((rng.randrange(0, 0x80), rng.randrange(0x80, 0xD800),
                             rng.randrange(0xE000, 0x110000))))
             for _ in range(rng.randrange(0, 8))]
    return "".join(chars)


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 6)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return rng.randrange(-(2 ** 70), 2 ** 70)
    if kind == 2:  # any finite double, from random bits
        while True:
            f = struct.unpack(">d", rng.randbytes(8))[0]
            if math.isfinite(f):
                return f
    if kind == 3:
        return rng.choice((0.1, 1.5, -0.0, 1e16, 1e-7, 123456789.125))
    if kind in (4, 5):
        return _random_string(rng)
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {_random_string(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


def test_native_canonical_json_is_the_portable_encoders() -> None:
    rng = random.Random(2)
    for _ in range(3000):
        value = _random_value(rng)
        assert canonical_text(value).encode("utf-8") == canonical_json_portable(value), value


def test_native_json_string_is_the_portable_encoders() -> None:
    rng = random.Random(3)
    for text in [_random_string(rng) for _ in range(5000)] + ['"', "\\", "\x7f", "\u2028"]:
        assert json_string(text) == compat._portable_string(text), repr(text)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"a": {1, 2}}, object(), b"x"])
def test_native_encoder_refuses_what_has_no_canonical_json(bad) -> None:
    with pytest.raises(ValueError):
        compat.canonical_json(bad)
    with pytest.raises(ValueError):
        canonical_json_portable(bad)


def test_sealed_in_one_pass_is_byte_for_byte_sign_envelope() -> None:
    rng = random.Random(4)
    ids = fresh_ids(batch=4)
    for i in range(300):
        src, kind = _random_string(rng) or "s", rng.choice(("state", "cmd"))
        body = {_random_string(rng): _random_value(rng) for _ in range(3)}
        ts = [rng.randrange(2 ** 45), i]
        env_id = next(ids)
        sealed = seal_envelope(src, kind, body, ts, env_id, toy_sign)
        slow = sign_envelope(Envelope(src, kind, body, ts, env_id), toy_sign)
        assert sealed.encode() == slow.encode() == canonical_json_portable(slow.to_dict())
        assert verify_envelope(parse_envelope(sealed.encode()), toy_verify).body == body


def test_fresh_ids_are_distinct_across_many_refills() -> None:
    ids = fresh_ids(batch=7)
    got = [next(ids) for _ in range(2000)]
    assert len(set(got)) == len(got)
    assert all(len(compat.b64url_decode(one)) == 16 for one in got)


def test_encode_follows_a_changed_sig_or_mac_after_signing() -> None:
    env = sign_envelope(Envelope("pi-01", "cmd", {"a": 1}, [5, 0], "id1"), toy_sign)
    signed = env.encode()
    assert b'"sig":"' + env.sig.encode() + b'"' in signed
    env.sig = "c2ln"
    assert env.encode() == canonical_json_portable(env.to_dict())
    env.mac = "bWFj"
    assert env.encode() == canonical_json_portable(env.to_dict())
    assert env.encode() != signed


def test_a_received_envelope_encodes_to_the_bytes_received() -> None:
    wire = sign_envelope(Envelope("pi-01", "cmd", {"é": [1.5]}, [5, 0], "id1"), toy_sign).encode()
    env = parse_envelope(bytearray(wire))
    assert env.encode() == wire
    env.sig = None
    assert env.encode() == canonical_json_portable(env.to_dict())


@pytest.mark.parametrize(("change", "reason"), [
    (lambda w: b" " + w, "bad_signature"),    # json takes it; the signed bytes differ
    (lambda w: w + b"\n", "bad_signature"),
    (lambda w: w + b"x", "not_json"),
    (lambda w: w + w, "not_json"),
    (lambda w: w.replace(b'"v":1', b'"v":NaN'), "not_json"),
])
def test_what_the_scanner_alone_does_not_take_gets_the_full_decoder(change, reason) -> None:
    wire = sign_envelope(Envelope("pi-01", "cmd", {}, [5, 0], "id1"), toy_sign).encode()
    with pytest.raises(EnvelopeRejected) as excinfo:
        verify_envelope(parse_envelope(change(wire)), toy_verify)
    assert excinfo.value.reason == reason
