"""Envelope signing with the Ed25519 hooks a full agent plugs in (PyNaCl).

The portable parts (canonical bytes, MAC, parse rejections) are pinned by
``vectors.json`` on both interpreters; these tests cover what needs PyNaCl.
"""

from __future__ import annotations

from collections.abc import Callable

import nacl.exceptions
import nacl.signing
import pytest

from agent.compat import b64url_decode, b64url_encode
from agent.errors import EnvelopeRejected, WireError
from agent.wire import Envelope, mac_envelope, parse_envelope, sign_envelope, verify_envelope

# RFC 8032 section 7.1, TEST 1: secret key, public key, and the signature of the empty message.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
    "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

KEY = nacl.signing.SigningKey(RFC8032_SEED)
OTHER_KEY = nacl.signing.SigningKey(bytes(range(32)))


def signer(key: nacl.signing.SigningKey) -> Callable[[bytes], bytes]:
    return lambda message: key.sign(message).signature


def checker(verify_key: nacl.signing.VerifyKey) -> Callable[[bytes, bytes], bool]:
    def check(message: bytes, signature: bytes) -> bool:
        try:
            verify_key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True

    return check


def make_envelope(**changes: object) -> Envelope:
    fields: dict = {
        "src": "pi-01", "kind": "cmd", "ts": [1700000000000, 2], "id": "AAECAwQFBgcICQoLDA0ODw",
        "body": {"op": "led", "args": {"color": "green", "blink": 2}, "note": "é✓"},
    }
    fields.update(changes)
    return Envelope(fields["src"], fields["kind"], fields["body"], fields["ts"], id=fields["id"])


def reason(excinfo: pytest.ExceptionInfo[EnvelopeRejected]) -> str:
    return excinfo.value.reason


def test_the_hooks_are_rfc8032_ed25519() -> None:
    assert KEY.verify_key.encode() == RFC8032_PUBLIC
    assert signer(KEY)(b"") == RFC8032_SIG_EMPTY
    assert checker(KEY.verify_key)(b"", RFC8032_SIG_EMPTY)


def test_sign_encode_parse_verify_round_trip() -> None:
    env = sign_envelope(make_envelope(), signer(KEY))
    wire = env.encode()
    got = verify_envelope(parse_envelope(wire), checker(KEY.verify_key))
    assert (got.v, got.id, got.src, got.ts, got.kind, got.body, got.sig, got.mac) == (
        env.v, env.id, env.src, env.ts, env.kind, env.body, env.sig, None
    )
    assert len(b64url_decode(env.sig)) == 64


def test_the_signature_covers_the_canonical_bytes_without_sig() -> None:
    env = sign_envelope(make_envelope(), signer(KEY))
    sig = b64url_decode(env.sig)
    KEY.verify_key.verify(env.signing_bytes(), sig)  # raises if not
    assert b'"sig"' not in env.signing_bytes()
    assert b'"sig":"' + env.sig.encode() + b'"' in env.encode()


def test_signatures_are_deterministic() -> None:
    first = sign_envelope(make_envelope(), signer(KEY)).sig
    assert sign_envelope(make_envelope(), signer(KEY)).sig == first


@pytest.mark.parametrize("field", ["body", "src", "ts", "kind", "id"])
def test_changing_any_signed_field_breaks_the_signature(field: str) -> None:
    env = sign_envelope(make_envelope(), signer(KEY))
    changed = {"body": {"op": "reboot"}, "src": "pi-02", "ts": [1700000000001, 2],
               "kind": "reply", "id": "BBECAwQFBgcICQoLDA0ODw"}[field]
    forged = make_envelope(**{field: changed})
    forged.sig = env.sig
    with pytest.raises(EnvelopeRejected) as excinfo:
        verify_envelope(parse_envelope(forged.encode()), checker(KEY.verify_key))
    assert reason(excinfo) == "bad_signature"


def test_a_signature_by_another_key_is_rejected() -> None:
    env = sign_envelope(make_envelope(), signer(OTHER_KEY))
    with pytest.raises(EnvelopeRejected) as excinfo:
        verify_envelope(parse_envelope(env.encode()), checker(KEY.verify_key))
    assert reason(excinfo) == "bad_signature"


@pytest.mark.parametrize("mangle", ["flip-bit", "truncate", "extend", "empty", "not-base64url"])
def test_forged_signatures_are_rejected(mangle: str) -> None:
    env = sign_envelope(make_envelope(), signer(KEY))
    sig = b64url_decode(env.sig)
    env.sig = {
        "flip-bit": b64url_encode(bytes([sig[0] ^ 1]) + sig[1:]),
        "truncate": b64url_encode(sig[:-1]),
        "extend": b64url_encode(sig + b"\x00"),
        "empty": "",
        "not-base64url": env.sig[:-2] + "+/",
    }[mangle]
    with pytest.raises(EnvelopeRejected) as excinfo:
        verify_envelope(parse_envelope(env.encode()), checker(KEY.verify_key))
    assert reason(excinfo) == "bad_signature"


def test_an_unsigned_envelope_is_rejected() -> None:
    with pytest.raises(EnvelopeRejected) as excinfo:
        verify_envelope(parse_envelope(make_envelope().encode()), checker(KEY.verify_key))
    assert reason(excinfo) == "unsigned"


def test_a_mac_is_not_a_signature() -> None:
    env = mac_envelope(make_envelope(), bytes(32))
    with pytest.raises(EnvelopeRejected) as excinfo:
        verify_envelope(parse_envelope(env.encode()), checker(KEY.verify_key))
    assert reason(excinfo) == "unsigned"


def test_rejections_are_wire_errors_and_value_errors() -> None:
    with pytest.raises(EnvelopeRejected) as excinfo:
        verify_envelope(make_envelope(), checker(KEY.verify_key))
    assert isinstance(excinfo.value, WireError)
    assert isinstance(excinfo.value, ValueError)
    assert str(excinfo.value).startswith("unsigned: ")


def test_re_encoding_is_byte_stable() -> None:
    env = sign_envelope(make_envelope(), signer(KEY))
    wire = env.encode()
    assert env.encode() == wire
    again = parse_envelope(wire)
    assert again.encode() == wire
    assert parse_envelope(again.encode()).encode() == wire
    assert parse_envelope(bytearray(wire)).encode() == wire
    assert parse_envelope(wire.decode("utf-8")).encode() == wire


def test_body_key_order_does_not_change_the_bytes() -> None:
    body = {"z": 1, "a": {"y": [3, {"c": 1, "b": 2}], "x": None}}
    reordered = {"a": {"x": None, "y": [3, {"b": 2, "c": 1}]}, "z": 1}
    first = sign_envelope(make_envelope(body=body), signer(KEY))
    second = sign_envelope(make_envelope(body=reordered), signer(KEY))
    assert first.encode() == second.encode()
    assert first.sig == second.sig


def test_default_ids_are_random_128_bit() -> None:
    ids = {Envelope("pi-01", "tele", {}, [1, 0]).id for _ in range(200)}
    assert len(ids) == 200
    assert all(len(b64url_decode(i)) == 16 for i in ids)


def test_ts_is_stored_as_two_ints() -> None:
    env = Envelope("pi-01", "tele", {}, (5, 7))
    assert env.ts == [5, 7]
    assert env.encode().count(b'"ts":[5,7]') == 1


@pytest.mark.parametrize(("src", "kind", "env_id", "v"), [
    ("pi-01", "state", "AAAAAAAAAAAAAAAAAAAAAA", 1),      # the built fast path
    ("pi.01_x-Y", "cmd", "id.with.dots", 1),
    ('quote"d', "state", "x", 1),                         # needs escaping: general path
    ("pi-01", "state", "ünïcode", 1),
    ("pi-01", "state", "x", True),                        # not an int: general path
])
def test_signing_bytes_are_always_the_canonical_json(src, kind, env_id, v) -> None:
    from agent.compat import canonical_json

    env = Envelope(src, kind, {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}, [-5, 7],
                   id=env_id, v=v)
    assert env.signing_bytes() == canonical_json(env.unsigned_dict())
    env.sig = "c2ln"
    assert env.encode() == canonical_json(env.to_dict())
